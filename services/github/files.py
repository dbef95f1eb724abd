"""Reading and changing files through GitHub's API (CONTRACT.md 1.7, 7.4).

Single-file writes use the Contents API as the original did. Renames, folder deletes, folder
renames and `POST .../commit` go through the Git Data API as ONE commit each (the original made
one or two commits per file, 9.6 #43): the moved entries reuse their blob shas, so nothing is
downloaded, and the branch moves only if nobody else moved it meanwhile (non-forced update).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from github import Github, GithubException
from github.ContentFile import ContentFile

from services.context import AppContext
from services.errors import ServiceError
from services.github import api
from services.github.repos import branch_head, ref_url, repository

BINARY_EXTENSIONS = frozenset(
    [
        "png",
        "jpg",
        "jpeg",
        "gif",
        "webp",
        "ico",
        "bmp",
        "svg",
        "pdf",
        "zip",
        "tar",
        "gz",
        "woff",
        "woff2",
        "ttf",
        "eot",
        "mp3",
        "mp4",
        "wav",
        "ogg",
        "webm",
    ]
)
BRANCH_CONFLICT = "Conflict - branch may have been modified. Please refresh and try again."
FILE_CONFLICT = "Conflict - the file was changed by someone else. Please refresh and try again."
TREE_TOO_LARGE = "This repository is too large to change folders through the web editor"
MAX_COMMIT_ENTRIES = 2000


def is_binary(path: str) -> bool:
    return "." in path and path.rsplit(".", 1)[1].lower() in BINARY_EXTENSIONS


def _item(entry: ContentFile) -> dict[str, Any]:
    return {"name": entry.name, "path": entry.path, "sha": entry.sha, "size": entry.size, "type": entry.type}


# ---- reading -----------------------------------------------------------------------------------


async def get_contents(
    ctx: AppContext, token: str, owner: str, repo: str, path: str, ref: str | None
) -> dict[str, Any] | list[Any]:
    """A file (text decoded to UTF-8, binary kept as base64), a directory listing, or GitHub's object."""
    api.check_repo(owner, repo)
    path = api.check_path(path, allow_root=True)
    if ref is not None:
        api.check_branch(ref, "Invalid ref")

    def fetch(client: Github) -> dict[str, Any] | list[Any]:
        try:
            found = repository(client, owner, repo).get_contents(path, **({"ref": ref} if ref else {}))
        except GithubException as exc:
            api.reraise(exc, {404: "File or path not found"})
        if isinstance(found, list):
            return {"type": "dir", "items": [_item(e) for e in found]}
        if found.type in ("symlink", "submodule"):
            return found.raw_data
        if found.type != "file":
            raise ServiceError(502, api.UNREADABLE)
        raw = found.raw_data
        encoded = raw.get("content") or ""
        result = _item(found)
        if raw.get("encoding") != "base64":
            # Files over 1 MB come without content; the browser can fetch download_url.
            result.update(content=None, encoding="none", download_url=found.download_url)
        elif is_binary(found.path):
            result.update(content="".join(encoded.split()), encoding="base64", download_url=found.download_url)
        else:
            text = base64.b64decode("".join(encoded.split())).decode("utf-8", errors="replace")
            result.update(content=text, encoding="utf-8")
        return result

    return await api.run(ctx, token, fetch)


# ---- single files through the Contents API -----------------------------------------------------


def _required_branch(body: dict[str, Any]) -> str:
    branch = body.get("branch")
    if not branch:
        raise ServiceError(400, "Branch is required")
    return api.check_branch(branch)


def _existing_sha(client: Github, owner: str, repo: str, path: str, branch: str) -> str | None:
    """The blob sha of a file on a branch, None when it does not exist; 400 for a directory."""
    try:
        found = repository(client, owner, repo).get_contents(path, ref=branch)
    except GithubException as exc:
        if exc.status == 404:
            return None
        api.reraise(exc, {})
    if isinstance(found, list) or found.type != "file":
        raise ServiceError(400, "Path is not a file")
    return found.sha


