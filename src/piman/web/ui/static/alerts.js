// piman web UI: the alerts page. The silence form posts /api/v1/silences (JSON; the API's
// Origin check is its CSRF protection); Expire deletes /api/v1/silences/{id}; "Silence…" on an
// alert fills the form with its alert name and node. The live parts are re-fetched by piman.js
// when the active alerts change, here after each action and every few seconds.
"use strict";
(function () {
  const section = document.getElementById("alert-page");
  const form = document.getElementById("silence-form");
  const msg = document.getElementById("silence-msg");
  function refresh() {
    if (window.piman && section) window.piman.refresh(section);
  }
  const { call, detail } = window.piman; // JSON calls to the API, and what a refusal says
  if (form) {
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const data = new FormData(form);
      const go = document.getElementById("silence-go");
      go.disabled = true;
      msg.textContent = "silencing…";
      msg.className = "silence-msg";
      try {
        const got = await call("POST", "/api/v1/silences", {
          matchers: String(data.get("matchers")).trim(),
          duration: data.get("duration"),
          comment: String(data.get("comment") || "").trim(),
        });
        if (!got) return;
        msg.textContent = got.ok ? `silence ${got.data.id.slice(0, 8)} until ${new Date(got.data.ends_at).toLocaleString()}` : detail(got);
        msg.className = "silence-msg " + (got.ok ? "ok" : "bad");
        if (got.ok) form.reset();
      } catch (err) {
        msg.textContent = "cannot reach the manager";
        msg.className = "silence-msg bad";
      } finally {
        go.disabled = false;
        refresh();
      }
    });
  }
  async function expire(button) {
    const id = button.dataset.id;
    if (!window.confirm(`Expire silence ${id.slice(0, 8)} now?`)) return;
    const out = button.parentElement.querySelector(".silence-row-msg");
    button.disabled = true;
    if (out) out.textContent = "expiring…";
    try {
      const got = await call("DELETE", `/api/v1/silences/${encodeURIComponent(id)}`);
      if (got && out) out.textContent = got.ok ? "expired" : detail(got);
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
    const end = target.closest("button.silence-expire");
    if (end) return expire(end);
    const fill = target.closest("button.silence-this");
    if (fill && form) {
      const parts = [`alertname=${fill.dataset.alertname}`];
      if (fill.dataset.forNode) parts.push(`node=${fill.dataset.forNode}`);
      const input = document.getElementById("silence-matchers");
      input.value = parts.join(", ");
      input.focus();
    }
  });
  const every = section ? Number(section.dataset.poll || 0) : 0;
  if (every > 0) setInterval(() => { if (!document.hidden) refresh(); }, every);
})();
