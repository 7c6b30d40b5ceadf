// piman web UI: the users and tokens page (admins). Add user posts /api/v1/users; Set role and
// Reset password patch /api/v1/users/{name}; Revoke deletes /api/v1/tokens/{id}. All JSON
// (the API's Origin check is the forms' CSRF protection); the lists are re-fetched after each.
"use strict";
(function () {
  const section = document.getElementById("accounts");
  const form = document.getElementById("user-form");
  const msg = document.getElementById("user-msg");
  function refresh() {
    if (window.piman && section) window.piman.refresh(section);
  }
  const { call, detail } = window.piman; // JSON calls to the API, and what a refusal says
  async function run(out, busy, text, action, done) {
    busy.disabled = true;
    out.textContent = text;
    out.classList.remove("ok", "bad");
    try {
      const got = await action();
      if (!got) return;
      out.textContent = got.ok ? done(got.data) : detail(got);
      out.classList.add(got.ok ? "ok" : "bad");
      if (got.ok) refresh();
    } catch (err) {
      out.textContent = "cannot reach the manager";
      out.classList.add("bad");
    } finally {
      busy.disabled = false;
    }
  }
  if (form) {
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const data = new FormData(form);
      const body = { name: String(data.get("name")).trim(), role: data.get("role"),
                     password: String(data.get("password")) };
      run(msg, document.getElementById("user-go"), "adding…",
          () => call("POST", "/api/v1/users", body),
          (user) => { form.reset(); return `${user.name} added (${user.role})`; });
    });
  }
  document.addEventListener("click", (event) => {
    const target = event.target.closest ? event.target : null;
    if (!target) return;
    const row = target.closest("tr");
    const role = target.closest("button.user-set-role");
    if (role) {
      const name = role.dataset.user;
      const wanted = row.querySelector(".user-role").value;
      return run(row.querySelector(".user-row-msg"), role, "setting…",
                 () => call("PATCH", `/api/v1/users/${encodeURIComponent(name)}`, { role: wanted }),
                 (user) => `role ${user.role}`);
    }
    const reset = target.closest("button.user-reset");
    if (reset) {
      const name = reset.dataset.user;
      const input = row.querySelector(".user-password");
      if (!input.value) { input.focus(); return; }
      const password = input.value;
      return run(row.querySelector(".user-row-msg"), reset, "resetting…",
                 () => call("PATCH", `/api/v1/users/${encodeURIComponent(name)}`, { password }),
                 () => { input.value = ""; return "password reset"; });
    }
    const revoke = target.closest("button.token-revoke");
    if (revoke) {
      if (!window.confirm(`Revoke token ${revoke.dataset.label}? Scripts using it stop working.`)) return;
      return run(row.querySelector(".token-row-msg"), revoke, "revoking…",
                 () => call("DELETE", `/api/v1/tokens/${encodeURIComponent(revoke.dataset.id)}`),
                 () => "revoked");
    }
  });
})();
