// piman web UI: keep the page live, log out.
//
// Each element with data-refresh names the URL of its live parts (elements marked data-part,
// swapped by name). The page listens to /ui/events (server-sent events) and re-fetches an
// element when a change concerns it: data-watch="fleet" on a fleet change or a change of a
// node it shows (a [data-node] row inside), data-watch="node" on a change of its
// data-node-name, data-watch="alerts" on an alerts change, data-watch="none" only on a
// reconnect. The browser's EventSource reconnects by itself after a manager restart; each
// reconnect re-fetches everything (events may have been missed), so nothing stale stays. A fetch answered 401 (the session
// ended) sends the browser to the login page.
"use strict";
(function () {
  function toLogin() {
    const here = window.location.pathname + window.location.search;
    window.location.assign("/login?next=" + encodeURIComponent(here));
  }
  const busy = new Map(); // element → a refresh is running (true) or running and owed (2)
  async function refresh(el) {
    if (busy.get(el)) { busy.set(el, 2); return; }
    busy.set(el, true);
    try {
      const response = await fetch(el.dataset.refresh, { headers: { Accept: "text/html" } });
      if (response.status === 401) return toLogin();
      if (!response.ok) return;
      swap(el, await response.text());
      el.dispatchEvent(new CustomEvent("piman:refreshed"));
      for (const table of el.querySelectorAll("table[id]")) {
        table.dispatchEvent(new CustomEvent("piman:refreshed"));
      }
    } catch (err) {
      // the manager may be restarting: the reconnect re-fetches
    } finally {
      const again = busy.get(el) === 2;
      busy.delete(el);
      if (again) refresh(el);
    }
  }
  function swap(el, html) {
    const doc = new DOMParser().parseFromString(html, "text/html");
    const parts = el.querySelectorAll("[data-part]");
    if (!parts.length) {
      const body = el.tBodies && el.tBodies[0];
      if (body) body.innerHTML = html; else el.innerHTML = html;
      return;
    }
    // Keyboard users keep their place: the focused button is focused again after the swap.
    const focused = document.activeElement;
    const row = focused && el.contains(focused) ? focused.closest("[data-node]") : null;
    const again = row && focused.className
      ? `[data-node="${CSS.escape(row.dataset.node)}"] .${focused.className.split(" ")[0]}` +
        (focused.dataset.action ? `[data-action="${focused.dataset.action}"]` : "")
      : null;
    for (const part of parts) {
      const fresh = doc.querySelector(`[data-part="${part.dataset.part}"]`);
      if (fresh) part.innerHTML = fresh.innerHTML;
    }
    if (again && !el.contains(focused)) {
      const target = el.querySelector(again);
      if (target) target.focus();
    }
  }
  function concerns(el, change) {
    const watch = el.dataset.watch || "fleet";
    if (watch === "none") return false; // refreshed by its own script (and on reconnect)
    if (watch === "alerts") return change.alerts;
    if (watch === "node") return change.nodes.includes(el.dataset.nodeName);
    if (change.fleet) return true;
    return change.nodes.some((name) => el.querySelector(`[data-node="${CSS.escape(name)}"]`));
  }
  function refreshAll() {
    for (const el of document.querySelectorAll("[data-refresh]")) refresh(el);
  }
  const status = document.getElementById("live");
  function say(text, cls) {
    if (!status) return;
    status.textContent = text;
    status.className = cls;
  }
  let opened = false;
  function connect() {
    if (!document.querySelector("[data-refresh]") || !window.EventSource) return;
    const events = new EventSource("/ui/events");
    events.addEventListener("open", () => {
      say("live", "live-on");
      if (opened) refreshAll(); // back after a restart or a network cut: catch up
      opened = true;
    });
    events.addEventListener("change", (event) => {
      let change;
      try { change = JSON.parse(event.data); } catch (err) { return; }
      for (const el of document.querySelectorAll("[data-refresh]")) {
        if (!el.dataset.watch && el.id === "alerts") { if (change.alerts) refresh(el); continue; }
        if (concerns(el, change)) refresh(el);
      }
    });
    events.addEventListener("error", () => {
      say("reconnecting…", "live-off");
      if (events.readyState === EventSource.CLOSED) {
        // The manager answered with an error (it was starting, or the session ended): check
        // whether we are still logged in, then listen again.
        events.close();
        setTimeout(async () => {
          try {
            const me = await fetch("/api/v1/auth/me", { headers: { Accept: "application/json" } });
            if (me.status === 401) return toLogin();
          } catch (err) { /* still down */ }
          connect();
        }, 2000);
      }
    });
  }
  connect();
  const logout = document.getElementById("logout");
  if (logout) {
    logout.addEventListener("click", async () => {
      try {
        await fetch("/api/v1/auth/logout", { method: "POST", headers: { Accept: "application/json" } });
      } finally {
        window.location.assign("/login");
      }
    });
  }
  // A JSON call to the API: {ok, status, data}, or null after a 401 (off to the login page).
  // The API's Origin check is what makes these calls CSRF-safe.
  async function call(method, url, body) {
    const response = await fetch(url, {
      method,
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (response.status === 401) { toLogin(); return null; }
    let data = {};
    try { data = await response.json(); } catch (err) { /* an empty answer */ }
    return { ok: response.ok, status: response.status, data };
  }
  // What a refused call says, in one line (FastAPI's detail, a validation error's first message).
  function detail(got) {
    const d = got.data.detail;
    if (typeof d === "string") return d;
    if (Array.isArray(d) && d.length) return d[0].msg || "refused";
    return got.data.error || `refused (${got.status})`;
  }
  window.piman = { refresh, refreshAll, toLogin, call, detail };
})();
