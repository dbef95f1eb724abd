"""Claude Remote runs: the upstream client, the provider interface, titles, the run driver and
the request side of execute-remote, follow-ups, interrupt and abort."""
