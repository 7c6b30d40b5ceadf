// piman web UI: the reservations page. The reserve form posts /api/v1/reservations (JSON; the
// API's Origin check is its CSRF protection); a refusal shows who holds the nodes and the next
// free slot, with a button that books that slot. Extend and Release post to the reservation.
// The page's live parts are re-fetched by piman.js on a fleet change and here every few
// seconds (a booking that starts later changes no node the change stream watches).
"use strict";
(function () {
  const section = document.getElementById("reservations");
  const form = document.getElementById("reserve-form");
  const msg = document.getElementById("reserve-msg");
  function refresh() {
    if (window.piman && section) window.piman.refresh(section);
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
    return { ok: response.ok, status: response.status, data };
  }
  function when(iso) {
    return new Date(iso).toLocaleString([], { weekday: "short", day: "2-digit", month: "short",
                                              hour: "2-digit", minute: "2-digit" });
  }
  function say(text, cls) {
    if (!msg) return;
    msg.textContent = text;
    msg.className = "reserve-msg " + (cls || "");
  }
  function request() {
    const data = new FormData(form);
    const body = { count: Number(data.get("count")), duration: data.get("duration") };
    for (const key of ["model", "switch", "environment", "owner"]) {
      const value = (data.get(key) || "").trim();
      if (value) body[key] = value;
    }
    const start = data.get("start");
    if (start) body.start = new Date(start).toISOString();
    return body;
  }
  async function reserve(body) {
    const go = document.getElementById("reserve-go");
    if (go) go.disabled = true;
    say("reserving…");
    try {
      const got = await post("/api/v1/reservations", body);
      if (!got) return;
      if (got.ok) {
        const r = got.data;
        say(`Reserved #${r.id}: ${r.nodes.join(", ")} until ${when(r.end_at)}`, "ok");
      } else if (got.status === 409) {
        say(got.data.detail || "those nodes are reserved then", "bad");
        if (got.data.next_free) {
          const later = document.createElement("button");
          later.type = "button";
          later.id = "reserve-next";
          later.textContent = `Reserve from ${when(got.data.next_free)}`;
          later.addEventListener("click", () => reserve({ ...body, start: got.data.next_free }));
          msg.append(" Next free: ", later);
        }
      } else {
        say(got.data.detail && typeof got.data.detail === "string" ? got.data.detail
            : (got.data.error || `refused (${got.status})`), "bad");
      }
    } catch (err) {
      say("cannot reach the manager", "bad");
    } finally {
      if (go) go.disabled = false;
      refresh();
    }
  }
  if (form) {
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      reserve(request());
    });
  }
  async function act(button, verb) {
    const row = button.closest("[data-reservation]");
    const id = button.dataset.id;
    const out = row && row.querySelector(".res-msg");
    let body = {};
    if (verb === "extend") {
      const by = row.querySelector(".extend-by");
      body = { by: by ? by.value : "1h" };
    } else if (!window.confirm(`Release reservation ${id}? Its nodes are handed back now.`)) {
      return;
    }
    button.disabled = true;
    if (out) out.textContent = verb === "extend" ? "extending…" : "releasing…";
    try {
      const got = await post(`/api/v1/reservations/${encodeURIComponent(id)}/${verb}`, body);
      if (!got) return;
      const text = got.ok ? (verb === "extend" ? `until ${when(got.data.end_at)}` : got.data.state)
        : (got.data.detail || got.data.error || "refused");
      if (out) out.textContent = text;
      // The row of a released reservation goes with the next refresh: say it above as well.
      if (verb === "release") say(`#${id}: ${text}`, got.ok ? "ok" : "bad");
    } catch (err) {
      if (out) out.textContent = "cannot reach the manager";
    } finally {
      button.disabled = false;
      refresh();
    }
  }
  document.addEventListener("click", (event) => {
    const target = event.target.closest ? event.target : null;
    if (!target) return;
    const extend = target.closest("button.res-extend");
    if (extend) return act(extend, "extend");
    const release = target.closest("button.res-release");
    if (release) return act(release, "release");
  });
  const every = section ? Number(section.dataset.poll || 0) : 0;
  if (every > 0) {
    setInterval(() => { if (!document.hidden) refresh(); }, every);
  }
})();