async def put_file(
    ctx: AppContext, token: str, owner: str, repo: str, path: str, body: dict[str, Any]
) -> dict[str, Any]:
    """Create or update one file (looks its sha up when the caller does not send it)."""
    api.check_repo(owner, repo)
    path = api.check_path(path)
    branch = _required_branch(body)
    content = body.get("content")
    if not isinstance(content, str):
        raise ServiceError(400, "Content is required")
    sha = body.get("sha") or None
    if sha is not None and not isinstance(sha, str):
        raise ServiceError(400, "sha must be a string")
    message = api.optional_text(body.get("message"), "message") or f"Update {path}"

    def write(client: Github) -> dict[str, Any]:
        current = sha or _existing_sha(client, owner, repo, path, branch)
        r = repository(client, owner, repo)
        try:
            if current:
                result = r.update_file(path, message, content, current, branch=branch)
            else:
                result = r.create_file(path, message, content, branch=branch)
        except GithubException as exc:
            api.reraise(
                exc, {404: "Repository or branch not found", 409: FILE_CONFLICT, 422: "Invalid file content or path"}
            )
        return {
            "message": "File updated successfully" if current else "File created successfully",
            "sha": result["content"].sha,
            "path": path,
        }

    return await api.run(ctx, token, write)


async def delete_file(
    ctx: AppContext, token: str, owner: str, repo: str, path: str, body: dict[str, Any]
) -> dict[str, Any]:
    api.check_repo(owner, repo)
    path = api.check_path(path)
    branch = _required_branch(body)
    sha = body.get("sha") or None
    if sha is not None and not isinstance(sha, str):
        # PyGithub asserts on a non-string sha (an AssertionError, so a 500 without this check).
        raise ServiceError(400, "sha must be a string")
    message = api.optional_text(body.get("message"), "message") or f"Delete {path}"

    def remove(client: Github) -> dict[str, Any]:
        current = sha or _existing_sha(client, owner, repo, path, branch)
        if not current:
            raise ServiceError(404, "File not found")
        try:
            repository(client, owner, repo).delete_file(path, message, current, branch=branch)
        except GithubException as exc:
            api.reraise(exc, {404: "File or repository not found", 409: FILE_CONFLICT, 422: "Invalid file path"})
        return {"message": "File deleted successfully"}

    return await api.run(ctx, token, remove)


# ---- one commit through the Git Data API ---------------------------------------------------------


@dataclass
class Head:
    commit_sha: str
    tree_sha: str


def _head(client: Github, owner: str, repo: str, branch: str, not_found: str) -> Head:
    try:
        sha = branch_head(client, owner, repo, branch)
        _, commit = client.requester.requestJsonAndCheck("GET", f"/repos/{owner}/{repo}/git/commits/{sha}")
    except GithubException as exc:
        api.reraise(exc, {404: not_found})
    return Head(sha, str(commit["tree"]["sha"]))


def _files(client: Github, owner: str, repo: str, head: Head) -> dict[str, tuple[str, str, str]]:
    """path -> (mode, type, sha) of every non-directory entry in the head tree."""
    tree = repository(client, owner, repo).get_git_tree(head.tree_sha, recursive=True)
    if tree.truncated:
        raise ServiceError(422, TREE_TOO_LARGE)
    return {e.path: (e.mode, e.type, e.sha) for e in tree.tree if e.type != "tree"}


def _entry(path: str, mode: str, kind: str, sha: str | None = None, content: str | None = None) -> dict[str, Any]:
    """A tree entry for POST git/trees; `sha` None (and no content) deletes the path."""
    entry: dict[str, Any] = {"path": path, "mode": mode, "type": kind}
    if content is not None:
        entry["content"] = content
    else:
        entry["sha"] = sha
    return entry


def _commit(
    client: Github, owner: str, repo: str, branch: str, head: Head, entries: list[dict[str, Any]], message: str
) -> str:
    """Create tree + commit on top of `head` and move the branch (not forced). Returns the sha."""
    if len(entries) > MAX_COMMIT_ENTRIES:
        raise ServiceError(400, f"At most {MAX_COMMIT_ENTRIES} files can be changed in one commit")
    request = client.requester.requestJsonAndCheck
    try:
        _, tree = request(
            "POST", f"/repos/{owner}/{repo}/git/trees", input={"base_tree": head.tree_sha, "tree": entries}
        )
        _, made = request(
            "POST",
            f"/repos/{owner}/{repo}/git/commits",
            input={"message": message, "tree": tree["sha"], "parents": [head.commit_sha]},
        )
    except GithubException as exc:
        api.reraise(exc, {404: "Repository or branch not found"})
    try:
        request("PATCH", ref_url(owner, repo, branch), input={"sha": made["sha"], "force": False})
    except GithubException as exc:
        api.reraise(exc, {422: BRANCH_CONFLICT, 409: BRANCH_CONFLICT, 404: "Repository or branch not found"})
    return str(made["sha"])


