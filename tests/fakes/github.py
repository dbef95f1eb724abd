"""A fake GitHub: a real Tornado HTTP server on 127.0.0.1 speaking enough of GitHub's REST API
(the JSON PyGithub expects, with Link-header pagination) and the two OAuth web-flow endpoints.

One server answers both: the REST API under `/api/v3` (as GitHub Enterprise does, so `next`
links carry the base path PyGithub keeps) and `/login/oauth/authorize` + `/login/oauth/access_token`
at the root. Repositories live in memory as a tiny object store (blobs, flat trees, commits,
refs), so branches, contents, Git Data commits, merges and pull requests behave like GitHub's.
A repository's `clone_url` may point at a real bare repository for git tests; the in-memory
API state and that bare repository are independent.

Knobs for failures: `rate_limit_reset` (every API call answers 403 "API rate limit exceeded"),
`fail_status` (every API call answers that status), `malformed` (every API call answers 200 with
JSON that has none of the documented fields), revoked tokens (401 "Bad credentials"),
`authorize_error` (the person declines), `mergeable_unknown_polls` (a PR's `mergeable` is null
for that many reads).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import itertools
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlparse, urlunparse

import orjson
import tornado.escape
import tornado.httpserver
import tornado.netutil
import tornado.web

from tests.fakes import LoopbackServer

API_PREFIX = "/api/v3"
TEXT_MODE = "100644"


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def blob_sha(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def tree_sha(entries: dict[str, tuple[str, str]]) -> str:
    raw = orjson.dumps(sorted(entries.items()))
    return hashlib.sha1(b"tree " + raw).hexdigest()


class FakeError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


@dataclass
class FakeUser:
    id: int
    login: str
    token: str


@dataclass
class FakeCommit:
    sha: str
    tree: str
    parents: list[str]
    message: str
    author: str
    date: str


@dataclass
class FakePull:
    number: int
    title: str
    body: str
    head: str
    base: str
    state: str = "open"
    merged: bool = False
    merge_commit_sha: str | None = None
    created_at: str = field(default_factory=now_iso)
    updated_at: str = field(default_factory=now_iso)
    reads: int = 0


@dataclass
class FakeRepo:
    id: int
    owner: str
    name: str
    private: bool
    description: str | None
    default_branch: str
    clone_url: str
    collaborators: set[str] = field(default_factory=set)
    blobs: dict[str, bytes] = field(default_factory=dict)
    # Flat trees: path -> (blob sha, mode). Subdirectories are implied by the paths.
    trees: dict[str, dict[str, tuple[str, str]]] = field(default_factory=dict)
    commits: dict[str, FakeCommit] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)
    pulls: list[FakePull] = field(default_factory=list)
    protected: set[str] = field(default_factory=set)
    updated_at: str = field(default_factory=now_iso)

    @property
    def full_name(self) -> str:
        return f"{self.owner}/{self.name}"

    # ---- object store ---------------------------------------------------------------------

    def put_blob(self, data: bytes) -> str:
        sha = blob_sha(data)
        self.blobs[sha] = data
        return sha

    def put_tree(self, entries: dict[str, tuple[str, str]]) -> str:
        sha = tree_sha(entries)
        self.trees[sha] = dict(entries)
        # Register every subdirectory as its own tree, so tree shas of folders resolve.
        for directory in {p.rsplit("/", 1)[0] for p in entries if "/" in p}:
            parts = directory.split("/")
            for depth in range(1, len(parts) + 1):
                prefix = "/".join(parts[:depth]) + "/"
                sub = {p[len(prefix) :]: v for p, v in entries.items() if p.startswith(prefix)}
                self.trees.setdefault(tree_sha(sub), sub)
        return sha

    def put_commit(self, tree: str, parents: list[str], message: str, author: str = "fake") -> str:
        seed = orjson.dumps([tree, parents, message, author, secrets.token_hex(4)])
        sha = hashlib.sha1(seed).hexdigest()
        self.commits[sha] = FakeCommit(sha, tree, parents, message, author, now_iso())
        self.updated_at = now_iso()
        return sha

    def commit_files(self, branch: str, files: dict[str, bytes | None], message: str, author: str = "fake") -> str:
        """A commit on `branch` changing `files` (None deletes); returns its sha."""
        head = self.refs.get(branch)
        entries = dict(self.trees[self.commits[head].tree]) if head else {}
        for path, data in files.items():
            if data is None:
                entries.pop(path, None)
            else:
                entries[path] = (self.put_blob(data), TEXT_MODE)
        sha = self.put_commit(self.put_tree(entries), [head] if head else [], message, author)
        self.refs[branch] = sha
        return sha

    def resolve(self, ref: str) -> str | None:
        """A commit sha from a branch name or a sha."""
        if ref in self.refs:
            return self.refs[ref]
        if ref.startswith("heads/") and ref[6:] in self.refs:
            return self.refs[ref[6:]]
        return ref if ref in self.commits else None

    def files_at(self, ref: str) -> dict[str, tuple[str, str]] | None:
        sha = self.resolve(ref)
        return None if sha is None else self.trees[self.commits[sha].tree]

    def read(self, ref: str, path: str) -> bytes | None:
        files = self.files_at(ref)
        if files is None or path not in files:
            return None
        return self.blobs[files[path][0]]

    def ancestors(self, sha: str) -> list[str]:
        """`sha` and every commit it descends from, nearest first."""
        seen: list[str] = []
        queue = [sha]
        while queue:
            current = queue.pop(0)
            if current in seen:
                continue
            seen.append(current)
            queue.extend(self.commits[current].parents)
        return seen

    def merge_base(self, a: str, b: str) -> str | None:
        ours = set(self.ancestors(a))
        return next((c for c in self.ancestors(b) if c in ours), None)

    def three_way(self, ours: str, theirs: str) -> tuple[dict[str, tuple[str, str]], list[str]]:
        base_sha = self.merge_base(ours, theirs)
        base = self.trees[self.commits[base_sha].tree] if base_sha else {}
        mine, other = self.trees[self.commits[ours].tree], self.trees[self.commits[theirs].tree]
        merged: dict[str, tuple[str, str]] = {}
        conflicts: list[str] = []
        for path in sorted(set(base) | set(mine) | set(other)):
            b, m, o = base.get(path), mine.get(path), other.get(path)
            if m == o or o == b:
                value = m
            elif m == b:
                value = o
            else:
                conflicts.append(path)
                value = m
            if value is not None:
                merged[path] = value
        return merged, conflicts


class FakeGitHub(LoopbackServer):
    """The fake's state and its Tornado server."""

    def __init__(self, client_id: str = "fake-client-id", client_secret: str = "fake-client-secret") -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        super().__init__()
        self.users: dict[str, FakeUser] = {}
        self.tokens: dict[str, FakeUser] = {}
        self.repos: dict[tuple[str, str], FakeRepo] = {}
        self.codes: dict[str, dict[str, Any]] = {}
        self.requests: list[dict[str, Any]] = []
        self.authorize_user: FakeUser | None = None
        self.authorize_error: str | None = None
        self.rate_limit_reset: int | None = None
        self.fail_status: int | None = None
        self.malformed = False
        self.mergeable_unknown_polls = 0
        # Ids differ between fakes: test modules share one database, where github_id is unique.
        self._ids = itertools.count(secrets.randbelow(10**9) * 1000 + 1)
        self.routes: list[tuple[str, re.Pattern[str], Callable[..., Any]]] = []
        self._build_routes()

    @property
    def api_url(self) -> str:
        return self.url + API_PREFIX

    # ---- arranging state -------------------------------------------------------------------

    def add_user(self, login: str, token: str | None = None) -> FakeUser:
        user = FakeUser(next(self._ids), login, token or f"gho_{secrets.token_hex(16)}")
        self.users[login] = user
        self.tokens[user.token] = user
        return user

    def revoke(self, token: str) -> None:
        self.tokens.pop(token, None)

    def add_repo(
        self,
        owner: str,
        name: str,
        files: dict[str, str | bytes] | None = None,
        default_branch: str = "main",
        private: bool = False,
        clone_url: str | None = None,
        description: str | None = None,
    ) -> FakeRepo:
        repo = FakeRepo(
            id=next(self._ids),
            owner=owner,
            name=name,
            private=private,
            description=description,
            default_branch=default_branch,
            clone_url=clone_url or f"https://github.com/{owner}/{name}.git",
        )
        initial = {p: (c.encode() if isinstance(c, str) else c) for p, c in (files or {"README.md": "hello\n"}).items()}
        repo.commit_files(default_branch, dict(initial), "Initial commit")
        self.repos[(owner, name)] = repo
        return repo

    # ---- server ----------------------------------------------------------------------------

    async def start(self) -> None:
        await self.serve(FakeHandler)

    # ---- routing -------------------------------------------------------------------------------

    def _build_routes(self) -> None:
        repo = r"/repos/(?P<owner>[^/]+)/(?P<repo>[^/]+)"
        table: list[tuple[str, str, Callable[..., Any]]] = [
            ("GET", r"/user", self.get_user),
            ("GET", r"/user/repos", self.list_user_repos),
            ("GET", repo, self.get_repo),
            ("GET", repo + r"/branches", self.list_branches),
            ("GET", repo + r"/branches/(?P<branch>.+)", self.get_branch),
            ("GET", repo + r"/git/ref/(?P<ref>.+)", self.get_ref),
            ("POST", repo + r"/git/refs", self.create_ref),
            ("PATCH", repo + r"/git/refs/(?P<ref>.+)", self.update_ref),
            ("DELETE", repo + r"/git/refs/(?P<ref>.+)", self.delete_ref),
            ("GET", repo + r"/git/trees/(?P<sha>[^/]+)", self.get_tree),
            ("POST", repo + r"/git/trees", self.create_tree),
            ("POST", repo + r"/git/blobs", self.create_blob),
            ("GET", repo + r"/git/commits/(?P<sha>[^/]+)", self.get_commit),
            ("POST", repo + r"/git/commits", self.create_commit),
            ("GET", repo + r"/contents/?(?P<path>.*)", self.get_contents),
            ("PUT", repo + r"/contents/(?P<path>.+)", self.put_contents),
            ("DELETE", repo + r"/contents/(?P<path>.+)", self.delete_contents),
            ("GET", repo + r"/pulls", self.list_pulls),
            ("POST", repo + r"/pulls", self.create_pull),
            ("GET", repo + r"/pulls/(?P<number>[0-9]+)", self.get_pull),
            ("PUT", repo + r"/pulls/(?P<number>[0-9]+)/merge", self.merge_pull),
            ("POST", repo + r"/merges", self.merge_branches),
            ("GET", repo + r"/compare/(?P<base>.+)\.\.\.(?P<head>.+)", self.compare),
        ]
        self.routes = [(method, re.compile(pattern + "$"), fn) for method, pattern, fn in table]

    # ---- JSON shapes ---------------------------------------------------------------------------

    def api(self, path: str) -> str:
        return f"{self.api_url}{path}"

    def user_json(self, user: FakeUser) -> dict[str, Any]:
        return {
            "login": user.login,
            "id": user.id,
            "type": "User",
            "url": self.api(f"/users/{user.login}"),
            "html_url": f"https://github.com/{user.login}",
            "name": user.login.title(),
            "email": f"{user.login}@users.noreply.github.com",
        }

    def repo_json(self, repo: FakeRepo) -> dict[str, Any]:
        owner = self.users.get(repo.owner)
        return {
            "id": repo.id,
            "node_id": f"R_{repo.id}",
            "name": repo.name,
            "full_name": repo.full_name,
            "owner": {"login": repo.owner, "id": owner.id if owner else 1, "type": "User"},
            "private": repo.private,
            "description": repo.description,
            "html_url": f"https://github.com/{repo.full_name}",
            "clone_url": repo.clone_url,
            "url": self.api(f"/repos/{repo.full_name}"),
            "default_branch": repo.default_branch,
            "updated_at": repo.updated_at,
            "pushed_at": repo.updated_at,
        }

    def commit_json(self, repo: FakeRepo, sha: str) -> dict[str, Any]:
        c = repo.commits[sha]
        return {
            "sha": sha,
            "node_id": f"C_{sha[:8]}",
            "url": self.api(f"/repos/{repo.full_name}/git/commits/{sha}"),
            "html_url": f"https://github.com/{repo.full_name}/commit/{sha}",
            "message": c.message,
            "author": {"name": c.author, "email": f"{c.author}@example.com", "date": c.date},
            "committer": {"name": c.author, "email": f"{c.author}@example.com", "date": c.date},
            "tree": {"sha": c.tree, "url": self.api(f"/repos/{repo.full_name}/git/trees/{c.tree}")},
            "parents": [{"sha": p, "url": self.api(f"/repos/{repo.full_name}/git/commits/{p}")} for p in c.parents],
        }

    def rest_commit_json(self, repo: FakeRepo, sha: str) -> dict[str, Any]:
        """The /commits shape (used by branches, compare, merges)."""
        c = repo.commits[sha]
        return {
            "sha": sha,
            "url": self.api(f"/repos/{repo.full_name}/commits/{sha}"),
            "html_url": f"https://github.com/{repo.full_name}/commit/{sha}",
            "commit": self.commit_json(repo, sha),
            "author": {"login": c.author, "id": 1, "type": "User"},
            "committer": {"login": c.author, "id": 1, "type": "User"},
            "parents": [{"sha": p, "url": self.api(f"/repos/{repo.full_name}/commits/{p}")} for p in c.parents],
        }

    def branch_json(self, repo: FakeRepo, name: str, full: bool) -> dict[str, Any]:
        sha = repo.refs[name]
        commit: dict[str, Any] = {"sha": sha, "url": self.api(f"/repos/{repo.full_name}/commits/{sha}")}
        if full:
            commit = self.rest_commit_json(repo, sha)
        return {"name": name, "commit": commit, "protected": name in repo.protected}

    def ref_json(self, repo: FakeRepo, name: str) -> dict[str, Any]:
        sha = repo.refs[name]
        return {
            "ref": f"refs/heads/{name}",
            "node_id": f"REF_{name}",
            "url": self.api(f"/repos/{repo.full_name}/git/refs/heads/{name}"),
            "object": {"sha": sha, "type": "commit", "url": self.api(f"/repos/{repo.full_name}/git/commits/{sha}")},
        }

    def tree_json(self, repo: FakeRepo, sha: str, recursive: bool) -> dict[str, Any]:
        flat = repo.trees[sha]
        items: dict[str, dict[str, Any]] = {}
        for path, (blob, mode) in sorted(flat.items()):
            parts = path.split("/")
            for depth in range(1, len(parts)):
                directory = "/".join(parts[:depth])
                if (recursive or depth == 1) and directory not in items:
                    prefix = directory + "/"
                    sub = {p[len(prefix) :]: v for p, v in flat.items() if p.startswith(prefix)}
                    items[directory] = {"path": directory, "mode": "040000", "type": "tree", "sha": tree_sha(sub)}
            if recursive or len(parts) == 1:
                items[path] = {
                    "path": path,
                    "mode": mode,
                    "type": "blob",
                    "sha": blob,
                    "size": len(repo.blobs[blob]),
                    "url": self.api(f"/repos/{repo.full_name}/git/blobs/{blob}"),
                }
        return {
            "sha": sha,
            "url": self.api(f"/repos/{repo.full_name}/git/trees/{sha}"),
            "tree": [items[k] for k in sorted(items)],
            "truncated": False,
        }

    def content_json(self, repo: FakeRepo, path: str, blob: str, with_content: bool) -> dict[str, Any]:
        data = repo.blobs[blob]
        body: dict[str, Any] = {
            "type": "file",
            "name": path.rsplit("/", 1)[-1],
            "path": path,
            "sha": blob,
            "size": len(data),
            "url": self.api(f"/repos/{repo.full_name}/contents/{path}"),
            "html_url": f"https://github.com/{repo.full_name}/blob/main/{path}",
            "git_url": self.api(f"/repos/{repo.full_name}/git/blobs/{blob}"),
            "download_url": f"https://raw.githubusercontent.com/{repo.full_name}/main/{path}",
        }
        if with_content:
            encoded = base64.b64encode(data).decode()
            # GitHub wraps base64 content at 60 characters.
            body["content"] = "\n".join(encoded[i : i + 60] for i in range(0, len(encoded), 60)) + "\n"
            body["encoding"] = "base64"
        return body

    def pull_json(self, repo: FakeRepo, pull: FakePull, full: bool) -> dict[str, Any]:
        head_sha = repo.refs.get(pull.head, pull.merge_commit_sha or "")
        base_sha = repo.refs.get(pull.base, "")
        body: dict[str, Any] = {
            "id": pull.number + 5000,
            "number": pull.number,
            "title": pull.title,
            "body": pull.body,
            "state": pull.state,
            "url": self.api(f"/repos/{repo.full_name}/pulls/{pull.number}"),
            "html_url": f"https://github.com/{repo.full_name}/pull/{pull.number}",
            "head": {"ref": pull.head, "sha": head_sha, "label": f"{repo.owner}:{pull.head}"},
            "base": {"ref": pull.base, "sha": base_sha, "label": f"{repo.owner}:{pull.base}"},
            "created_at": pull.created_at,
            "updated_at": pull.updated_at,
            "merge_commit_sha": pull.merge_commit_sha,
        }
        if full:
            body["merged"] = pull.merged
            if pull.merged or pull.state != "open" or pull.reads <= self.mergeable_unknown_polls:
                body["mergeable"] = None
            else:
                body["mergeable"] = not self._pull_conflicts(repo, pull)
            body["mergeable_state"] = "unknown" if body["mergeable"] is None else "clean"
        return body

    def _pull_conflicts(self, repo: FakeRepo, pull: FakePull) -> list[str]:
        if pull.head not in repo.refs or pull.base not in repo.refs:
            return ["<missing branch>"]
        return repo.three_way(repo.refs[pull.base], repo.refs[pull.head])[1]

    # ---- helpers ---------------------------------------------------------------------------------

    def repo_for(self, user: FakeUser, owner: str, name: str) -> FakeRepo:
        repo = self.repos.get((owner, name))
        if repo is None or (repo.owner != user.login and user.login not in repo.collaborators):
            raise FakeError(404, "Not Found")
        return repo

    def paginate(self, handler: FakeHandler, items: list[Any]) -> list[Any]:
        per_page = min(int(handler.get_query_argument("per_page", "30")), 100)
        page = max(int(handler.get_query_argument("page", "1")), 1)
        chunk = items[(page - 1) * per_page : page * per_page]
        last = max(1, -(-len(items) // per_page))
        if page < last:
            parsed = urlparse(handler.request.full_url())
            query = dict(parse_qsl(parsed.query))
            links = []
            for rel, number in (("next", page + 1), ("last", last)):
                query["page"] = str(number)
                # The path keeps /api/v3: PyGithub only keeps the path and query of these URLs.
                url = urlunparse(
                    parsed._replace(scheme="http", netloc=urlparse(self.url).netloc, query=urlencode(query))
                )
                links.append(f'<{url}>; rel="{rel}"')
            handler.set_header("Link", ", ".join(links))
        return chunk

    # ---- users and repositories ------------------------------------------------------------------

    def get_user(self, h: FakeHandler, user: FakeUser) -> Any:
        return self.user_json(user)

    def list_user_repos(self, h: FakeHandler, user: FakeUser) -> Any:
        repos = [r for r in self.repos.values() if r.owner == user.login or user.login in r.collaborators]
        repos.sort(key=lambda r: (r.updated_at, r.id), reverse=True)
        return [self.repo_json(r) for r in self.paginate(h, repos)]

    def get_repo(self, h: FakeHandler, user: FakeUser, owner: str, repo: str) -> Any:
        return self.repo_json(self.repo_for(user, owner, repo))

    # ---- branches and refs -----------------------------------------------------------------------

    def list_branches(self, h: FakeHandler, user: FakeUser, owner: str, repo: str) -> Any:
        r = self.repo_for(user, owner, repo)
        return [self.branch_json(r, name, full=False) for name in self.paginate(h, sorted(r.refs))]

    def get_branch(self, h: FakeHandler, user: FakeUser, owner: str, repo: str, branch: str) -> Any:
        r = self.repo_for(user, owner, repo)
        if branch not in r.refs:
            raise FakeError(404, "Branch not found")
        return self.branch_json(r, branch, full=True)

    def get_ref(self, h: FakeHandler, user: FakeUser, owner: str, repo: str, ref: str) -> Any:
        r = self.repo_for(user, owner, repo)
        name = ref.removeprefix("heads/")
        if name not in r.refs:
            raise FakeError(404, "Not Found")
        return self.ref_json(r, name)

    def create_ref(self, h: FakeHandler, user: FakeUser, owner: str, repo: str) -> Any:
        r = self.repo_for(user, owner, repo)
        body = h.json()
        ref, sha = body.get("ref", ""), body.get("sha", "")
        if not ref.startswith("refs/heads/") or sha not in r.commits:
            raise FakeError(422, "Reference update failed")
        name = ref.removeprefix("refs/heads/")
        if name in r.refs:
            raise FakeError(422, "Reference already exists")
        r.refs[name] = sha
        h.set_status(201)
        return self.ref_json(r, name)

    def update_ref(self, h: FakeHandler, user: FakeUser, owner: str, repo: str, ref: str) -> Any:
        r = self.repo_for(user, owner, repo)
        name = ref.removeprefix("heads/")
        body = h.json()
        sha = body.get("sha", "")
        if name not in r.refs:
            raise FakeError(422, "Reference does not exist")
        if sha not in r.commits:
            raise FakeError(422, "Object does not exist")
        if not body.get("force") and r.refs[name] not in r.ancestors(sha):
            raise FakeError(422, "Update is not a fast forward")
        r.refs[name] = sha
        return self.ref_json(r, name)

    def delete_ref(self, h: FakeHandler, user: FakeUser, owner: str, repo: str, ref: str) -> Any:
        r = self.repo_for(user, owner, repo)
        name = ref.removeprefix("heads/")
        if name not in r.refs:
            raise FakeError(422, "Reference does not exist")
        del r.refs[name]
        h.set_status(204)
        return None

    # ---- git data --------------------------------------------------------------------------------

    def get_tree(self, h: FakeHandler, user: FakeUser, owner: str, repo: str, sha: str) -> Any:
        r = self.repo_for(user, owner, repo)
        if sha not in r.trees:
            commit = r.resolve(sha)
            if commit is None:
                raise FakeError(404, "Not Found")
            sha = r.commits[commit].tree
        return self.tree_json(r, sha, recursive=h.get_query_argument("recursive", "") not in ("", "0", "false"))

    def create_blob(self, h: FakeHandler, user: FakeUser, owner: str, repo: str) -> Any:
        r = self.repo_for(user, owner, repo)
        body = h.json()
        content = body.get("content")
        if not isinstance(content, str):
            raise FakeError(422, 'Invalid request.\n\n"content" wasn\'t supplied.')
        try:
            data = base64.b64decode(content, validate=True) if body.get("encoding") == "base64" else content.encode()
        except ValueError:
            raise FakeError(422, "Invalid base64 content") from None
        sha = r.put_blob(data)
        h.set_status(201)
        return {"sha": sha, "url": self.api(f"/repos/{r.full_name}/git/blobs/{sha}")}

    def create_tree(self, h: FakeHandler, user: FakeUser, owner: str, repo: str) -> Any:
        r = self.repo_for(user, owner, repo)
        body = h.json()
        base = body.get("base_tree")
        if base is not None and base not in r.trees:
            raise FakeError(422, "Invalid tree info")
        entries = dict(r.trees[base]) if base else {}
        for item in body.get("tree", []):
            path = item.get("path", "")
            if not path or path.startswith("/") or ".." in path.split("/"):
                raise FakeError(422, "Invalid tree info")
            if "content" in item:
                entries[path] = (r.put_blob(item["content"].encode()), item.get("mode", TEXT_MODE))
            elif item.get("sha") is None:
                if path not in entries:
                    raise FakeError(422, f"GitRPC::BadObjectState: path {path} does not exist")
                entries.pop(path)
            elif item["sha"] in r.blobs:
                entries[path] = (item["sha"], item.get("mode", TEXT_MODE))
            else:
                raise FakeError(422, "Invalid tree info")
        sha = r.put_tree(entries)
        h.set_status(201)
        return self.tree_json(r, sha, recursive=False)

    def get_commit(self, h: FakeHandler, user: FakeUser, owner: str, repo: str, sha: str) -> Any:
        r = self.repo_for(user, owner, repo)
        if sha not in r.commits:
            raise FakeError(404, "Not Found")
        return self.commit_json(r, sha)

    def create_commit(self, h: FakeHandler, user: FakeUser, owner: str, repo: str) -> Any:
        r = self.repo_for(user, owner, repo)
        body = h.json()
        tree, parents = body.get("tree"), body.get("parents", [])
        if tree not in r.trees or any(p not in r.commits for p in parents):
            raise FakeError(422, "Invalid tree or parents")
        sha = r.put_commit(tree, parents, body.get("message", ""), user.login)
        h.set_status(201)
        return self.commit_json(r, sha)

    # ---- contents --------------------------------------------------------------------------------

    def get_contents(self, h: FakeHandler, user: FakeUser, owner: str, repo: str, path: str) -> Any:
        r = self.repo_for(user, owner, repo)
        ref = h.get_query_argument("ref", r.default_branch)
        files = r.files_at(ref)
        if files is None:
            raise FakeError(404, f"No commit found for the ref {ref}")
        path = path.strip("/")
        if path in files:
            return self.content_json(r, path, files[path][0], with_content=True)
        prefix = path + "/" if path else ""
        children: dict[str, dict[str, Any]] = {}
        for p, (blob, _) in sorted(files.items()):
            if not p.startswith(prefix):
                continue
            rest = p[len(prefix) :]
            if "/" in rest:
                name = rest.split("/", 1)[0]
                sub = {q[len(prefix + name) + 1 :]: v for q, v in files.items() if q.startswith(prefix + name + "/")}
                children.setdefault(
                    name,
                    {
                        "type": "dir",
                        "name": name,
                        "path": prefix + name,
                        "sha": tree_sha(sub),
                        "size": 0,
                        "url": self.api(f"/repos/{r.full_name}/contents/{prefix + name}"),
                    },
                )
            else:
                children[rest] = self.content_json(r, p, blob, with_content=False)
        if not children:
            raise FakeError(404, "Not Found")
        return [children[k] for k in sorted(children)]

    def _branch_for_write(self, r: FakeRepo, body: dict[str, Any]) -> str:
        branch = body.get("branch") or r.default_branch
        if branch not in r.refs:
            raise FakeError(404, f"Branch {branch} not found")
        return branch

    def put_contents(self, h: FakeHandler, user: FakeUser, owner: str, repo: str, path: str) -> Any:
        r = self.repo_for(user, owner, repo)
        body = h.json()
        branch = self._branch_for_write(r, body)
        try:
            data = base64.b64decode(body.get("content", ""), validate=True)
        except ValueError:
            raise FakeError(422, "content is not valid Base64") from None
        files = r.files_at(branch) or {}
        current = files.get(path)
        if current is not None and not body.get("sha"):
            raise FakeError(422, 'Invalid request.\n\n"sha" wasn\'t supplied.')
        if current is not None and body["sha"] != current[0]:
            raise FakeError(409, f"{path} does not match {body['sha']}")
        if current is None and body.get("sha"):
            raise FakeError(409, f"{path} does not match {body['sha']}")
        sha = r.commit_files(branch, {path: data}, body.get("message", ""), user.login)
        h.set_status(200 if current else 201)
        return {"content": self.content_json(r, path, blob_sha(data), False), "commit": self.commit_json(r, sha)}

    def delete_contents(self, h: FakeHandler, user: FakeUser, owner: str, repo: str, path: str) -> Any:
        r = self.repo_for(user, owner, repo)
        body = h.json()
        branch = self._branch_for_write(r, body)
        current = (r.files_at(branch) or {}).get(path)
        if current is None:
            raise FakeError(404, "Not Found")
        if body.get("sha") != current[0]:
            raise FakeError(409, f"{path} does not match {body.get('sha')}")
        sha = r.commit_files(branch, {path: None}, body.get("message", ""), user.login)
        return {"content": None, "commit": self.commit_json(r, sha)}

    # ---- pulls, merges, compare ------------------------------------------------------------------

    def list_pulls(self, h: FakeHandler, user: FakeUser, owner: str, repo: str) -> Any:
        r = self.repo_for(user, owner, repo)
        state = h.get_query_argument("state", "open")
        head = h.get_query_argument("head", None)
        base = h.get_query_argument("base", None)
        pulls = [
            p
            for p in reversed(r.pulls)
            if (state == "all" or p.state == state)
            and (head is None or f"{r.owner}:{p.head}" == head)
            and (base is None or p.base == base)
        ]
        return [self.pull_json(r, p, full=False) for p in self.paginate(h, pulls)]

    def create_pull(self, h: FakeHandler, user: FakeUser, owner: str, repo: str) -> Any:
        r = self.repo_for(user, owner, repo)
        body = h.json()
        head, base = body.get("head", ""), body.get("base", "")
        head = head.split(":", 1)[1] if ":" in head else head
        if head not in r.refs or base not in r.refs:
            raise FakeError(422, "Validation Failed")
        if any(p.head == head and p.base == base and p.state == "open" for p in r.pulls):
            raise FakeError(422, f"A pull request already exists for {r.owner}:{head}.")
        if r.refs[head] in r.ancestors(r.refs[base]):
            raise FakeError(422, f"No commits between {base} and {head}")
        pull = FakePull(len(r.pulls) + 1, body.get("title") or head, body.get("body") or "", head, base)
        r.pulls.append(pull)
        h.set_status(201)
        return self.pull_json(r, pull, full=True)

    def _pull(self, r: FakeRepo, number: str) -> FakePull:
        pull = next((p for p in r.pulls if p.number == int(number)), None)
        if pull is None:
            raise FakeError(404, "Not Found")
        return pull

    def get_pull(self, h: FakeHandler, user: FakeUser, owner: str, repo: str, number: str) -> Any:
        r = self.repo_for(user, owner, repo)
        pull = self._pull(r, number)
        pull.reads += 1
        return self.pull_json(r, pull, full=True)

    def merge_pull(self, h: FakeHandler, user: FakeUser, owner: str, repo: str, number: str) -> Any:
        r = self.repo_for(user, owner, repo)
        pull = self._pull(r, number)
        body = h.json()
        if pull.merged or pull.state != "open":
            raise FakeError(405, "Pull Request is not mergeable")
        if body.get("sha") and body["sha"] != r.refs.get(pull.head):
            raise FakeError(409, "Head branch was modified. Review and try the merge again.")
        merged, conflicts = r.three_way(r.refs[pull.base], r.refs[pull.head])
        if conflicts or pull.base in r.protected:
            raise FakeError(405, "Pull Request is not mergeable")
        title = body.get("commit_title") or f"Merge pull request #{pull.number} from {r.owner}/{pull.head}"
        message = title + ("\n\n" + body["commit_message"] if body.get("commit_message") else "")
        parents = [r.refs[pull.base], r.refs[pull.head]]
        sha = r.put_commit(r.put_tree(merged), parents, message, user.login)
        r.refs[pull.base] = sha
        pull.merged, pull.state, pull.merge_commit_sha, pull.updated_at = True, "closed", sha, now_iso()
        return {"sha": sha, "merged": True, "message": "Pull Request successfully merged"}

    def merge_branches(self, h: FakeHandler, user: FakeUser, owner: str, repo: str) -> Any:
        r = self.repo_for(user, owner, repo)
        body = h.json()
        base, head = body.get("base", ""), body.get("head", "")
        if base not in r.refs:
            raise FakeError(404, "Base does not exist")
        if head not in r.refs:
            raise FakeError(404, "Head does not exist")
        if r.refs[head] in r.ancestors(r.refs[base]):
            h.set_status(204)
            return None
        merged, conflicts = r.three_way(r.refs[base], r.refs[head])
        if conflicts:
            raise FakeError(409, "Merge conflict")
        message = body.get("commit_message") or f"Merge {head} into {base}"
        sha = r.put_commit(r.put_tree(merged), [r.refs[base], r.refs[head]], message, user.login)
        r.refs[base] = sha
        h.set_status(201)
        return self.rest_commit_json(r, sha)

    def compare(self, h: FakeHandler, user: FakeUser, owner: str, repo: str, base: str, head: str) -> Any:
        r = self.repo_for(user, owner, repo)
        base_sha, head_sha = r.resolve(base), r.resolve(head)
        if base_sha is None or head_sha is None:
            raise FakeError(404, "Not Found")
        merge_base = r.merge_base(base_sha, head_sha)
        behind = set(r.ancestors(base_sha))
        commits = [c for c in reversed(r.ancestors(head_sha)) if c not in behind]
        old = r.trees[r.commits[merge_base].tree] if merge_base else {}
        new = r.trees[r.commits[head_sha].tree]
        files = []
        for path in sorted(set(old) | set(new)):
            if old.get(path) == new.get(path):
                continue
            before = r.blobs[old[path][0]].decode(errors="replace").splitlines() if path in old else []
            after = r.blobs[new[path][0]].decode(errors="replace").splitlines() if path in new else []
            status = "added" if path not in old else "removed" if path not in new else "modified"
            additions = len([line for line in after if line not in before])
            deletions = len([line for line in before if line not in after])
            files.append(
                {
                    "sha": new.get(path, old.get(path, ("", "")))[0],
                    "filename": path,
                    "status": status,
                    "additions": additions,
                    "deletions": deletions,
                    "changes": additions + deletions,
                }
            )
        return {
            "url": self.api(f"/repos/{r.full_name}/compare/{base}...{head}"),
            "html_url": f"https://github.com/{r.full_name}/compare/{base}...{head}",
            "status": "ahead" if commits else "identical",
            "ahead_by": len(commits),
            "behind_by": len([c for c in r.ancestors(base_sha) if c not in set(r.ancestors(head_sha))]),
            "total_commits": len(commits),
            "merge_base_commit": self.rest_commit_json(r, merge_base) if merge_base else None,
            "commits": [self.rest_commit_json(r, c) for c in commits],
            "files": files,
        }

    # ---- OAuth -----------------------------------------------------------------------------------

    def authorize(self, h: FakeHandler) -> None:
        """The person 'approves' at once: redirect back with a code (or the configured error)."""
        redirect_uri = h.get_query_argument("redirect_uri", "")
        state = h.get_query_argument("state", "")
        if h.get_query_argument("client_id", "") != self.client_id:
            raise FakeError(404, "Not Found")
        if self.authorize_error:
            params = {"error": self.authorize_error, "state": state}
        else:
            if self.authorize_user is None:
                raise FakeError(400, "no authorize_user arranged")
            code = secrets.token_hex(10)
            self.codes[code] = {
                "user": self.authorize_user,
                "redirect_uri": redirect_uri,
                "challenge": h.get_query_argument("code_challenge", None),
                "method": h.get_query_argument("code_challenge_method", None),
                "scope": h.get_query_argument("scope", ""),
            }
            params = {"code": code, "state": state}
        h.redirect(f"{redirect_uri}?{urlencode(params)}")

    def access_token(self, h: FakeHandler) -> Any:
        content_type = h.request.headers.get("Content-Type", "")
        if content_type.startswith("application/json"):
            body = h.json()
        else:
            body = {k: v[-1].decode() for k, v in h.request.body_arguments.items()}
        if body.get("client_id") != self.client_id or body.get("client_secret") != self.client_secret:
            return {
                "error": "incorrect_client_credentials",
                "error_description": "The client_id and/or secret are wrong.",
            }
        grant = self.codes.pop(body.get("code", ""), None)
        if grant is None:
            return {"error": "bad_verification_code", "error_description": "The code passed is incorrect or expired."}
        if body.get("redirect_uri") and body["redirect_uri"] != grant["redirect_uri"]:
            return {"error": "redirect_uri_mismatch", "error_description": "The redirect_uri does not match."}
        if grant["challenge"]:
            verifier = body.get("code_verifier", "")
            digest = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
            if digest != grant["challenge"]:
                return {"error": "bad_verification_code", "error_description": "The code_verifier does not match."}
        user: FakeUser = grant["user"]
        token = f"gho_{secrets.token_hex(16)}"
        self.tokens[token] = user
        user.token = token
        return {"access_token": token, "token_type": "bearer", "scope": grant["scope"].replace(" ", ",")}


class FakeHandler(tornado.web.RequestHandler):
    SUPPORTED_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")

    def initialize(self, fake: FakeGitHub) -> None:
        self.fake = fake

    def check_xsrf_cookie(self) -> None:
        return None

    def json(self) -> dict[str, Any]:
        if not self.request.body:
            return {}
        value = orjson.loads(self.request.body)
        return value if isinstance(value, dict) else {}

    def send(self, status: int, value: Any, headers: dict[str, str] | None = None) -> None:
        for name, header in (headers or {}).items():
            self.set_header(name, header)
        self.set_status(status)
        if value is None:
            self.finish()
            return
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(orjson.dumps(value))

    async def handle(self) -> None:
        fake = self.fake
        path = self.request.path
        fake.requests.append(
            {
                "method": self.request.method,
                "path": path,
                "query": self.request.query,
                "authorization": self.request.headers.get("Authorization"),
            }
        )
        try:
            if path == "/login/oauth/authorize" and self.request.method == "GET":
                fake.authorize(self)
                return
            if path == "/login/oauth/access_token" and self.request.method == "POST":
                self.send(200, fake.access_token(self))
                return
            if not path.startswith(API_PREFIX):
                raise FakeError(404, "Not Found")
            user = self._authenticate()
            api_path = path[len(API_PREFIX) :]
            for method, pattern, fn in fake.routes:
                match = pattern.match(api_path)
                if match and method == self.request.method:
                    args = {k: tornado.escape.url_unescape(v, plus=False) for k, v in match.groupdict().items()}
                    status_before = self.get_status()
                    result = fn(self, user, **args)
                    status = self.get_status() if self.get_status() != status_before else 200
                    self.send(status, result)
                    return
            raise FakeError(404, "Not Found")
        except FakeError as exc:
            self.send(
                exc.status, {"message": exc.message, "documentation_url": "https://docs.github.com/rest"}, exc.headers
            )

    def _authenticate(self) -> FakeUser:
        fake = self.fake
        if fake.fail_status is not None:
            raise FakeError(fake.fail_status, "Server Error")
        if fake.malformed:
            raise FakeError(200, "<html>a proxy's idea of an answer</html>")
        if fake.rate_limit_reset is not None:
            raise FakeError(
                403,
                "API rate limit exceeded for user ID 1.",
                {
                    "X-RateLimit-Limit": "5000",
                    "X-RateLimit-Remaining": "0",
                    "X-RateLimit-Reset": str(fake.rate_limit_reset),
                },
            )
        header = self.request.headers.get("Authorization", "")
        token = header.split(" ", 1)[1] if " " in header else ""
        user = fake.tokens.get(token)
        if user is None:
            raise FakeError(401, "Bad credentials")
        return user

    get = post = put = patch = delete = handle  # type: ignore[assignment]


@contextlib.asynccontextmanager
async def running_fake_github(**kwargs: Any) -> AsyncIterator[FakeGitHub]:
    """A started fake GitHub, stopped afterwards."""
    fake = FakeGitHub(**kwargs)
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


def epoch_in(seconds: int) -> int:
    return int(time.time()) + seconds


def github_env(fake: FakeGitHub, **overrides: Any) -> dict[str, str]:
    """Server settings pointing at this fake (add them to tests.helpers.test_env)."""
    env = {
        "GITHUB_API_URL": fake.api_url,
        "GITHUB_OAUTH_URL": fake.url,
        "GITHUB_CLIENT_ID": fake.client_id,
        "GITHUB_CLIENT_SECRET": fake.client_secret,
    }
    env.update({key: str(value) for key, value in overrides.items()})
    return env


async def oauth_round_trip(client: Any, fake: FakeGitHub, referer: str) -> tuple[str, str]:
    """Start the flow with `client` and 'approve' at the fake: returns (authorize URL, callback
    path with query) — the callback is what the browser would then open on our server."""
    import httpx

    start = await client.get("/api/github/oauth", headers={"Referer": referer})
    assert start.status_code == 302, start.text
    authorize = start.headers["location"]
    async with httpx.AsyncClient(timeout=10) as browser:
        approved = await browser.get(authorize)
    assert approved.status_code == 302, approved.text
    back = urlparse(approved.headers["location"])
    return authorize, f"{back.path}?{back.query}"


async def connect_github(client: Any, fake: FakeGitHub, login: str | None = None) -> FakeUser:
    """Connect the logged-in person behind `client` to a (new) fake GitHub user via the real flow."""
    user = fake.users.get(login or "") or fake.add_user(login or f"octo-{secrets.token_hex(3)}")
    fake.authorize_user = user
    _, callback = await oauth_round_trip(client, fake, "http://localhost:5173/#/settings")
    done = await client.get(callback)
    assert done.status_code == 302, done.text
    assert done.headers["location"].endswith("?success=github_connected"), done.headers["location"]
    return user
