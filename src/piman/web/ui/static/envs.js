// piman web UI: the environments page's upload. The chosen file is the body of
// POST /api/v1/environments (XMLHttpRequest, whose upload events drive the progress bar; the
// browser sends the Origin the API checks); the manager then imports it, which the status line
// says until the answer comes, and the list is re-fetched.
"use strict";
(function () {
  const form = document.getElementById("upload-form");
  if (!form) return;
  const file = document.getElementById("upload-file");
  const name = document.getElementById("upload-name");
  const bar = document.getElementById("upload-progress");
  const msg = document.getElementById("upload-msg");
  const go = document.getElementById("upload-go");
  const max = Number(form.dataset.max || 0);
  function say(text, cls) {
    msg.textContent = text;
    msg.className = cls || "";
  }
  function mib(n) { return (n / 1048576).toFixed(1) + " MiB"; }
  file.addEventListener("change", () => {
    const chosen = file.files[0];
    if (chosen && !name.value) {
      name.value = chosen.name.toLowerCase().replace(/\.(img|raw|xz|gz|zst|zip|bz2)$/g, "")
        .replace(/\.(img|raw)$/, "").replace(/[^a-z0-9._-]+/g, "-").replace(/^[^a-z0-9]+/, "").slice(0, 64);
    }
  });
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const chosen = file.files[0];
    if (!chosen) return;
    if (max && chosen.size > max) { say(`${chosen.name} is larger than ${mib(max)}`, "bad"); return; }
    const params = new URLSearchParams({ name: name.value.trim(), filename: chosen.name });
    const description = form.elements.description.value.trim();
    if (description) params.set("description", description);
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/api/v1/environments?" + params.toString());
    xhr.setRequestHeader("Content-Type", "application/octet-stream");
    xhr.setRequestHeader("Accept", "application/json");
    bar.hidden = false;
    bar.value = 0;
    go.disabled = true;
    say(`uploading ${chosen.name}…`);
    xhr.upload.addEventListener("progress", (e) => {
      if (!e.lengthComputable) return;
      bar.value = Math.floor((100 * e.loaded) / e.total);
      say(`uploading ${mib(e.loaded)} of ${mib(e.total)}`);
    });
    xhr.upload.addEventListener("load", () => {
      bar.value = 100;
      say("uploaded; importing (inspecting and mapping the image)…");
    });
    xhr.addEventListener("load", () => {
      go.disabled = false;
      if (xhr.status === 401 && window.piman) return window.piman.toLogin();
      let data = {};
      try { data = JSON.parse(xhr.responseText); } catch (err) { /* not JSON */ }
      if (xhr.status === 201) {
        say(`${data.name} added: ${data.os_family}, ${mib(data.image_size)}`, "ok");
        form.reset();
      } else {
        const detail = typeof data.detail === "string" ? data.detail : (data.error || "");
        say(`refused (${xhr.status}): ${detail}`, "bad");
      }
      const list = document.getElementById("environments");
      if (list && window.piman) window.piman.refresh(list);
    });
    xhr.addEventListener("error", () => {
      go.disabled = false;
      say("the upload failed: cannot reach the manager", "bad");
    });
    xhr.send(chosen);
  });
})();
