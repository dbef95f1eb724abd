"""/api/github (CONTRACT.md 1.7, 7) and POST /api/sessions/:id/init-repository.

Every route except the OAuth callback needs a login; every repository route also needs a
connected GitHub account (400 "GitHub not connected"). Unknown /api/github paths, and known
paths with another method, answer the contract's JSON 404 without echoing the request (9.33).
"""

from __future__ import annotations

import logging
from typing import Any

import tornado.web

from handlers.base import SESSION_ID, APIHandler, authenticated
from services.errors import ServiceError
from services.github import accounts, files, oauth, pulls, repos, workspaces

log = logging.getLogger(__name__)

ENDPOINT_NOT_FOUND = "GitHub endpoint not found"
REPO = r"/api/github/repos/([^/]+)/([^/]+)"


class GitHubHandler(APIHandler):
    """Base of the /api/github routes: the caller's token, and 404 instead of 405."""

    def github_token(self) -> str:
        return accounts.require_token(self.ctx, self.user.user)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, tornado.web.HTTPError) and exc.status_code == 405:
            error = ServiceError(404, ENDPOINT_NOT_FOUND)
            kwargs["exc_info"] = (ServiceError, error, None)
            status_code = 404
        super().write_error(status_code, **kwargs)


# ---- OAuth ---------------------------------------------------------------------------------------


class OAuthStartHandler(GitHubHandler):
    @authenticated
    async def get(self) -> None:
        headers = self.request.headers
        self.redirect(oauth.authorize_url(self.ctx, self.user, headers.get("Referer"), headers.get("Origin")))


class OAuthCallbackHandler(GitHubHandler):
    async def get(self) -> None:
        try:
            target = await oauth.complete(
                self.ctx,
                code=self.get_query_argument("code", None),
                raw_state=self.get_query_argument("state", None),
                error=self.get_query_argument("error", None),
                user=self.current_user,
            )
        except ServiceError as exc:
            # Unreadable parameters (a NUL): bad input, not worth a traceback in the log.
            log.info("GitHub OAuth callback refused: %s", exc.message, extra=self.log_extra())
            target = f"{self.ctx.config.allowed_origins[0]}/#/settings?error=oauth_failed"
        except Exception:
            # The browser is mid-navigation: always send it back to the site, never a JSON error.
            log.exception("GitHub OAuth callback failed", extra=self.log_extra())
            target = f"{self.ctx.config.allowed_origins[0]}/#/settings?error=oauth_failed"
        self.redirect(target)


class DisconnectHandler(GitHubHandler):
    @authenticated
    async def post(self) -> None:
        await accounts.disconnect(self.ctx, self.user.id)
        self.ok({"message": "GitHub disconnected"})


# ---- repositories and branches ----------------------------------------------------------------------


class ReposHandler(GitHubHandler):
    @authenticated
    async def get(self) -> None:
        self.ok(await repos.list_repos(self.ctx, self.github_token()))


class BranchesHandler(GitHubHandler):
    @authenticated
    async def get(self, owner: str, repo: str) -> None:
        self.ok(await repos.list_branches(self.ctx, self.github_token(), owner, repo))

    @authenticated
    async def post(self, owner: str, repo: str) -> None:
        self.ok(await repos.create_branch(self.ctx, self.github_token(), owner, repo, self.json_body()))


class BranchHandler(GitHubHandler):
    @authenticated
    async def delete(self, owner: str, repo: str, branch: str) -> None:
        message = await repos.delete_branch_or_raise(self.ctx, self.github_token(), owner, repo, branch)
        self.ok({"message": message})


class MergeBaseHandler(GitHubHandler):
    @authenticated
    async def post(self, owner: str, repo: str, branch: str) -> None:
        self.ok(await pulls.merge_base(self.ctx, self.github_token(), owner, repo, branch, self.json_body()))

    @authenticated
    async def delete(self, owner: str, repo: str, branch: str) -> None:
        # A branch really named "<x>/merge-base" shares this path; DELETE means the branch.
        message = await repos.delete_branch_or_raise(self.ctx, self.github_token(), owner, repo, f"{branch}/merge-base")
        self.ok({"message": message})


class AutoPRHandler(GitHubHandler):
    @authenticated
    async def post(self, owner: str, repo: str, branch: str) -> None:
        token = self.github_token()
        result = await pulls.auto_pr(self.ctx, token, self.user.id, owner, repo, branch, self.json_body())
        self.ok(result)

    @authenticated
    async def delete(self, owner: str, repo: str, branch: str) -> None:
        message = await repos.delete_branch_or_raise(self.ctx, self.github_token(), owner, repo, f"{branch}/auto-pr")
        self.ok({"message": message})


