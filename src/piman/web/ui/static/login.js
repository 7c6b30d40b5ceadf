// piman web UI: the login form posts JSON to the API (the only content type it accepts).
"use strict";
(function () {
  const form = document.getElementById("login");
  if (!form) return;
  const msg = form.querySelector(".login-msg");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const button = form.querySelector("button");
    button.disabled = true;
    msg.textContent = "";
    try {
      const response = await fetch("/api/v1/auth/login", {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "application/json" },
        body: JSON.stringify({ username: form.username.value, password: form.password.value }),
      });
      if (response.ok) {
        const next = form.dataset.next || "/";
        window.location.assign(next.startsWith("/") && !next.startsWith("//") ? next : "/");
        return;
      }
      const data = await response.json().catch(() => ({}));
      msg.textContent = data.detail || `login failed (${response.status})`;
      form.password.value = "";
      form.password.focus();
    } catch (err) {
      msg.textContent = "cannot reach the manager";
    } finally {
      button.disabled = false;
    }
  });
})();
