"""Tornado RequestHandlers: parse and check input, call a service, write JSON or SSE."""