class TreeHandler(GitHubHandler):
    @authenticated
    async def get(self, owner: str, repo: str, branch: str) -> None:
        recursive = self.get_query_argument("recursive", "") == "true"
        self.ok(await repos.get_tree(self.ctx, self.github_token(), owner, repo, branch, recursive))


# ---- files ----------------------------------------------------------------------------------------------


class ContentsHandler(GitHubHandler):
    @authenticated
    async def get(self, owner: str, repo: str, path: str | None) -> None:
        ref = self.get_query_argument("ref", None) or None
        self.ok(await files.get_contents(self.ctx, self.github_token(), owner, repo, path or "", ref))

    @authenticated
    async def put(self, owner: str, repo: str, path: str | None) -> None:
        self.ok(await files.put_file(self.ctx, self.github_token(), owner, repo, path or "", self.json_body()))

    @authenticated
    async def delete(self, owner: str, repo: str, path: str | None) -> None:
        self.ok(await files.delete_file(self.ctx, self.github_token(), owner, repo, path or "", self.json_body()))


class RenameHandler(GitHubHandler):
    @authenticated
    async def post(self, owner: str, repo: str, path: str) -> None:
        self.ok(await files.rename_file(self.ctx, self.github_token(), owner, repo, path, self.json_body()))


class FolderHandler(GitHubHandler):
    @authenticated
    async def delete(self, owner: str, repo: str, path: str) -> None:
        self.ok(await files.delete_folder(self.ctx, self.github_token(), owner, repo, path, self.json_body()))


class RenameFolderHandler(GitHubHandler):
    @authenticated
    async def post(self, owner: str, repo: str, path: str) -> None:
        self.ok(await files.rename_folder(self.ctx, self.github_token(), owner, repo, path, self.json_body()))


class CommitHandler(GitHubHandler):
    @authenticated
    async def post(self, owner: str, repo: str) -> None:
        self.ok(await files.commit(self.ctx, self.github_token(), owner, repo, self.json_body()))


# ---- pull requests ----------------------------------------------------------------------------------


class PullsHandler(GitHubHandler):
    @authenticated
    async def get(self, owner: str, repo: str) -> None:
        head = self.get_query_argument("head", None) or None
        base = self.get_query_argument("base", None) or None
        self.ok(await pulls.list_pulls(self.ctx, self.github_token(), owner, repo, head, base))

    @authenticated
    async def post(self, owner: str, repo: str) -> None:
        self.ok(await pulls.create_pull(self.ctx, self.github_token(), owner, repo, self.json_body()))


class MergePullHandler(GitHubHandler):
    @authenticated
    async def post(self, owner: str, repo: str, number: str) -> None:
        self.ok(await pulls.merge_pull(self.ctx, self.github_token(), owner, repo, number, self.json_body()))


class GeneratePRContentHandler(GitHubHandler):
    @authenticated
    async def post(self, owner: str, repo: str) -> None:
        self.ok(await pulls.generate_pr_content(self.ctx, self.github_token(), owner, repo, self.json_body()))


# ---- the rest ----------------------------------------------------------------------------------------


class GitHubNotFoundHandler(APIHandler):
    """Any other /api/github path, whatever the method and login: a JSON 404, no request details."""

    async def prepare(self) -> None:
        self.set_header("X-Request-ID", self.request_id)
        raise ServiceError(404, ENDPOINT_NOT_FOUND)


class InitRepositoryHandler(APIHandler):
    @authenticated
    async def post(self, session_id: str) -> None:
        session = await workspaces.init_repository(self.ctx, self.user, session_id)
        self.write_json({"success": True, "session": session, "data": session})


ROUTES = [
    (r"/api/github/oauth", OAuthStartHandler),
    (r"/api/github/oauth/callback", OAuthCallbackHandler),
    (r"/api/github/disconnect", DisconnectHandler),
    (r"/api/github/repos", ReposHandler),
    (REPO + r"/branches", BranchesHandler),
    (REPO + r"/branches/(.+)/merge-base", MergeBaseHandler),
    (REPO + r"/branches/(.+)/auto-pr", AutoPRHandler),
    (REPO + r"/branches/(.+)", BranchHandler),
    (REPO + r"/tree/(.+)", TreeHandler),
    (REPO + r"/contents(?:/(.*))?", ContentsHandler),
    (REPO + r"/rename/(.+)", RenameHandler),
    (REPO + r"/folder/(.+)", FolderHandler),
    (REPO + r"/rename-folder/(.+)", RenameFolderHandler),
    (REPO + r"/pulls", PullsHandler),
    (REPO + r"/pulls/([^/]+)/merge", MergePullHandler),
    (REPO + r"/generate-pr-content", GeneratePRContentHandler),
    (REPO + r"/commit", CommitHandler),
    (r"/api/github(?:/.*)?", GitHubNotFoundHandler),
    (rf"/api/sessions/{SESSION_ID}/init-repository", InitRepositoryHandler),
]
