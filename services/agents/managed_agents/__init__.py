"""The Managed Agents backend (AGENT_BACKEND=managed-agents): Anthropic's documented agent API,
paid by the deployment's API key, behind the same `AgentProvider` interface as Remote Sessions."""
