"""Runs on any agent backend: the interface (backend.py) and the backends' table (registry.py),
the run driver, one run, its ending and titles, and the request side of execute-remote,
follow-ups, interrupt and abort. The backends sit beside them: `claude_remote/` and
`managed_agents/`."""
