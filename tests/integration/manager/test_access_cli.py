"""`piman user`, `piman token` and `piman login` as a person runs them: on the manager machine
against the store, and against a running `piman server` with --url."""

from __future__ import annotations

import json
import os
import ssl
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.manager.test_server import Server


def piman(
    *args: str, stdin: str = "", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "piman", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    s = Server(tmp_path)
    try:
        yield s
    finally:
        s.stop()


def test_users_on_the_manager_machine_without_a_manager(tmp_path: Path) -> None:
    config = tmp_path / "piman.yaml"
    config.write_text(f"manager: {{address: 198.18.0.1, data_dir: {tmp_path / 'data'}}}\n")
    c = ("-c", str(config))
    made = piman(
        "user", "add", "bob", "--role", "operator", "--password-stdin", *c, stdin="bob-password\n"
    )
    assert made.returncode == 0, made.stderr
    assert "user bob added with role operator" in made.stdout
    admin = piman("user", "add", "root", "--role", "admin", "--generate", *c)
    assert admin.returncode == 0, admin.stderr
    assert "password (shown once): " in admin.stdout
    listed = json.loads(piman("user", "list", "--json", *c).stdout)
    assert [(u["name"], u["role"]) for u in listed] == [("bob", "operator"), ("root", "admin")]
    assert piman("user", "role", "bob", "viewer", *c).returncode == 0
    again = piman("user", "passwd", "bob", "--password-stdin", *c, stdin="new-bob-password\n")
    assert again.returncode == 0, again.stderr

    # Bad input: one line, exit 2, nothing changed.
    for args, stdin, says in [
        (("user", "add", "Bad Name", "--role", "viewer", "--generate"), "", "is not a user name"),
        (("user", "add", "carl", "--role", "god", "--generate"), "", "is not a role"),
        (("user", "add", "carl", "--role", "viewer", "--password-stdin"), "short\n", "at least 8"),
        (("user", "add", "bob", "--role", "viewer", "--generate"), "", "exists already"),
        (("user", "role", "root", "viewer"), "", "last admin"),
        (("user", "remove", "root", "--yes"), "", "last admin"),
        (("user", "remove", "nobody", "--yes"), "", "no user named 'nobody'"),
        (("token", "create"), "", "--user NAME"),
    ]:
        bad = piman(*args, *c, stdin=stdin)
        assert bad.returncode == 2, (args, bad.stdout, bad.stderr)
        assert says in bad.stderr, (args, bad.stderr)
        assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr
        assert "Traceback" not in bad.stderr

    made = piman("token", "create", "--user", "bob", "--name", "backup", "--expires", "30d", *c)
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip().splitlines()[-1]
    assert token.startswith("pm_")
    listed = piman("token", "list", *c)
    assert "backup" in listed.stdout
    assert token not in listed.stdout  # shown once, then by prefix only
    assert piman("user", "remove", "bob", "--yes", *c).returncode == 0
    assert [u["name"] for u in json.loads(piman("user", "list", "--json", *c).stdout)] == ["root"]

    # The audit log names the local account that did it.
    import sqlite3

    db = sqlite3.connect(tmp_path / "data" / "piman.db")
    try:
        actors = {
            a for (a,) in db.execute("SELECT actor FROM audit_log WHERE action LIKE 'user.%'")
        }
    finally:
        db.close()
    assert all(a.startswith("local:") for a in actors), actors


def test_login_stores_a_private_token_that_every_url_command_uses(
    server: Server, tmp_path: Path
) -> None:
    token_file = tmp_path / "cfg" / "piman" / "token"
    env = {"PIMAN_TOKEN_FILE": str(token_file), "PIMAN_TOKEN": ""}
    denied = piman("nodes", "--url", server.url, env=env)
    assert denied.returncode == 1
    assert "not authenticated" in denied.stderr
    assert "piman login" in denied.stderr

    wrong = piman(
        "login", server.url, "--user", "admin", "--password-stdin", stdin="nope\n", env=env
    )
    assert wrong.returncode == 1
    assert "wrong user name or password" in wrong.stderr
    assert not token_file.exists()

    ok = piman(
        "login",
        server.url,
        "--user",
        "admin",
        "--password-stdin",
        stdin=server.password + "\n",
        env=env,
    )
    assert ok.returncode == 0, ok.stderr
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    nodes = piman("nodes", "--url", server.url, "--json", env=env)
    assert nodes.returncode == 0, nodes.stderr
    assert [n["name"] for n in json.loads(nodes.stdout)] == ["rack1-01", "rack1-02"]

    # An admin makes a viewer over the API; the viewer may read but not manage accounts.
    add = piman(
        "user", "add", "vera", "--role", "viewer", "--password-stdin", "--url", server.url,
        stdin="vera-password\n", env=env,
    )  # fmt: skip
    assert add.returncode == 0, add.stderr
    vera_file = tmp_path / "vera-token"
    vera_env = {"PIMAN_TOKEN_FILE": str(vera_file), "PIMAN_TOKEN": ""}
    piman(
        "login", server.url, "-u", "vera", "--password-stdin", stdin="vera-password\n", env=vera_env
    )
    assert piman("nodes", "--url", server.url, env=vera_env).returncode == 0
    refused = piman("user", "list", "--url", server.url, env=vera_env)
    assert refused.returncode == 1
    assert "not allowed" in refused.stderr

    # Tokens by prefix; a revoked one is refused at once.
    listed = json.loads(
        piman("token", "list", "--all", "--json", "--url", server.url, env=env).stdout
    )
    (vera_token,) = [t for t in listed if t["user"] == "vera"]
    revoke = piman("token", "revoke", str(vera_token["id"]), "--url", server.url, env=env)
    assert revoke.returncode == 0, revoke.stderr
    after = piman("nodes", "--url", server.url, env=vera_env)
    assert after.returncode == 1
    assert "not authenticated" in after.stderr

    # --token wins over the stored token; a bad one is one clear line.
    bad = piman("nodes", "--url", server.url, "--token", "pm_00000000_" + "x" * 43, env=env)
    assert bad.returncode == 1
    assert "unknown, revoked or expired" in bad.stderr


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key (what an operator's own CA would issue)."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "piman test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp / "cert.pem", tmp / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


def test_https_with_manager_tls_and_a_secure_cookie(tmp_path: Path) -> None:
    import httpx

    from tests.support import free_port, initial_admin_password

    cert, key = _self_signed(tmp_path)
    trust = ssl.create_default_context(cafile=str(cert))
    port = free_port()
    config = tmp_path / "piman.yaml"
    config.write_text(
        f"manager: {{address: 198.18.0.1, data_dir: {tmp_path / 'data'}, "
        f'http: "127.0.0.1:{port}", tls: {{cert: {cert}, key: {key}}}}}\n'
    )
    url = f"https://127.0.0.1:{port}"
    log = (tmp_path / "server.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "piman", "server", "-c", str(config)], stderr=log
    )
    try:
        import time

        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(url + "/healthz", verify=trust, timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, (tmp_path / "server.log").read_text()
            assert time.monotonic() < deadline
            time.sleep(0.2)
        password = initial_admin_password(tmp_path / "data")
        login = httpx.post(
            url + "/api/v1/auth/login",
            json={"username": "admin", "password": password},
            verify=trust,
        )
        assert login.status_code == 200
        assert "secure" in login.headers["set-cookie"].lower()
        token_file = tmp_path / "token"
        env = {"PIMAN_TOKEN_FILE": str(token_file), "PIMAN_TOKEN": ""}
        untrusted = piman(
            "login", url, "-u", "admin", "--password-stdin", stdin=password + "\n", env=env
        )
        assert untrusted.returncode == 1
        assert "certificate" in untrusted.stderr.lower()
        trusted = piman(
            "login", url, "-u", "admin", "--password-stdin", "--ca-file", str(cert),
            stdin=password + "\n", env=env,
        )  # fmt: skip
        assert trusted.returncode == 0, trusted.stderr
        nodes = piman("nodes", "--url", url, "--ca-file", str(cert), "--json", env=env)
        assert nodes.returncode == 0, nodes.stderr
        assert json.loads(nodes.stdout) == []
    finally:
        proc.terminate()
        proc.wait(15)
        log.close()
