"""The one HTTP client of every ``--url`` command: the manager's REST API with a token, over TLS.

A command takes :data:`UrlOption`, :data:`TokenOption` and :data:`CaFileOption` and builds a
:class:`ManagerClient` with :func:`connect`. The token comes from ``--token``, else
``$PIMAN_TOKEN``, else the file ``piman login`` wrote (``~/.config/piman/token``, or
``$PIMAN_TOKEN_FILE``). Failures become one line and an exit code: 2 when the request was wrong
(404 unknown name, 422 bad value), 1 otherwise (unreachable, not logged in, not allowed, the
manager failed).
"""

from __future__ import annotations

import json
import os
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, NoReturn

import httpx
import typer

from piman.cli.common import EXIT_BAD_INPUT, EXIT_FAILED, fail

__all__ = [
    "CaFileOption",
    "ManagerClient",
    "TokenOption",
    "UrlOption",
    "connect",
    "token_file",
]

UrlOption = Annotated[
    str | None,
    typer.Option(
        "--url",
        help="A running manager's URL, e.g. http://127.0.0.1:8000 (default: $PIMAN_URL).",
        envvar="PIMAN_URL",
        show_default=False,
    ),
]
TokenOption = Annotated[
    str | None,
    typer.Option(
        "--token",
        help="API token for --url (default: $PIMAN_TOKEN, else the one `piman login` stored).",
        show_default=False,
    ),
]
CaFileOption = Annotated[
    Path | None,
    typer.Option(
        "--ca-file",
        help="CA certificate to trust for an https --url (default: $PIMAN_CA_FILE, else the "
        "system's CAs).",
        envvar="PIMAN_CA_FILE",
        show_default=False,
    ),
]


def token_file() -> Path:
    """Where ``piman login`` keeps the token."""
    override = os.environ.get("PIMAN_TOKEN_FILE")
    if override:
        return Path(override)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "piman" / "token"


def _stored_token() -> str | None:
    path = token_file()
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except OSError as err:
        fail(f"cannot read the token file {path}: {err.strerror}")
    return text or None


