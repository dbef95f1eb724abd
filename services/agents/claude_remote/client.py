"""HTTP client of Anthropic's Claude Remote Sessions API (CONTRACT.md 5.1-5.2, ECOSYSTEM.md 7).

One `httpx.AsyncClient` per process with explicit timeouts and connection limits. Every request
carries the user's OAuth access token and the API's version and beta headers. Every failure is an
`UpstreamError` whose message names the operation and what went wrong ("Failed to get session:
503 ..."), and which says whether trying again may help (5xx, 429, timeouts, network errors and
replies that are not the JSON expected) or not (other 4xx).
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import orjson

from services.agents.backend import UpstreamError, excerpt, retry_after_seconds
from services.metrics import UPSTREAM_CALLS

ANTHROPIC_VERSION = "2023-06-01"
ANTHROPIC_BETA = "ccr-byoc-2025-07-29"
WEB_URL_PREFIX = "https://claude.ai/code/"


def web_url(remote_session_id: str) -> str:
    return WEB_URL_PREFIX + remote_session_id


class ClaudeRemoteClient:
    """The requests of CONTRACT.md 5.2, each a method; `token` is the user's OAuth access token."""

    def __init__(
        self,
        base_url: str,
        timeout_seconds: float,
        organization_uuid: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_seconds = timeout_seconds
        self.organization_uuid = organization_uuid
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=httpx.Timeout(timeout_seconds, connect=min(timeout_seconds, 10.0)),
            # Long polls of many runs must not queue behind each other (ECOSYSTEM.md 1.11).
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
            transport=transport,
            follow_redirects=False,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    def headers(self, token: str) -> dict[str, str]:
        headers = {
            "Authorization": f"Bearer {token}",
            "anthropic-version": ANTHROPIC_VERSION,
            "anthropic-beta": ANTHROPIC_BETA,
            "Content-Type": "application/json",
            "Accept": "application/json",
        }
        if self.organization_uuid:
            headers["x-organization-uuid"] = self.organization_uuid
        return headers

    async def _request(
        self,
        operation: str,
        method: str,
        path: str,
        token: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
    ) -> Any:
        """Send one request; the decoded JSON body of a 2xx, else an UpstreamError (both counted)."""
        try:
            result = await self._send(operation, method, path, token, json, params)
        except UpstreamError as exc:
            UPSTREAM_CALLS.labels("claude", exc.kind).inc()
            raise
        UPSTREAM_CALLS.labels("claude", "ok").inc()
        return result

    async def _send(self, operation: str, method: str, path: str, token: str, json: Any, params: Any) -> Any:
        """`_request`'s work: one HTTP exchange, its failures as UpstreamError."""
        content = orjson.dumps(json) if json is not None else None
        try:
            response = await self._http.request(
                method, path, content=content, params=params, headers=self.headers(token)
            )
        except httpx.TimeoutException:
            raise UpstreamError(operation, f"no answer within {self.timeout_seconds:g} s", kind="timeout") from None
        except httpx.HTTPError as exc:
            raise UpstreamError(operation, f"connection failed ({exc.__class__.__name__})", kind="network") from None
        if not 200 <= response.status_code < 300:
            raise UpstreamError(
                operation,
                f"{response.status_code} {excerpt(response.text)}".rstrip(),
                status=response.status_code,
                retry_after=retry_after_seconds(response.headers.get("retry-after")),
            )
        if not response.content.strip():
            return None
        try:
            return orjson.loads(response.content)
        except orjson.JSONDecodeError:
            raise UpstreamError(
                operation, f"{response.status_code} reply is not JSON: {excerpt(response.text)}", kind="malformed"
            ) from None

    @staticmethod
    def _session_object(operation: str, value: Any) -> dict[str, Any]:
        if not isinstance(value, dict) or not isinstance(value.get("id"), str) or not value["id"]:
            raise UpstreamError(operation, "reply has no session id", kind="malformed")
        return value

    @staticmethod
    def _list_object(operation: str, value: Any) -> dict[str, Any]:
        if (
            not isinstance(value, dict)
            or not isinstance(value.get("data"), list)
            or not all(isinstance(item, dict) for item in value["data"])
        ):
            raise UpstreamError(operation, "reply has no list of items under `data`", kind="malformed")
        return value

    # ---- sessions ------------------------------------------------------------------------------

    async def create_session(
        self,
        token: str,
        *,
        title: str,
        content: str | list[dict[str, Any]],
        environment_id: str,
        repo_url: str,
        repo_full_name: str,
        branch_prefix: str,
        model: str,
        event_uuid: str | None = None,
    ) -> dict[str, Any]:
        """POST /v1/sessions: a new remote session whose first user turn is `content`."""
        body = {
            "title": title,
            "events": [
                {
                    "type": "event",
                    "data": {
                        "uuid": event_uuid or str(uuid.uuid4()),
                        "session_id": "",
                        "type": "user",
                        "parent_tool_use_id": None,
                        "message": {"role": "user", "content": content},
                    },
                }
            ],
            "environment_id": environment_id,
            "session_context": {
                "sources": [{"type": "git_repository", "url": repo_url}],
                "outcomes": [
                    {
                        "type": "git_repository",
                        "git_info": {"type": "github", "repo": repo_full_name, "branches": [branch_prefix]},
                    }
                ],
                "model": model,
            },
        }
        operation = "create session"
        return self._session_object(operation, await self._request(operation, "POST", "/v1/sessions", token, json=body))

    async def get_session(self, token: str, session_id: str) -> dict[str, Any]:
        operation = "get session"
        return self._session_object(
            operation, await self._request(operation, "GET", f"/v1/sessions/{session_id}", token)
        )

    async def list_sessions(self, token: str, limit: int = 20, before: str | None = None) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": limit}
        if before:
            params["before"] = before
        operation = "list sessions"
        return self._list_object(operation, await self._request(operation, "GET", "/v1/sessions", token, params=params))

    async def list_events(
        self, token: str, session_id: str, after_id: str | None = None, limit: int | None = None
    ) -> dict[str, Any]:
        """One page of a session's events, after `after_id` when given (`{data, has_more, last_id}`)."""
        params: dict[str, Any] = {}
        if after_id:
            params["after_id"] = after_id
        if limit:
            params["limit"] = limit
        operation = "get events"
        return self._list_object(
            operation,
            await self._request(operation, "GET", f"/v1/sessions/{session_id}/events", token, params=params or None),
        )

    async def send_message(
        self, token: str, session_id: str, content: str | list[dict[str, Any]], event_uuid: str | None = None
    ) -> None:
        """POST a user turn to an existing session (not wrapped in `{type: event}` as create is)."""
        body = {
            "events": [
                {
                    "type": "user",
                    "uuid": event_uuid or str(uuid.uuid4()),
                    "session_id": session_id,
                    "parent_tool_use_id": None,
                    "message": {"role": "user", "content": content},
                }
            ]
        }
        await self._request("send message", "POST", f"/v1/sessions/{session_id}/events", token, json=body)

    async def interrupt(self, token: str, session_id: str, event_uuid: str | None = None) -> None:
        body = {"events": [{"type": "control_request", "action": "interrupt", "uuid": event_uuid or str(uuid.uuid4())}]}
        await self._request("interrupt session", "POST", f"/v1/sessions/{session_id}/events", token, json=body)

    async def archive(self, token: str, session_id: str) -> dict[str, Any] | None:
        value = await self._request("archive session", "POST", f"/v1/sessions/{session_id}/archive", token, json={})
        return value if isinstance(value, dict) else None

    async def rename(self, token: str, session_id: str, title: str) -> dict[str, Any]:
        operation = "rename session"
        return self._session_object(
            operation,
            await self._request(operation, "PATCH", f"/v1/sessions/{session_id}", token, json={"title": title}),
        )

    async def detect_environment(self, token: str) -> str | None:
        """The environment of the user's most recent remote session, or None (CONTRACT.md 1.2 step 5, when
        CLAUDE_ENVIRONMENT_ID is unset)."""
        try:
            page = await self.list_sessions(token, limit=1)
        except UpstreamError as exc:
            if exc.unauthorized:
                raise
            return None
        for session in page["data"][:1]:
            environment_id = session.get("environment_id")
            if isinstance(environment_id, str) and environment_id:
                return environment_id
        return None
