"""GitHub OAuth: the whole flow against the fake, and every way a callback is refused."""

from __future__ import annotations

import base64
import logging
import time
from urllib.parse import parse_qs, urlparse

import httpx
import orjson
import pytest
from tornado.web import create_signed_value

from services.github.oauth import STATE_TTL_SECONDS, OAuthState, StateError, read_state, sign_state, state_key
from tests.fakes.github import FakeGitHub, connect_github, oauth_round_trip
from tests.helpers import ORIGIN, TestServer, register, start_app, test_env

SETTINGS = f"{ORIGIN}/#/settings"


@pytest.fixture(autouse=True)
def reset_fake(fake: FakeGitHub) -> None:
    fake.authorize_error = None
    fake.authorize_user = None


async def github_columns(app: TestServer, user_id: str) -> tuple[str | None, str | None]:
    row = await app.ctx.pool.fetchrow("SELECT github_id, github_access_token FROM users WHERE id = $1", user_id)
    return row["github_id"], row["github_access_token"]


async def test_whole_flow_stores_the_token_encrypted_and_never_shows_it(
    app: TestServer, fake: FakeGitHub, browser: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    me = await register(browser)
    octo = fake.add_user("octocat")
    fake.authorize_user = octo

    start = await browser.get("/api/github/oauth", headers={"Referer": f"{ORIGIN}/#/repos?tab=1"})
    assert start.status_code == 302
    authorize = urlparse(start.headers["location"])
    assert f"{authorize.scheme}://{authorize.netloc}" == fake.url
    assert authorize.path == "/login/oauth/authorize"
    params = {k: v[0] for k, v in parse_qs(authorize.query).items()}
    assert params["client_id"] == fake.client_id
    assert params["scope"] == "repo workflow user:email"
    assert params["redirect_uri"] == f"{ORIGIN}/api/github/oauth/callback"
    assert params["code_challenge_method"] == "S256"
    assert read_state(app.ctx.config, params["state"]).user_id == me["id"]

    async with httpx.AsyncClient() as github_side:
        approved = await github_side.get(start.headers["location"])
    back = urlparse(approved.headers["location"])
    done = await browser.get(f"{back.path}?{back.query}")
    assert done.status_code == 302
    assert done.headers["location"] == f"{ORIGIN}/#/repos?success=github_connected"

    github_id, stored = await github_columns(app, me["id"])
    token = octo.token
    assert github_id == str(octo.id)
    assert stored and token not in stored
    assert app.ctx.secrets.decrypt_text(stored) == token

    session = await browser.get("/api/auth/session")
    user = session.json()["data"]["user"]
    assert user["githubId"] == str(octo.id)
    assert user["githubConnected"] is True
    assert user["githubAccessToken"] is None
    for response in (start, done, session):
        assert token not in response.text and token not in str(response.headers)
    assert token not in caplog.text

    # The token works: the API routes answer with the person's repositories.
    fake.add_repo("octocat", "hello")
    repos = await browser.get("/api/github/repos")
    assert repos.status_code == 200
    assert [r["full_name"] for r in repos.json()["data"]] == ["octocat/hello"]
    assert token not in repos.text
    assert token not in caplog.text

    disconnected = await browser.post("/api/github/disconnect", headers={"Origin": ORIGIN})
    assert disconnected.json() == {"success": True, "data": {"message": "GitHub disconnected"}}
    assert await github_columns(app, me["id"]) == (None, None)
    after = await browser.get("/api/github/repos")
    assert after.status_code == 400
    assert after.json() == {"success": False, "error": "GitHub not connected"}


async def test_starting_requires_a_login(browser: httpx.AsyncClient) -> None:
    response = await browser.get("/api/github/oauth")
    assert response.status_code == 401
    assert response.json() == {"success": False, "error": "Unauthorized"}


async def test_a_foreign_origin_is_never_a_redirect_target(browser: httpx.AsyncClient, fake: FakeGitHub) -> None:
    await register(browser)
    fake.authorize_user = fake.add_user("traveller")
    for headers in ({"Referer": "https://evil.example/#/settings"}, {"Origin": "https://evil.example"}):
        start = await browser.get("/api/github/oauth", headers=headers)
        params = parse_qs(urlparse(start.headers["location"]).query)
        assert params["redirect_uri"] == [f"{ORIGIN}/api/github/oauth/callback"]

    _, callback = await oauth_round_trip(browser, fake, "https://evil.example/#/steal")
    done = await browser.get(callback)
    assert done.headers["location"] == f"{ORIGIN}/#/settings?success=github_connected"


async def test_a_signed_state_naming_an_origin_no_longer_allowed_returns_to_an_allowed_one(
    app: TestServer, browser: httpx.AsyncClient, fake: FakeGitHub
) -> None:
    me = await register(browser)
    # A real state for this login, then the same fields re-signed with a foreign origin: only
    # the server can sign, so this stands for an origin removed from ALLOWED_ORIGINS since.
    fake.authorize_user = fake.add_user("mover")
    authorize, _ = await oauth_round_trip(browser, fake, SETTINGS)
    state = read_state(app.ctx.config, parse_qs(urlparse(authorize).query)["state"][0])
    forged = OAuthState(me["id"], state.login, int(time.time()), "https://evil.example", "/settings", state.nonce)
    response = await browser.get(
        "/api/github/oauth/callback", params={"code": "whatever", "state": sign_state(app.ctx.config, forged)}
    )
    assert response.status_code == 302
    assert response.headers["location"].startswith(f"{ORIGIN}/#/settings?error=")
    assert await github_columns(app, me["id"]) == (None, None)


async def test_a_tampered_state_stores_nothing(app: TestServer, browser: httpx.AsyncClient, fake: FakeGitHub) -> None:
    me = await register(browser)
    fake.authorize_user = fake.add_user("tamper")
    _, callback = await oauth_round_trip(browser, fake, SETTINGS)
    query = parse_qs(urlparse(callback).query)
    # Tornado's signed value: 2|1:<key version>|<len>:<time>|<len>:<name>|<len>:<base64 payload>|<signature>
    version, key, issued, name, payload, signature = query["state"][0].split("|")
    data = orjson.loads(base64.b64decode(payload.split(":", 1)[1]))
    data["o"] = "https://evil.example"
    changed = base64.b64encode(orjson.dumps(data)).decode()
    forged = "|".join((version, key, issued, name, f"{len(changed)}:{changed}", signature))
    unsigned = query["state"][0][: -len(signature)]
    for state in (forged, unsigned + signature[:-2] + "00", unsigned, "not-a-state", "a.b.c"):
        response = await browser.get("/api/github/oauth/callback", params={"code": query["code"][0], "state": state})
        assert response.status_code == 302
        assert response.headers["location"] == f"{ORIGIN}/#/login?error=invalid_state"
    assert await github_columns(app, me["id"]) == (None, None)


async def test_an_expired_state_stores_nothing(app: TestServer, browser: httpx.AsyncClient, fake: FakeGitHub) -> None:
    me = await register(browser)
    fake.authorize_user = fake.add_user("late")
    authorize, callback = await oauth_round_trip(browser, fake, SETTINGS)
    code = parse_qs(urlparse(callback).query)["code"][0]
    state = read_state(app.ctx.config, parse_qs(urlparse(authorize).query)["state"][0])
    old = OAuthState(me["id"], state.login, int(time.time()) - 601, ORIGIN, "/settings", state.nonce)
    response = await browser.get(
        "/api/github/oauth/callback", params={"code": code, "state": sign_state(app.ctx.config, old)}
    )
    assert response.headers["location"] == f"{ORIGIN}/#/login?error=state_expired"
    assert await github_columns(app, me["id"]) == (None, None)
    # The code was never spent, so it is still there at the fake.
    assert code in fake.codes


async def test_a_foreign_state_stores_nothing_for_anyone(
    app: TestServer, browser: httpx.AsyncClient, fake: FakeGitHub
) -> None:
    victim = await register(browser)
    attacker_github = fake.add_user("attacker")
    fake.authorize_user = attacker_github
    _, callback = await oauth_round_trip(browser, fake, SETTINGS)

    # Another person, with their own login, opens the callback minted for the first one.
    async with httpx.AsyncClient(base_url=app.url) as other:
        someone = await register(other)
        response = await other.get(callback)
        assert response.headers["location"] == f"{ORIGIN}/#/login?error=state_mismatch"
    # Nobody logged in at all (no cookie): refused too.
    async with httpx.AsyncClient(base_url=app.url) as anonymous:
        response = await anonymous.get(callback)
        assert response.headers["location"] == f"{ORIGIN}/#/login?error=login_required"
    # The same person but another login session (logged in again elsewhere): refused.
    async with httpx.AsyncClient(base_url=app.url) as second_device:
        login = await second_device.post(
            "/api/auth/login", json={"email": victim["email"], "password": "correct horse battery"}
        )
        assert login.status_code == 200
        response = await second_device.get(callback)
        assert response.headers["location"] == f"{ORIGIN}/#/login?error=state_mismatch"

    assert await github_columns(app, victim["id"]) == (None, None)
    assert await github_columns(app, someone["id"]) == (None, None)


async def test_missing_parameters_and_a_declined_authorization(
    app: TestServer, browser: httpx.AsyncClient, fake: FakeGitHub
) -> None:
    me = await register(browser)
    response = await browser.get("/api/github/oauth/callback")
    assert response.headers["location"] == f"{ORIGIN}/#/login?error=missing_params"

    fake.authorize_error = "access_denied"
    _, callback = await oauth_round_trip(browser, fake, f"{ORIGIN}/#/settings")
    response = await browser.get(callback)
    assert response.headers["location"] == f"{ORIGIN}/#/settings?error=access_denied"
    assert await github_columns(app, me["id"]) == (None, None)


async def test_a_refused_code_exchange_stores_nothing(
    app: TestServer, browser: httpx.AsyncClient, fake: FakeGitHub
) -> None:
    me = await register(browser)
    fake.authorize_user = fake.add_user("spent")
    _, callback = await oauth_round_trip(browser, fake, SETTINGS)
    query = parse_qs(urlparse(callback).query)
    fake.codes.pop(query["code"][0])  # GitHub no longer knows the code (used or expired)
    response = await browser.get(callback)
    assert response.headers["location"] == f"{ORIGIN}/#/settings?error=bad_verification_code"
    assert await github_columns(app, me["id"]) == (None, None)


async def test_a_github_account_linked_elsewhere_is_not_taken_over(
    app: TestServer, browser: httpx.AsyncClient, fake: FakeGitHub
) -> None:
    first = await register(browser)
    shared = await connect_github(browser, fake, "shared-login")
    async with httpx.AsyncClient(base_url=app.url) as other:
        second = await register(other)
        fake.authorize_user = shared
        _, callback = await oauth_round_trip(other, fake, SETTINGS)
        response = await other.get(callback)
        assert response.headers["location"] == f"{ORIGIN}/#/settings?error=github_account_in_use"
    assert (await github_columns(app, first["id"]))[0] == str(shared.id)
    assert await github_columns(app, second["id"]) == (None, None)


async def test_without_a_configured_oauth_app_the_person_is_sent_back_with_a_flag(database_url: str) -> None:
    async with (
        start_app(test_env(database_url)) as bare,
        httpx.AsyncClient(base_url=bare.url) as http,
    ):
        await register(http)
        response = await http.get("/api/github/oauth", headers={"Referer": SETTINGS})
        assert response.status_code == 302
        assert response.headers["location"] == f"{ORIGIN}/#/settings?error=github_not_configured"


async def test_a_used_state_is_refused_the_second_time(
    app: TestServer, fake: FakeGitHub, browser: httpx.AsyncClient
) -> None:
    me = await register(browser)
    first, second = fake.add_user("first-account"), fake.add_user("second-account")
    fake.authorize_user = first
    authorize, callback = await oauth_round_trip(browser, fake, SETTINGS)
    done = await browser.get(callback)
    assert done.headers["location"] == f"{ORIGIN}/#/settings?success=github_connected"
    # The same state again, with a fresh code for another GitHub account (issue 15.5).
    fake.authorize_user = second
    async with httpx.AsyncClient() as github_side:
        approved = await github_side.get(authorize)
    back = urlparse(approved.headers["location"])
    assert parse_qs(back.query)["code"] != parse_qs(urlparse(callback).query)["code"]
    replay = await browser.get(f"{back.path}?{back.query}")
    assert replay.status_code == 302
    assert replay.headers["location"] == f"{ORIGIN}/#/settings?error=state_used"
    github_id, _ = await github_columns(app, me["id"])
    assert github_id == str(first.id)
    # A new state from the same login session still works.
    await connect_github(browser, fake, "second-account")
    assert (await github_columns(app, me["id"]))[0] == str(second.id)


def test_the_state_is_a_tornado_signed_value_that_expires(app: TestServer) -> None:
    """Signed and aged by Tornado (create_signed_value / decode_signed_value), not by hand."""
    config = app.ctx.config
    fields = {"u": "someone", "l": "login", "t": 0, "o": ORIGIN, "p": "/settings", "n": "nonce"}
    now = time.time()

    def signed(age: float, name: str = "github_oauth_state", version: int = 2) -> str:
        payload = orjson.dumps({**fields, "t": int(now - age)})
        return create_signed_value(state_key(config), name, payload, version, lambda: now - age).decode()

    assert read_state(config, signed(60), now).user_id == "someone"
    with pytest.raises(StateError) as late:
        read_state(config, signed(STATE_TTL_SECONDS + 1), now)
    assert late.value.code == "state_expired" and late.value.state is not None
    # Another signed value's name; Tornado's older format (no delimiters in what is signed).
    for forged in (signed(60, "login_device"), signed(60, version=1)):
        with pytest.raises(StateError) as refused:
            read_state(config, forged, now)
        assert refused.value.code == "invalid_state"
