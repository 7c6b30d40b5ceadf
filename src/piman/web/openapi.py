"""What the API's OpenAPI document says it answers, and the ``Allow`` header of a 405.

FastAPI documents what each route declares: its answer, the statuses of its ``responses=`` and a
422 when it takes parameters or a body. What stands in front of every route answers too, the
same way for each, and :func:`document_answers` adds that to every operation of the document:

- 400: the request guard (:class:`~piman.web.security.RequestGuard`) refuses a ``Host`` the
  manager does not answer to and a ``Content-Length`` that is not a number; a body that is not
  JSON text (not UTF-8) is not parsed;
- 401: a route that asks who is calling (:func:`~piman.web.security.optional_principal`),
  without credentials or with a token that is unknown, revoked or expired;
- 403: a route whose principal must have a role or hold the node (a check on the principal),
  and any mutating request from another origin (the guard);
- 404: an operation with path parameters, when the path names nothing;
- 411, 413, 415: a mutating request sent chunked, with a body over
  :data:`~piman.web.security.MAX_BODY`, or with a body that is not ``application/json``;
- 422: FastAPI's validation errors (``detail``: a list of problems) and the routes' own
  refusals (``detail``: one line) are both described wherever the route documents 422.

A status the route documents keeps its description; the causes above are appended to it.

:func:`method_not_allowed`: Starlette answers a method a path does not take with 405 and an
``Allow`` that lists the methods of the first route of that path only (``GET`` for
``/api/v1/silences``, which takes ``POST`` too); this handler lists every method of every
route of the path.
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Iterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.dependencies.models import Dependant
from fastapi.exception_handlers import http_exception_handler
from fastapi.openapi.utils import (
    validation_error_definition,
    validation_error_response_definition,
)
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute, RouteContext, iter_route_contexts
from starlette.exceptions import HTTPException as StarletteHTTPException

from piman.web.security import MAX_BODY, MUTATING, Anyone, optional_principal

__all__ = ["document_answers", "install", "method_not_allowed"]

_REF = "#/components/schemas/"
# The one dependency that turns "who is calling" into "someone must be": a dependency that
# depends on it is a check on the principal (a role, a held node), which can answer 403.
_ANYONE: Callable[..., Any] = typing.get_args(Anyone)[1].dependency
_PROBLEM = {
    "title": "Problem",
    "type": "object",
    "properties": {
        "detail": {"title": "Detail", "type": "string"},
        "error": {"title": "Error", "type": "string"},
    },
    "required": ["detail"],
}


def install(app: FastAPI) -> None:
    """The 405 handler, and the common answers in the app's OpenAPI document."""
    app.add_exception_handler(StarletteHTTPException, method_not_allowed)
    document_answers(app)


async def method_not_allowed(request: Request, exc: Exception) -> Response:
    """A 405 whose ``Allow`` lists what every route of the path takes; other HTTP errors are
    FastAPI's answer, unchanged."""
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code != 405:
        return await http_exception_handler(request, exc)
    methods: set[str] = set()
    path = request.scope["path"]
    for route in iter_route_contexts(request.app.routes):
        regex = getattr(route, "path_regex", None)
        if route.methods and regex is not None and regex.match(path):
            methods |= route.methods
    headers = {**(exc.headers or {}), "Allow": ", ".join(sorted(methods))}
    return JSONResponse({"detail": exc.detail}, status_code=405, headers=headers)


def document_answers(app: FastAPI) -> None:
    """Make ``app.openapi()`` describe the answers of the guard and of the principal checks."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            _complete(app, schema)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _calls(dependant: Dependant) -> Iterator[tuple[Any, list[Any]]]:
    """Every dependency of the tree, with the calls of its own dependencies."""
    for sub in dependant.dependencies:
        yield sub.call, [d.call for d in sub.dependencies]
        yield from _calls(sub)


def _causes(route: RouteContext, method: str, operation: dict[str, Any]) -> dict[str, list[str]]:
    calls = list(_calls(route.dependant))
    asks_who = any(call is optional_principal for call, _ in calls)
    checks_who = any(_ANYONE in subs for _, subs in calls)
    mutating = method.upper() in MUTATING
    causes: dict[str, list[str]] = {"400": ["a Host this manager does not answer to"]}
    if mutating:
        causes["400"].append("a Content-Length that is not a number")
    if "requestBody" in operation:
        causes["400"].append("a body that is not JSON text")
    if asks_who:
        causes["401"] = ["no credentials, or a token that is unknown, revoked or expired"]
    if checks_who:
        causes["403"] = ["the principal's role (or what it holds) does not allow this"]
    if mutating:
        causes.setdefault("403", []).append("a request from another origin")
        causes["411"] = ["a body sent without a Content-Length (chunked)"]
        causes["413"] = [f"a body over {MAX_BODY} bytes"]
        causes["415"] = ["a body that is not application/json"]
    if any(p.get("in") == "path" for p in operation.get("parameters", ())):
        causes["404"] = ["the path names nothing (no such resource)"]
    return causes


def _complete(app: FastAPI, schema: dict[str, Any]) -> None:
    paths = schema.get("paths", {})
    schemas = schema.setdefault("components", {}).setdefault("schemas", {})
    for route in iter_route_contexts(app.routes):  # included routers' routes, prefixed
        if not isinstance(route.original_route, APIRoute) or not route.include_in_schema:
            continue
        for method in route.methods or ():
            operation = paths.get(route.path_format, {}).get(method.lower())
            if operation is None:
                continue
            responses = operation.setdefault("responses", {})
            for status, causes in _causes(route, method, operation).items():
                text = "; ".join(causes)
                if status in responses:
                    described = responses[status].get("description", "").rstrip(". ")
                    responses[status]["description"] = f"{described}. Also: {text}"
                else:
                    responses[status] = {"description": text[0].upper() + text[1:]}
            if "422" in responses:
                _both_kinds_of_422(responses["422"], schemas)


def _both_kinds_of_422(response: dict[str, Any], schemas: dict[str, Any]) -> None:
    """A 422 is FastAPI's list of problems or a route's own one-line refusal."""
    schemas.setdefault("ValidationError", validation_error_definition)
    schemas.setdefault("HTTPValidationError", validation_error_response_definition)
    schemas.setdefault("Problem", _PROBLEM)
    content = response.setdefault("content", {}).setdefault("application/json", {})
    kinds = [{"$ref": _REF + "HTTPValidationError"}, {"$ref": _REF + "Problem"}]
    given = content.get("schema")
    if given is not None:
        kinds = [k for k in (given.get("anyOf") or [given]) if k not in kinds] + kinds
    content["schema"] = {"anyOf": kinds}
