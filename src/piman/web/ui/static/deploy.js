// piman web UI: the Deploy and Cancel buttons of the node table. Deploy opens a dialog (the
// environment, an optional host name) and posts /api/v1/deployments; the table's refresh shows
// the progress cell move. Cancel posts /api/v1/deployments/{id}/cancel after a confirmation.
"use strict";
(function () {
  const dialog = document.getElementById("deploy-dialog");
  function say(box, text, title) {
    const msg = box && box.querySelector(".power-msg");
    if (msg) { msg.textContent = text; msg.title = title || ""; }
  }
  async function post(url, body) {
    const response = await fetch(url, {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify(body || {}),
    });
    if (response.status === 401 && window.piman) { window.piman.toLogin(); return null; }
    let data = {};
    try { data = await response.json(); } catch (err) { /* an empty answer */ }
    return { ok: response.ok, data };
  }
  function refreshTable() {
    if (window.piman) window.piman.refreshAll();
  }
  async function deploy(node, box) {
    if (!dialog) return;
    dialog.querySelector("#deploy-node").textContent = node;
    const host = dialog.querySelector("#deploy-hostname");
    if (host) host.value = "";
    dialog.returnValue = "";
    dialog.showModal();
    dialog.addEventListener("close", async function once() {
      dialog.removeEventListener("close", once);
      if (dialog.returnValue !== "deploy") return;
      const env = dialog.querySelector("#deploy-env").value;
      const body = { nodes: [node], environment: env };
      if (host && host.value.trim()) body.hostname = host.value.trim();
      say(box, "starting…");
      try {
        const got = await post("/api/v1/deployments", body);
        if (!got) return;
        say(box, got.ok ? "deploying" : (got.data.error || got.data.detail || "failed"),
            got.data.error || "");
      } catch (err) {
        say(box, "cannot reach the manager");
      }
      refreshTable();
    });
  }
  async function cancel(id, box) {
    const node = box ? box.dataset.node : "";
    if (!window.confirm(`Cancel the deployment of ${node}? The node is left failed_deployment.`)) return;
    try {
      const got = await post(`/api/v1/deployments/${encodeURIComponent(id)}/cancel`);
      if (got) say(box, got.ok ? "cancelled" : (got.data.error || got.data.detail || "failed"));
    } catch (err) {
      say(box, "cannot reach the manager");
    }
    refreshTable();
  }
  document.addEventListener("click", (event) => {
    const target = event.target.closest ? event.target : null;
    if (!target) return;
    const go = target.closest("button.deploy-btn");
    if (go) return deploy(go.closest("[data-node]").dataset.node, go.closest("[data-node]"));
    const stop = target.closest("button.deploy-cancel");
    if (stop) return cancel(stop.dataset.deployment, stop.closest("[data-node]"));
  });
})();
