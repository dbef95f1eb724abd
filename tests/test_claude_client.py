"""The Claude Remote client and provider against the fake server, and local titles (CONTRACT.md 5)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from services.agents import titles
from services.agents.backend import CreateRequest, UpstreamError, format_cost
from services.agents.claude_remote.client import ClaudeRemoteClient
from services.agents.claude_remote.provider import ClaudeRemoteProvider
from tests.fakes.claude import FakeClaude, running_fake_claude


@pytest.fixture
async def fake() -> AsyncIterator[FakeClaude]:
    async with running_fake_claude() as running:
        yield running


@pytest.fixture
async def client(fake: FakeClaude) -> AsyncIterator[ClaudeRemoteClient]:
    claude = ClaudeRemoteClient(fake.url, timeout_seconds=0.5)
    yield claude
    await claude.aclose()


def provider_for(client: ClaudeRemoteClient) -> ClaudeRemoteProvider:
    provider = ClaudeRemoteProvider.__new__(ClaudeRemoteProvider)
    provider.client = client
    return provider


def create_request(message_uuid: str | None = None) -> CreateRequest:
    return CreateRequest(
        title="Fix Login Bug",
        content="fix the login bug",
        environment_id="env_1",
        repo_url="https://github.com/octo/widgets",
        repo_full_name="octo/widgets",
        branch_prefix="claude/fix-login-bug",
        model="claude-test",
        message_uuid=message_uuid or str(uuid.uuid4()),
    )


async def test_every_request_carries_the_headers(fake: FakeClaude, client: ClaudeRemoteClient) -> None:
    token, _ = fake.issue_tokens()
    provider = provider_for(client)
    remote = await provider.create(token, create_request())
    await provider.get(token, remote.id)
    await provider.events_after(token, remote.id, None)
    await provider.send(token, remote.id, "more", str(uuid.uuid4()))
    await provider.interrupt(token, remote.id)
    await provider.rename(token, remote.id, "Renamed")
    await provider.archive(token, remote.id)
    assert await client.detect_environment(token) == "env_1"
    assert len(fake.requests) == 8
    for request in fake.requests:
        assert request["headers"]["authorization"] == f"Bearer {token}"
        assert request["headers"]["anthropic-version"] == "2023-06-01"
        assert request["headers"]["anthropic-beta"] == "ccr-byoc-2025-07-29"
    assert fake.sessions[remote.id].archived and fake.sessions[remote.id].title == "Renamed"
    assert remote.web_url == f"https://claude.ai/code/{remote.id}"


async def test_errors_say_what_failed(fake: FakeClaude, client: ClaudeRemoteClient) -> None:
    token, _ = fake.issue_tokens()
    with pytest.raises(UpstreamError) as missing:
        await client.get_session(token, "session_missing")
    assert missing.value.message.startswith("Failed to get session: 404 ")
    assert missing.value.not_found and not missing.value.retryable

    fake.fail(status=502)
    with pytest.raises(UpstreamError) as outage:
        await client.list_sessions(token)
    assert outage.value.message.startswith("Failed to list sessions: 502 ") and outage.value.retryable

    fake.fail("malformed")
    with pytest.raises(UpstreamError) as garbage:
        await client.list_sessions(token)
    assert garbage.value.kind == "malformed" and garbage.value.retryable
    assert garbage.value.message.startswith("Failed to list sessions: 200 reply is not JSON")

    fake.fail("slow", seconds=1.0)
    with pytest.raises(UpstreamError) as slow:
        await client.list_sessions(token)
    assert slow.value.kind == "timeout" and slow.value.retryable
    assert slow.value.message == "Failed to list sessions: no answer within 0.5 s"

    with pytest.raises(UpstreamError) as refused:
        await client.list_sessions("not-a-token")
    assert refused.value.unauthorized and refused.value.status == 401
    assert "not-a-token" not in refused.value.message

    unreachable = ClaudeRemoteClient("http://127.0.0.1:9", timeout_seconds=0.5)
    with pytest.raises(UpstreamError) as down:
        await unreachable.list_sessions(token)
    await unreachable.aclose()
    assert down.value.kind == "network" and down.value.retryable


async def test_events_are_paged_and_read_incrementally(fake: FakeClaude, client: ClaudeRemoteClient) -> None:
    token, _ = fake.issue_tokens()
    provider = provider_for(client)
    fake.page_size = 2
    fake.events_per_read = 10
    remote = await provider.create(token, create_request())
    batch = await provider.events_after(token, remote.id, None)
    every = [e["uuid"] for e in fake.sessions[remote.id].events]
    assert [e["uuid"] for e in batch.events] == every and batch.complete
    assert batch.cursor == every[-1]
    # The next read asks only for what follows the cursor.
    await provider.send(token, remote.id, "again", str(uuid.uuid4()))
    fake.requests.clear()
    more = await provider.events_after(token, remote.id, batch.cursor)
    assert [e["uuid"] for e in more.events] == [e["uuid"] for e in fake.sessions[remote.id].events][len(every) :]
    assert fake.requests[0]["query"] == {"after_id": batch.cursor}
    # An upstream that ignores the cursor still ends the paging (the run de-duplicates by uuid).
    fake.ignore_after_id = True
    again = await provider.events_after(token, remote.id, more.cursor)
    assert again.complete and len(again.events) <= 2 * 20


async def test_a_lost_creation_is_found_by_its_first_event(fake: FakeClaude, client: ClaudeRemoteClient) -> None:
    token, _ = fake.issue_tokens()
    provider = provider_for(client)
    request = create_request()
    assert await provider.find_created(token, request) is None
    fake.fail("slow", seconds=0.8)
    with pytest.raises(UpstreamError):
        await provider.create(token, request)
    found = None
    for _ in range(50):
        found = await provider.find_created(token, request)
        if found is not None:
            break
        await asyncio.sleep(0.05)
    assert found is not None and found.id == fake.only_session().id
    assert await provider.find_created(token, create_request()) is None  # another prompt's uuid


def test_branch_detection() -> None:
    provider = provider_for(ClaudeRemoteClient.__new__(ClaudeRemoteClient))
    assert provider.branch({"tool_use_result": {"stdout": "pushed to claude/fix-it-AbC_1 ok"}}) == "claude/fix-it-AbC_1"
    assert provider.branch({"data": {"extra": {"args": ["Created", "branch", "`claude/setup-x`", "for", "you"]}}}) == (
        "claude/setup-x"
    )
    assert provider.branch({"tool_use_result": {"stdout": "nothing here"}}) is None
    assert provider.branch({"type": "assistant", "data": "x"}) is None


def test_cost_format() -> None:
    assert format_cost(0.0125) == "0.0125"
    assert format_cost(2.0) == "2"
    assert format_cost(None) is None and format_cost(True) is None and format_cost(float("nan")) is None


@pytest.mark.parametrize(
    ("prompt", "title", "branch"),
    [
        (
            "Please add a dark mode toggle to the settings page",
            "Add Dark Mode Toggle Settings",
            "claude/add-dark-mode-toggle",
        ),
        ("Fix it", "Fix It", "claude/fix-it"),
        ("Can you help me?", "Can You Help Me", "claude/can-you-help-me"),
        ("!!!", "New Session", "claude/new-session"),
        ("", "New Session", "claude/new-session"),
        (
            "Refactor src/utils.py: extract parse_date() into dates.py",
            "Refactor Src Utils Extract Parse",
            "claude/refactor-src-utils-extract",
        ),
    ],
)
def test_local_titles_and_branches(prompt: str, title: str, branch: str) -> None:
    assert titles.derive(prompt) == (title, branch)


def test_titles_from_blocks_and_long_words() -> None:
    assert titles.derive([{"type": "text", "text": "Optimise database indexes"}, {"type": "image"}])[0] == (
        "Optimise Database Indexes"
    )
    assert titles.branch_from_title("x" * 60) == "claude/" + "x" * 40
