"""openapi.yaml: a valid OpenAPI 3.1 document that describes exactly the app's routes, served as JSON.

Both route lists are derived programmatically: the app's from its Tornado route table (each
rule's path regex expanded to path templates, and the methods its handler implements, confirmed
by routing a sample URL through the app so that shadowed routes do not count), the spec's from
its `paths`.
"""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
import tornado.routing
import tornado.web
from openapi_spec_validator import validate
from tornado.httputil import HTTPHeaders, HTTPServerRequest, RequestStartLine

from handlers.app import ROUTE_MODULES, make_app
from handlers.openapi import load_spec
from tests.helpers import TestServer

METHODS = ("get", "head", "post", "put", "patch", "delete")
# Capturing groups that stand for one path parameter; (.+) and (.*) may contain slashes.
PARAMETER_GROUPS = ("[^/]+", ".+", ".*")
SAMPLE_VALUE = "sample-1"


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    return load_spec()


# ---- the app's route table as path templates ----------------------------------------------------


def _closing_paren(pattern: str, start: int) -> int:
    """Index of the `)` that closes the group opened at `start`."""
    depth = 0
    index = start
    in_class = False
    while index < len(pattern):
        char = pattern[index]
        if char == "\\":
            index += 2
            continue
        if in_class:
            in_class = char != "]"
        elif char == "[":
            in_class = True
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                return index
        index += 1
    raise ValueError(f"unbalanced group in {pattern!r}")


