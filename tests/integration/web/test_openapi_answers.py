"""The API's OpenAPI document says what the API really answers (what schemathesis checks in
``tests/fuzz/test_api.py``, kept here as fixed cases):

- a method a path does not take is a 405 whose ``Allow`` names every method the document lists
  for that path (Starlette named the first route's only: ``GET`` for ``/api/v1/silences``);
- each refusal a principal meets (no credentials, a role, a node not held, another origin, a
  body that is not JSON, a path naming nothing, a bad parameter, a bad ``Host``) has its status
  in the document for that operation, and a documented body schema describes the body sent;
  a value the document does not allow (``false`` for an integer id) is refused;
- ``query_range`` refuses a bad parameter as Prometheus does (400 ``bad_data``), and the
  document says which parameters it takes (``metric`` required).

A real manager runs in the test's event loop (store, accounts, power through a command switch,
deploy, monitoring with alerting); the app is the one ``piman server`` serves.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import jsonschema_rs
import pytest
import pytest_asyncio

from piman.config.models import Config
from piman.manager import Manager
from piman.web.app import create_app

ROLES = ("viewer", "user", "operator", "admin")
PATH_VALUES = {
    "name": "pi1",
    "token_id": "999999",
    "silence_id": "nope",
    "deployment_id": "999999",
    "reservation_id": "999999",
}


@dataclass
class Api:
    client: httpx.AsyncClient
    doc: dict[str, Any]
    tokens: dict[str, str]

    def auth(self, who: str) -> dict[str, str]:
        return {} if who == "anonymous" else {"Authorization": f"Bearer {self.tokens[who]}"}

    def responses(self, method: str, path: str) -> dict[str, Any]:
        operation = self.doc["paths"][path][method.lower()]
        assert isinstance(operation, dict)
        responses = operation["responses"]
        assert isinstance(responses, dict)
        return responses


pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def api(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Api]:
    """One manager for the module: every test only reads, or is refused."""
    tmp_path = tmp_path_factory.mktemp("openapi")
    config = Config.model_validate(
        {
            "manager": {"address": "198.18.0.1", "network": "198.18.0.0/24",
                        "data_dir": str(tmp_path / "data")},
            "deploy": {},
            "switches": [{"name": "rack1", "driver": "command", "command": ["true"],
                          "off_seconds": 0, "batch_interval": 0}],
            "nodes": [{"name": "pi1", "switch": "rack1", "port": 1, "mac": "dc:a6:32:00:00:01",
                       "ip": "198.18.0.11", "model": "pi4"}],
            "monitoring": {"scrape_interval": "1h",
                           "rules": [{"alert": "NodeDown", "expr": "up == 0", "for": "1m"}]},
        }
    )  # fmt: skip
    manager = Manager(config)
    task = asyncio.create_task(manager.run())
    try:
        async with asyncio.timeout(60):
            await manager.ready.wait()
        ctx = manager.ctx
        assert ctx is not None
        assert ctx.access is not None
        tokens = {}
        for role in ROLES:
            await ctx.access.add_user(f"api-{role}", role, f"password-of-{role}")
            _, tokens[role] = await ctx.access.create_token(f"api-{role}", "openapi", None)
        app = create_app(ctx)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1"
        ) as client:
            doc = (await client.get("/api/v1/openapi.json", headers=Api(client, {}, tokens)
                                    .auth("viewer"))).json()  # fmt: skip
            yield Api(client, doc, tokens)
    finally:
        manager.stop()
        async with asyncio.timeout(30):
            await task


def _concrete(path: str) -> str:
    for key, value in PATH_VALUES.items():
        path = path.replace("{" + key + "}", value)
    return path


async def test_a_method_a_path_lacks_is_405_with_allow_naming_every_documented_method(
    api: Api,
) -> None:
    wrong: list[str] = []
    for path, operations in sorted(api.doc["paths"].items()):
        documented = {m.upper() for m in operations}
        missing = sorted({"GET", "POST", "PUT", "PATCH", "DELETE"} - documented)
        response = await api.client.request(
            missing[0], _concrete(path), headers=api.auth("admin")
        )  # fmt: skip
        allowed = {m.strip() for m in response.headers.get("allow", "").split(",") if m.strip()}
        if response.status_code != 405 or allowed != documented:
            wrong.append(f"{missing[0]} {path}: {response.status_code} Allow {sorted(allowed)}, "
                         f"documented {sorted(documented)}")  # fmt: skip
    assert wrong == []
    # The two the fuzzing found first.
    for path in ("/api/v1/silences", "/api/v1/nodes/pi1/power"):
        response = await api.client.options(path, headers=api.auth("viewer"))
        assert response.status_code == 405
        assert response.headers["allow"] == "GET, POST"


# (who, method, path, how the request is made, the status it gets)
REFUSALS: list[tuple[str, str, str, dict[str, Any], int]] = [
    ("anonymous", "GET", "/api/v1/nodes", {}, 401),
    ("anonymous", "POST", "/api/v1/silences", {"json": {"matchers": ["a=b"]}}, 401),
    ("viewer", "GET", "/api/v1/users", {}, 403),
    ("viewer", "POST", "/api/v1/silences", {"json": {"matchers": ["a=b"]}}, 403),
    ("viewer", "GET", "/api/v1/tokens", {"params": {"all": "true"}}, 403),
    ("user", "GET", "/api/v1/nodes/{name}/power", {}, 403),
    ("user", "GET", "/api/v1/deployments/{deployment_id}", {}, 403),
    ("user", "GET", "/api/v1/deployments/{deployment_id}/history", {}, 403),
    (
        "admin",
        "POST",
        "/api/v1/silences",
        {"json": {"matchers": ["a=b"]}, "headers": {"Origin": "http://evil.example"}},
        403,
    ),
    (
        "admin",
        "POST",
        "/api/v1/silences",
        {"content": b"\xd7<\xe9C", "headers": {"Content-Type": "application/json"}},
        400,
    ),
    ("admin", "GET", "/api/v1/nodes", {"headers": {"Host": "rebound.example"}}, 400),
    (
        "admin",
        "POST",
        "/api/v1/deployments",
        {"content": b"nodes", "headers": {"Content-Type": "text/plain"}},
        415,
    ),
    ("admin", "GET", "/api/v1/deployments/{deployment_id}/history", {}, 404),
    ("admin", "GET", "/api/v1/deployments/{deployment_id}/events", {}, 404),
    ("admin", "POST", "/api/v1/users/{name}/password", {"json": {"password": "x" * 12}}, 404),
    ("admin", "GET", "/api/v1/query_range", {}, 400),
    (
        "viewer",
        "GET",
        "/api/v1/availability/next",
        {"params": {"duration": "1h", "nodes": "x"}},
        404,
    ),
    ("admin", "POST", "/api/v1/tokens", {"json": {"name": ""}}, 422),
    ("admin", "POST", "/api/v1/tokens", {"json": {"name": 5}}, 422),
    ("admin", "POST", "/api/v1/users", {"json": {"name": "new"}}, 422),
    ("admin", "POST", "/api/v1/silences", {"json": {"matchers": ["a=~("]}}, 422),
    ("admin", "POST", "/api/v1/reservations", {"json": {"nodes": ["pi1"]}}, 422),
    # An id is an integer, not a boolean (pydantic took false for notification 0).
    ("admin", "POST", "/api/v1/alerts/outbox/retry", {"json": {"ids": [False]}}, 422),
]


def _check_body(doc: dict[str, Any], documented: dict[str, Any], body: Any) -> None:
    schema = documented.get("content", {}).get("application/json", {}).get("schema")
    if schema is not None:
        validator = jsonschema_rs.validator_for({**schema, "components": doc["components"]})
        assert validator.is_valid(body), (schema, body)


@pytest.mark.parametrize(
    ("who", "method", "path", "how", "status"),
    REFUSALS,
    ids=[f"{w}-{m}-{p}-{s}" for w, m, p, _, s in REFUSALS],
)
async def test_each_refusal_is_documented_for_its_operation(
    api: Api, who: str, method: str, path: str, how: dict[str, Any], status: int
) -> None:
    headers = {**api.auth(who), **how.get("headers", {})}
    response = await api.client.request(
        method,
        _concrete(path),
        headers=headers,
        **{k: v for k, v in how.items() if k != "headers"},
    )
    assert response.status_code == status, response.text
    responses = api.responses(method, path)
    assert str(status) in responses, sorted(responses)
    _check_body(api.doc, responses[str(status)], response.json())


@pytest.mark.parametrize(
    ("params", "error"),
    [
        ({}, 'invalid parameter "metric": Field required'),
        ({"metric": ""}, 'invalid parameter "metric": String should have at least 1 character'),
        ({"metric": "up", "step": "-1"}, 'invalid parameter "step": Input should be greater'),
        ({"metric": "up", "start": "soon"}, 'invalid parameter "start": Input should be a valid'),
        ({"metric": "up", "end": "inf"}, 'invalid parameter "end": Input should be a finite'),
        ({"metric": "up", "start": "10", "end": "5"}, "end is before start"),
        ({"metric": "up", "start": "0", "end": "1e9", "step": "1"}, "more than 11000 points"),
    ],
)
async def test_query_range_refuses_a_bad_parameter_as_prometheus_does(
    api: Api, params: dict[str, str], error: str
) -> None:
    response = await api.client.get(
        "/api/v1/query_range", params=params, headers=api.auth("viewer")
    )
    assert response.status_code == 400
    body = response.json()
    assert body["status"] == "error"
    assert body["errorType"] == "bad_data"
    assert body["error"].startswith(error)
    _check_body(api.doc, api.responses("GET", "/api/v1/query_range")["400"], body)


async def test_query_range_parameters_are_documented_as_taken(api: Api) -> None:
    operation = api.doc["paths"]["/api/v1/query_range"]["get"]
    parameters = {p["name"]: p for p in operation["parameters"]}
    assert parameters["metric"]["required"] is True
    assert parameters["metric"]["schema"]["minLength"] == 1
    for name in ("start", "end", "step"):
        assert parameters[name]["required"] is False
        assert "number" in [kind.get("type") for kind in parameters[name]["schema"]["anyOf"]]
    good = await api.client.get(
        "/api/v1/query_range",
        params={"metric": "up", "start": "1e9", "end": "1000000060.5", "step": "15"},
        headers=api.auth("viewer"),
    )
    assert good.status_code == 200
    assert good.json() == {"status": "success", "data": {"resultType": "matrix", "result": []}}
