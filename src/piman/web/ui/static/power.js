// piman web UI: the On/Off/Cycle buttons of the node table call the power REST API.
// Loaded by every node row (_node_actions.html); the guard makes it install its handler once.
"use strict";
(function () {
  if (window.pimanPower) return;
  async function act(button) {
    const box = button.closest("[data-node]");
    if (!box) return;
    const node = box.dataset.node;
    const action = button.dataset.action;
    if (action !== "on" && !window.confirm(`Power ${action} ${node}?`)) return;
    const msg = box.querySelector(".power-msg");
    const buttons = box.querySelectorAll("button");
    buttons.forEach((b) => { b.disabled = true; });
    if (msg) msg.textContent = `${action}…`;
    try {
      const response = await fetch(`/api/v1/nodes/${encodeURIComponent(node)}/power`, {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "application/json" },
        body: JSON.stringify({ action }),
      });
      if (response.status === 401 && window.piman) return window.piman.toLogin();
      const data = await response.json();
      if (msg) msg.textContent = response.ok ? data.state : (data.error || data.detail || "failed");
      if (msg) msg.title = data.error || "";
    } catch (err) {
      if (msg) msg.textContent = "cannot reach the manager";
    } finally {
      buttons.forEach((b) => { b.disabled = false; });
      if (window.piman) window.piman.refreshAll();
    }
  }
  document.addEventListener("click", (event) => {
    const button = event.target.closest ? event.target.closest("button.power-btn") : null;
    if (button) act(button);
  });
  window.pimanPower = { act };
})();
