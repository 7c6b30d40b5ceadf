// piman web UI: refresh the parts of the page that declare data-refresh, without reloading.
"use strict";
(function () {
  async function refresh(el) {
    try {
      const response = await fetch(el.dataset.refresh, { headers: { Accept: "text/html" } });
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
  window.piman = { refresh };
})();