class ManagerClient:
    """``/api/v1`` of one manager. Methods return the decoded JSON or exit with one line."""

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        ca_file: Path | None = None,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        local_user: str | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        headers = {"Accept": "application/json", "User-Agent": "piman-cli"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if local_user:
            headers["X-Piman-Local-User"] = local_user
        verify: ssl.SSLContext | bool = True
        if ca_file is not None:
            if not ca_file.is_file():
                fail(f"--ca-file {ca_file}: no such file", EXIT_BAD_INPUT)
            try:
                verify = ssl.create_default_context(cafile=str(ca_file))
            except (OSError, ssl.SSLError) as err:
                fail(f"--ca-file {ca_file}: not a PEM certificate ({err})", EXIT_BAD_INPUT)
        self._http = httpx.Client(
            base_url=self.url,
            headers=headers,
            timeout=timeout,
            verify=verify,
            transport=transport,
        )
        self.authenticated = bool(token)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ManagerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        timeout: float | None = None,
        missing_ok: bool = False,
    ) -> Any:
        """``method /api/v1<path>``; the decoded JSON body, or exit with one line.

        With ``missing_ok``, a route the manager does not have (404, or 503 for a capability
        that is off) answers None instead.
        """
        try:
            response = self._http.request(
                method,
                "/api/v1" + path,
                json=body,
                timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
            )
        except httpx.ConnectError as err:
            fail(f"cannot reach the manager at {self.url}: {err}")
        except httpx.TimeoutException:
            fail(f"the manager at {self.url} did not answer in time")
        except httpx.HTTPError as err:
            fail(f"cannot talk to the manager at {self.url}: {err}")
        if response.is_success:
            return response.json() if response.content else None
        if missing_ok and response.status_code in (404, 503):
            return None
        self._failed(response)

    def events(self, path: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """A server-sent-events stream of a deployment, ``(event, data)`` by ``(event, data)``,
        until an ``event: deployment`` says it finished (``result`` set).

        A dropped connection (the manager restarting) is taken up again with ``Last-Event-ID``,
        for up to two minutes of trying.
        """
        last: str | None = None
        failures = 0
        while True:
            headers = {"Accept": "text/event-stream"}
            if last is not None:
                headers["Last-Event-ID"] = last
            finished = False
            try:
                with self._http.stream(
                    "GET", "/api/v1" + path, headers=headers, timeout=httpx.Timeout(30, read=60)
                ) as response:
                    if not response.is_success:
                        response.read()
                        self._failed(response)
                    event, data = "message", ""
                    for line in response.iter_lines():
                        if line.startswith("event:"):
                            event = line[6:].strip()
                        elif line.startswith("data:"):
                            data += line[5:].strip()
                        elif line.startswith("id:"):
                            last = line[3:].strip()
                        elif line == "" and data:
                            payload = json.loads(data)
                            yield event, payload
                            finished = event == "deployment" and payload.get("result") is not None
                            event, data = "message", ""
                            failures = 0
            except (httpx.TransportError, httpx.RemoteProtocolError):
                pass
            if finished:
                return
            failures += 1
            if failures > 60:
                fail(f"lost the manager at {self.url} (tried for two minutes)")
            time.sleep(2.0)

    def ndjson(self, method: str, path: str, body: Any = None) -> Iterator[Any]:
        """A streamed ``application/x-ndjson`` answer, one decoded line at a time, as the
        manager sends them (no read deadline: the manager's own deadlines bound the stream);
        exits with one line on a refusal or a lost connection."""
        try:
            with self._http.stream(
                method, "/api/v1" + path, json=body, timeout=httpx.Timeout(30, read=None)
            ) as response:
                if not response.is_success:
                    response.read()
                    self._failed(response)
                for line in response.iter_lines():
                    if line.strip():
                        yield json.loads(line)
        except httpx.ConnectError as err:
            fail(f"cannot reach the manager at {self.url}: {err}")
        except httpx.TimeoutException:
            fail(f"the manager at {self.url} did not answer in time")
        except httpx.HTTPError as err:
            fail(f"lost the manager at {self.url}: {err}")

    def get(self, path: str, **kw: Any) -> Any:
        return self.request("GET", path, **kw)

    def post(self, path: str, body: Any = None, **kw: Any) -> Any:
        return self.request("POST", path, body, **kw)

    def patch(self, path: str, body: Any = None, **kw: Any) -> Any:
        return self.request("PATCH", path, body, **kw)

    def delete(self, path: str, **kw: Any) -> Any:
        return self.request("DELETE", path, **kw)

    def _failed(self, response: httpx.Response) -> NoReturn:
        detail = _detail(response)
        code = response.status_code
        if code == 401:
            hint = "" if self.authenticated else " (log in with `piman login URL` or pass --token)"
            fail(f"{self.url}: not authenticated{hint}: {detail}")
        if code == 403:
            fail(f"{self.url}: not allowed: {detail}")
        if code in (400, 404, 409, 422):
            fail(detail, EXIT_BAD_INPUT)
        if code == 429:
            fail(f"{self.url}: too many attempts: {detail}")
        fail(f"{self.url} answered {code}: {detail}", EXIT_FAILED)


def _detail(response: httpx.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        return response.text[:200].strip() or response.reason_phrase
    if isinstance(data, dict):
        detail = data.get("detail", data.get("error", data))
        if isinstance(detail, list):  # FastAPI validation errors
            return "; ".join(
                f"{'.'.join(str(p) for p in d.get('loc', [])[1:])}: {d.get('msg')}"
                for d in detail
                if isinstance(d, dict)
            )
        return str(detail)
    return str(data)


def connect(
    url: str, token: str | None, ca_file: Path | None, *, local_key: Path | None = None
) -> ManagerClient:
    """A client for ``--url`` with the token the user gave or stored.

    With none of those, and ``local_key`` readable (root on the manager machine:
    ``data_dir/local.key``), the client acts as the local admin; the audit log names the local
    account (``local:root``).
    """
    if not url.startswith(("http://", "https://")):
        fail(f"--url {url!r} is not an http:// or https:// URL", EXIT_BAD_INPUT)
    given = token or os.environ.get("PIMAN_TOKEN") or _stored_token()
    if given is None and local_key is not None:
        try:
            key = local_key.read_bytes()
        except OSError:
            key = b""
        if key:
            from piman.cli.common import local_actor

            return ManagerClient(
                url,
                token="local." + key.hex(),
                ca_file=ca_file,
                local_user=local_actor().removeprefix("local:"),
            )
    return ManagerClient(url, token=given, ca_file=ca_file)