def _move_request(
    owner: str, repo: str, old: str, body: dict[str, Any], new_key: str, what: str
) -> tuple[str, str, str]:
    """The checked (old path, new path, branch) of a rename; `what` names the path in messages."""
    api.check_repo(owner, repo)
    old = api.check_path(old)
    new = body.get(new_key)
    branch = _required_branch(body)
    if not new:
        raise ServiceError(400, f"New {what} is required")
    new = api.check_path(new)
    if new == old:
        raise ServiceError(400, f"New {what} must be different from the old path")
    return old, new, branch


Tree = dict[str, tuple[str, str, str]]  # path -> (mode, kind, sha) of every file on the branch


async def _change_tree(
    ctx: AppContext,
    token: str,
    where: tuple[str, str, str],
    not_found: str,
    message: str,
    plan: Callable[[Tree], tuple[list[dict[str, Any]], dict[str, Any]]],
) -> dict[str, Any]:
    """One commit on `where` (owner, repo, branch) whose tree entries `plan` derives from the
    branch's files; `plan` also gives the answer, or raises the ServiceError that refuses it."""
    owner, repo, branch = where

    def change(client: Github) -> dict[str, Any]:
        head = _head(client, owner, repo, branch, not_found)
        entries, answer = plan(_files(client, owner, repo, head))
        _commit(client, owner, repo, branch, head, entries, message)
        return answer

    return await api.run(ctx, token, change)


async def rename_file(
    ctx: AppContext, token: str, owner: str, repo: str, old_path: str, body: dict[str, Any]
) -> dict[str, Any]:
    """Move one file in a single commit."""
    old_path, new_path, branch = _move_request(owner, repo, old_path, body, "newPath", "path")
    message = api.optional_text(body.get("message"), "message") or f"Rename {old_path} to {new_path}"

    def move(files: Tree) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        if old_path not in files:
            if any(p.startswith(old_path + "/") for p in files):
                raise ServiceError(400, "Path is not a file. Use rename-folder for directories.")
            raise ServiceError(404, "File not found")
        if new_path in files or any(p.startswith(new_path + "/") for p in files):
            raise ServiceError(422, "File already exists at new path")
        mode, kind, sha = files[old_path]
        entries = [_entry(new_path, mode, kind, sha), _entry(old_path, mode, kind, None)]
        return entries, {"message": "File renamed successfully", "oldPath": old_path, "newPath": new_path}

    return await _change_tree(ctx, token, (owner, repo, branch), "Repository or branch not found", message, move)


async def delete_folder(
    ctx: AppContext, token: str, owner: str, repo: str, folder: str, body: dict[str, Any]
) -> dict[str, Any]:
    """Delete every file under a folder in a single commit."""
    api.check_repo(owner, repo)
    folder = api.check_path(folder)
    branch = _required_branch(body)
    message = api.optional_text(body.get("message"), "message") or f"Delete folder {folder}"

    def remove(files: Tree) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        doomed = [(p, v) for p, v in files.items() if p.startswith(folder + "/")]
        if not doomed:
            raise ServiceError(404, "Folder is empty or not found")
        entries = [_entry(p, mode, kind, None) for p, (mode, kind, _) in doomed]
        return entries, {"message": "Folder deleted successfully", "path": folder, "filesDeleted": len(doomed)}

    return await _change_tree(ctx, token, (owner, repo, branch), "Folder or branch not found", message, remove)