def _split_alternatives(pattern: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in pattern:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "|" and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    return [*parts, current]


def path_templates(pattern: str) -> list[str]:
    """Every path a Tornado route regex stands for, parameters written `{}`.

    Handles the constructs the route tables use (literals, escapes, parameter groups, literal
    alternations, optional non-capturing groups, negative look-aheads) and refuses anything
    else, so a new kind of route makes this test fail instead of being skipped.
    """
    pattern = pattern.removesuffix("$")
    results = [""]
    index = 0
    while index < len(pattern):
        char = pattern[index]
        if char == "\\":
            results = [r + pattern[index + 1] for r in results]
            index += 2
        elif char == "(":
            end = _closing_paren(pattern, index)
            if pattern.startswith("(?!", index):
                index = end + 1  # a look-ahead excludes some values; it adds no text
                continue
            capturing = not pattern.startswith("(?:", index)
            inner = pattern[index + (1 if capturing else 3) : end]
            optional = pattern[end + 1 : end + 2] == "?"
            if capturing and inner in PARAMETER_GROUPS:
                alternatives = ["{}"]
            else:
                alternatives = [t for part in _split_alternatives(inner) for t in path_templates(part)]
            if optional:
                alternatives.append("")
            results = [r + a for r in results for a in alternatives]
            index = end + (2 if optional else 1)
        elif char in ".*+?[]{}^$|":
            raise ValueError(f"unsupported regex construct {char!r} in route {pattern!r}")
        else:
            results = [r + char for r in results]
            index += 1
    return results


def implemented(handler: type[tornado.web.RequestHandler]) -> list[str]:
    """The HTTP methods a handler class defines itself (OPTIONS, the CORS preflight of every
    APIHandler, is left out: it is the same everywhere and documented in the spec's intro)."""
    unimplemented = tornado.web.RequestHandler._unimplemented_method
    return [m for m in METHODS if getattr(handler, m) is not unimplemented]


def fake_request(method: str, path: str) -> HTTPServerRequest:
    """A request object for routing only (nothing is sent)."""
    start_line = RequestStartLine(method.upper(), path, "HTTP/1.1")
    return HTTPServerRequest(start_line=start_line, headers=HTTPHeaders({"Host": "localhost"}))


def routed_handler(app: tornado.web.Application, method: str, path: str) -> type | None:
    """The handler class the app's routing picks for this request, or None (default 404)."""
    delegate = app.wildcard_router.find_handler(fake_request(method, path))
    return getattr(delegate, "handler_class", None)


def sample(template: str) -> str:
    return re.sub(r"\{[^}]*\}", SAMPLE_VALUE, template)


def normalize(spec_path: str) -> str:
    return re.sub(r"\{[^}]*\}", "{}", spec_path)


def app_operations(app: tornado.web.Application) -> dict[tuple[str, str], type]:
    """(path template, method) -> handler class, for every route a request can reach."""
    operations: dict[tuple[str, str], type] = {}
    unreachable = []
    for rule in app.wildcard_router.rules:
        assert isinstance(rule.matcher, tornado.routing.PathMatches), rule
        handler = rule.target
        methods = implemented(handler)
        if not methods:
            # A catch-all that answers every method with a JSON 404 (GitHubNotFoundHandler):
            # it has no operations, and the spec's introduction describes it.
            continue
        for template in path_templates(rule.matcher.regex.pattern):
            for method in methods:
                if routed_handler(app, method, sample(template)) is handler:
                    operations[(template, method)] = handler
                else:
                    unreachable.append((template, method, handler.__name__))
    assert not unreachable, f"routes shadowed by earlier rules: {unreachable}"
    return operations


def spec_operations(spec: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (normalize(path), method): operation
        for path, item in spec["paths"].items()
        for method, operation in item.items()
        if method in METHODS
    }


# ---- tests --------------------------------------------------------------------------------------


def test_spec_is_valid_openapi_3_1(spec: dict[str, Any]) -> None:
    assert spec["openapi"].startswith("3.1")
    validate(spec)


def test_path_templates_of_the_route_forms_in_use() -> None:
    assert path_templates(r"/api/sessions/(?!(?:updates|sync)$)([^/]+)/messages$") == ["/api/sessions/{}/messages"]
    assert path_templates(r"/api/github/repos/([^/]+)/([^/]+)/contents(?:/(.*))?$") == [
        "/api/github/repos/{}/{}/contents/{}",
        "/api/github/repos/{}/{}/contents",
    ]
    assert path_templates(r"/api/user/(a-b|c)$") == ["/api/user/a-b", "/api/user/c"]
    assert path_templates(r"/api/openapi\.json$") == ["/api/openapi.json"]
    with pytest.raises(ValueError):
        path_templates(r"/api/x/\d+$")


async def test_every_route_is_in_the_spec_and_every_spec_path_is_a_route(
    server: TestServer, spec: dict[str, Any]
) -> None:
    app = make_app(server.ctx)
    in_app = set(app_operations(app))
    in_spec = set(spec_operations(spec))
    assert sorted(in_app - in_spec) == [], "routes the spec does not describe"
    assert sorted(in_spec - in_app) == [], "spec operations the app does not serve"


def test_each_path_has_one_handler_whatever_the_module_order(spec: dict[str, Any]) -> None:
    """One resource, one handler class: every method of a path reaches the same class, and the
    order in which the route modules are registered changes nothing."""
    orders = [ROUTE_MODULES, ROUTE_MODULES[::-1]]
    apps = [tornado.web.Application([route for module in order for route in module.ROUTES]) for order in orders]
    for path in spec["paths"]:
        url = sample(path)
        handlers = {routed_handler(app, method, url) for app in apps for method in (*METHODS, "options")}
        assert len(handlers) == 1, f"{path} is served by {sorted(str(h) for h in handlers)}"


async def test_security_matches_the_handlers(server: TestServer, spec: dict[str, Any]) -> None:
    """An operation needs the cookie exactly when its handler method is `@authenticated` or
    `@admin_required`; those document 401, admin routes also 403."""
    app = make_app(server.ctx)
    global_security = spec.get("security", [])
    for (template, method), handler in app_operations(app).items():
        operation = spec_operations(spec)[(template, method)]
        # functools.wraps copies __qualname__; the code object keeps the decorator's wrapper name.
        qualname = getattr(handler, method).__code__.co_qualname
        security = operation.get("security", global_security)
        public = not security or {} in security
        label = f"{method.upper()} {template}"
        if qualname.startswith(("authenticated.", "admin_required.")):
            assert not public, f"{label} needs a login but the spec says it is public"
            assert "401" in operation["responses"], f"{label} does not document 401"
        else:
            assert public, f"{label} is public but the spec requires the cookie"
        if qualname.startswith("admin_required."):
            assert operation["responses"]["403"]["$ref"].endswith("/AdminForbidden"), label


def test_every_error_answer_has_the_error_shape(spec: dict[str, Any]) -> None:
    """4xx and 5xx answers are `{"success": false, "error": "..."}`, except the probes whose
    503 keeps the shape of their 200 (health, readiness)."""
    responses = spec["components"]["responses"]
    own_shape = {("/health", "get"), ("/ready", "get")}
    for (path, method), operation in spec_operations(spec).items():
        for status, response in operation["responses"].items():
            if int(status) < 400 or (path, method) in own_shape:
                continue
            if "$ref" in response:
                response = responses[response["$ref"].rsplit("/", 1)[1]]
            schema = response["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/Error"}, f"{method.upper()} {path} {status}"


def test_streams_are_documented_as_event_streams(spec: dict[str, Any]) -> None:
    streams = {
        "/api/execute-remote",
        "/api/sessions/updates",
        "/api/resume/{}",
        "/api/sessions/{}/events/stream",
        "/api/sessions/{}/stream",
    }
    for (path, method), operation in spec_operations(spec).items():
        if path in streams:
            ok = operation["responses"]["200"]
            ok = spec["components"]["responses"][ok["$ref"].rsplit("/", 1)[1]] if "$ref" in ok else ok
            assert ok["content"] == {"text/event-stream": {"schema": {"type": "string"}}}, (path, method)


async def test_served_json_equals_the_yaml(client: httpx.AsyncClient, spec: dict[str, Any]) -> None:
    response = await client.get("/api/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == spec
