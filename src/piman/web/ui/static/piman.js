// piman web UI: refresh the parts of the page that declare data-refresh, without reloading;
// log out. A refresh answered 401 (the session ended) sends the browser to the login page.
"use strict";
(function () {
  function toLogin() {
    const here = window.location.pathname + window.location.search;
    window.location.assign("/login?next=" + encodeURIComponent(here));
  }
  async function refresh(el) {
    try {
      const response = await fetch(el.dataset.refresh, { headers: { Accept: "text/html" } });
      if (response.status === 401) return toLogin();
      if (!response.ok) return;
      const html = await response.text();
      const body = el.tBodies && el.tBodies[0];
      if (body) body.innerHTML = html; else el.innerHTML = html;
      el.dispatchEvent(new CustomEvent("piman:refreshed"));
    } catch (err) {
      // the manager may be restarting: try again next tick
    }
  }
  for (const el of document.querySelectorAll("[data-refresh]")) {
    const every = parseInt(el.dataset.interval || "2000", 10);
    setInterval(() => refresh(el), every);
  }
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
  window.piman = { refresh, toLogin };
})();