async def rename_folder(
    ctx: AppContext, token: str, owner: str, repo: str, old_folder: str, body: dict[str, Any]
) -> dict[str, Any]:
    """Move every file under a folder to a new folder in a single commit."""
    old_folder, new_folder, branch = _move_request(owner, repo, old_folder, body, "newFolderPath", "folder path")
    message = api.optional_text(body.get("message"), "message") or f"Rename folder {old_folder} to {new_folder}"

    def move(files: Tree) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        moving = {p: v for p, v in files.items() if p.startswith(old_folder + "/")}
        if not moving:
            raise ServiceError(404, "Folder is empty or not found")
        targets = {new_folder + p[len(old_folder) :]: v for p, v in moving.items()}
        if new_folder in files or any(t in files and t not in moving for t in targets):
            raise ServiceError(422, "Files already exist at new path")
        entries = [_entry(p, mode, kind, None) for p, (mode, kind, _) in moving.items() if p not in targets]
        entries += [_entry(t, mode, kind, sha) for t, (mode, kind, sha) in targets.items()]
        answer = {
            "message": "Folder renamed successfully",
            "oldPath": old_folder,
            "newPath": new_folder,
            "filesMoved": len(moving),
        }
        return entries, answer

    return await _change_tree(ctx, token, (owner, repo, branch), "Folder or branch not found", message, move)


def _base64_content(value: str, path: str) -> str:
    """Base64 text, from plain base64 or a `data:...;base64,` URL; 400 when it does not decode."""
    if value.startswith("data:"):
        value = value.split(",", 1)[1] if "," in value else ""
    cleaned = "".join(value.split())
    try:
        base64.b64decode(cleaned, validate=True)
    except (binascii.Error, ValueError):
        raise ServiceError(400, f"Invalid base64 content for {path}") from None
    return cleaned


def _commit_writes(files: list[Any], images: list[Any]) -> list[tuple[str, str | None, str | None]]:
    """The files and images of a commit request as (path, text or None, base64 or None); items
    without a path or a string content are left out, as the original did."""
    writes: list[tuple[str, str | None, str | None]] = []
    for item, always_base64 in [*((f, False) for f in files), *((i, True) for i in images)]:
        if not isinstance(item, dict) or not item.get("path") or not isinstance(item.get("content"), str):
            continue
        path = api.check_path(item["path"])
        if always_base64 or item.get("encoding") == "base64":
            writes.append((path, None, _base64_content(item["content"], path)))
        else:
            writes.append((path, item["content"], None))
    return writes


async def commit(ctx: AppContext, token: str, owner: str, repo: str, body: dict[str, Any]) -> dict[str, Any]:
    """Files, images and deletions as one commit on a branch (Git Data API)."""
    api.check_repo(owner, repo)
    branch = _required_branch(body)
    files, images, deletions = body.get("files") or [], body.get("images") or [], body.get("deletions") or []
    if not all(isinstance(x, list) for x in (files, images, deletions)):
        raise ServiceError(400, "files, images and deletions must be arrays")
    if not files and not images and not deletions:
        raise ServiceError(400, "No files, images, or deletions to commit")
    writes = _commit_writes(files, images)
    removals = [api.check_path(p) for p in deletions if isinstance(p, str) and p]
    if not writes and not removals:
        raise ServiceError(400, "No valid files to commit")
    parts = []
    if writes:
        parts.append(f"Update {len(writes)} file(s)")
    if removals:
        parts.append(f"Delete {len(removals)} file(s)")
    message = api.optional_text(body.get("message"), "message") or ", ".join(parts)

    def make(client: Github) -> dict[str, Any]:
        head = _head(client, owner, repo, branch, "Repository or branch not found")
        r = repository(client, owner, repo)
        entries: list[dict[str, Any]] = []
        try:
            for path, text, b64 in writes:
                if text is not None:
                    # Text goes inline in the tree: one request fewer per file.
                    entries.append(_entry(path, "100644", "blob", content=text))
                else:
                    entries.append(_entry(path, "100644", "blob", r.create_git_blob(b64 or "", "base64").sha))
        except GithubException as exc:
            api.reraise(exc, {404: "Repository or branch not found", 422: "Invalid file content"})
        entries += [_entry(p, "100644", "blob", None) for p in removals]
        sha = _commit(client, owner, repo, branch, head, entries, message)
        return {
            "commitSha": sha,
            "message": message,
            "branch": branch,
            "filesCommitted": len(writes),
            "htmlUrl": f"https://github.com/{owner}/{repo}/commit/{sha}",
        }

    return await api.run(ctx, token, make)
