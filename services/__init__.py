"""The server's logic. Services import queries and libraries, never handlers."""
