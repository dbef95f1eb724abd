"""/metrics speaks the Prometheus text format and counts requests."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families


async def scrape(client: httpx.AsyncClient) -> dict[str, float]:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            values[f"{sample.name}{{{labels}}}"] = sample.value
    return values


async def test_requests_are_counted_by_handler_and_status(client: httpx.AsyncClient) -> None:
    key = "webedt_http_requests_total{handler=NotFoundHandler,method=GET,status=404}"
    before = (await scrape(client)).get(key, 0)
    for _ in range(3):
        await client.get("/api/does-not-exist")
    after = await scrape(client)
    assert after[key] == before + 3
    assert after["webedt_db_pool_connections{}"] >= 1
    assert any(name.startswith("webedt_http_request_duration_seconds_bucket") for name in after)


async def test_upstream_calls_and_runs_are_measured(client: httpx.AsyncClient) -> None:
    from tests.helpers import register

    await register(client)
    far = 4_102_444_800_000
    await client.post("/api/user/claude-auth", json={"accessToken": "a", "refreshToken": "b", "expiresAt": far})
    key = "webedt_upstream_calls_total{outcome=network,service=claude}"
    before = (await scrape(client)).get(key, 0)
    # Claude is unreachable in tests (127.0.0.1:9): finding the environment fails at the network.
    response = await client.post(
        "/api/execute-remote", json={"userRequest": "x", "github": {"repoUrl": "https://github.com/o/r"}}
    )
    assert response.status_code == 400
    after = await scrape(client)
    assert after[key] == before + 1
    assert after["webedt_active_runs{}"] == 0
    assert "webedt_sse_open_streams{}" in after and "webedt_hub_subscribers{}" in after
