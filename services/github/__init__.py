"""GitHub integration: OAuth, the REST API through PyGithub, and local git workspaces.

- `api`        PyGithub clients run in `ctx.github_executor`; GitHub errors become ServiceErrors;
               input checks for owners, repositories, branches and paths.
- `accounts`   the stored (encrypted) token of a user: read, link, forget.
- `oauth`      the web flow with a signed, expiring state bound to the login session.
- `repos`      repositories, branches, trees; `delete_branch` for session clean-up.
- `files`      contents, renames, folder operations and Git Data API commits.
- `pulls`      pull requests, merges, merge-base, PR text and the auto-PR workflow.
- `git`        git through asyncio subprocesses with the token passed per command.
- `workspaces` session paths, `init_repository` and `remove_workspace`.
"""
