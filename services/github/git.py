"""git through `asyncio.create_subprocess_exec`, with the GitHub token passed per command.

The token never goes into a URL, `.git/config`, the command line or a log line. It reaches git
as `http.<origin>/.extraheader = AUTHORIZATION: basic base64("x-access-token:<token>")` (the
way actions/checkout authenticates, ECOSYSTEM 6) through git's GIT_CONFIG_COUNT/KEY/VALUE
environment variables: unlike `-c` arguments, a process environment is not readable by other
users through `ps`/`/proc/<pid>/cmdline`, and the header applies only to the remote's origin.

Every command runs with a clean environment: no system or global git config, no credential
helper, no terminal prompt (GIT_TERMINAL_PROMPT=0), no inherited GIT_TRACE* variables, and a
time limit after which the process is killed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlparse

log = logging.getLogger(__name__)

LOCAL_TIMEOUT_SECONDS = 60.0
NETWORK_TIMEOUT_SECONDS = 300.0
MAX_OUTPUT_CHARS = 2000
COMMITTER_NAME = "WebEDT"
COMMITTER_EMAIL = "noreply@webedt.local"


class GitError(Exception):
    """A git command failed; `stderr` is git's own message (it never contains the token)."""

    def __init__(self, command: str, returncode: int | None, stderr: str) -> None:
        super().__init__(f"git {command} failed ({returncode}): {stderr}")
        self.command = command
        self.returncode = returncode
        self.stderr = stderr


def auth_header(token: str) -> str:
    encoded = base64.b64encode(f"x-access-token:{token}".encode()).decode()
    return f"AUTHORIZATION: basic {encoded}"


def _origin(remote_url: str) -> str | None:
    parsed = urlparse(remote_url)
    if parsed.scheme in ("http", "https") and parsed.netloc:
        return f"{parsed.scheme}://{parsed.netloc}/"
    return None


def git_env(token: str | None = None, remote_url: str | None = None) -> dict[str, str]:
    """The environment of one git command (the token, if any, scoped to the remote's origin)."""
    config = [("credential.helper", ""), ("core.askPass", ""), ("init.defaultBranch", "main")]
    origin = _origin(remote_url) if remote_url else None
    if token and origin:
        config.append((f"http.{origin}.extraheader", auth_header(token)))
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
        "LANG": "C",
        "LC_ALL": "C",
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_ASKPASS": "",
        "SSH_ASKPASS": "",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_AUTHOR_NAME": COMMITTER_NAME,
        "GIT_AUTHOR_EMAIL": COMMITTER_EMAIL,
        "GIT_COMMITTER_NAME": COMMITTER_NAME,
        "GIT_COMMITTER_EMAIL": COMMITTER_EMAIL,
        "GIT_CONFIG_COUNT": str(len(config)),
    }
    for index, (key, value) in enumerate(config):
        env[f"GIT_CONFIG_KEY_{index}"] = key
        env[f"GIT_CONFIG_VALUE_{index}"] = value
    return env


async def run(
    args: Sequence[str],
    cwd: Path | None = None,
    token: str | None = None,
    remote_url: str | None = None,
    timeout: float = LOCAL_TIMEOUT_SECONDS,
) -> str:
    """Run `git <args>`; its stdout, or GitError with its stderr."""
    command = args[0] if args else ""
    process = await asyncio.create_subprocess_exec(
        "git",
        *args,
        cwd=str(cwd) if cwd else None,
        env=git_env(token, remote_url),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
    except (TimeoutError, asyncio.CancelledError) as exc:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        if isinstance(exc, TimeoutError):
            log.warning("git %s timed out after %.0f s", command, timeout)
            raise GitError(command, None, f"timed out after {timeout:.0f} seconds") from None
        raise
    text = stderr.decode(errors="replace").strip()[-MAX_OUTPUT_CHARS:]
    if process.returncode != 0:
        log.info("git %s exited with %s: %s", command, process.returncode, text)
        raise GitError(command, process.returncode, text)
    return stdout.decode(errors="replace")


async def clone(url: str, target: Path, token: str | None) -> None:
    """Clone `url` into `target` (which must not exist yet); no checkout, the caller picks a branch."""
    await run(
        ["clone", "--no-checkout", "--origin", "origin", "--", url, str(target)],
        token=token,
        remote_url=url,
        timeout=NETWORK_TIMEOUT_SECONDS,
    )


async def fetch(path: Path, url: str, token: str | None) -> None:
    await run(["fetch", "--prune", "origin"], cwd=path, token=token, remote_url=url, timeout=NETWORK_TIMEOUT_SECONDS)


async def remote_url(path: Path) -> str | None:
    try:
        return (await run(["remote", "get-url", "origin"], cwd=path)).strip()
    except GitError:
        return None


async def has_remote_branch(path: Path, branch: str) -> bool:
    try:
        await run(["rev-parse", "--verify", "--quiet", f"refs/remotes/origin/{branch}^{{commit}}"], cwd=path)
    except GitError:
        return False
    return True


async def checkout_branch(path: Path, branch: str, start_point: str) -> None:
    """Create (or reset) local `branch` at `start_point` and check it out."""
    await run(["checkout", "--quiet", "-B", branch, start_point, "--"], cwd=path)


async def has_changes(path: Path) -> bool:
    return bool((await run(["status", "--porcelain", "--untracked-files=all"], cwd=path)).strip())


async def push(path: Path, url: str, branch: str, token: str | None) -> None:
    """Push local `branch` to the same name on origin (no force) and track it."""
    await run(
        ["push", "--set-upstream", "origin", f"refs/heads/{branch}:refs/heads/{branch}"],
        cwd=path,
        token=token,
        remote_url=url,
        timeout=NETWORK_TIMEOUT_SECONDS,
    )


async def head_sha(path: Path, ref: str = "HEAD") -> str:
    return (await run(["rev-parse", ref], cwd=path)).strip()
