"""The README's configuration table and `.env.example`, generated from the Config fields.

Each setting is described once, by its `setting()` in services/config.py; `server.py config docs`
rewrites the table (between the markers in README.md) and the whole `.env.example` from it, and
tests/test_deploy_files.py fails when either differs from what this module renders.
"""

from __future__ import annotations

import textwrap
from dataclasses import Field, fields
from pathlib import Path
from typing import Any

from services.config import PROJECT_ROOT, Config

README_START = "<!-- config-table:start (generated from services/config.py by `server.py config docs`) -->"
README_END = "<!-- config-table:end -->"
WIDTH = 100

ENV_INTRO = """\
# WebEDT internal API server: every variable services/config.py reads, with its default.
# Generated from the Config fields of services/config.py by `.venv/bin/python server.py config docs`:
# change a setting's help there and run that, never edit this file by hand.
#
# Copy to `.env` (never commit it). `make run` reads it through python-dotenv (real environment
# variables win); docker compose reads it for ${...} interpolation and passes it to the container.
# A commented line shows the default: uncomment it only to change the value.
#
# [secret] marks a secret. For any variable, NAME_FILE=/path makes the server read the value
# from that file instead (Docker/Swarm secrets: SESSION_SECRET_FILE=/run/secrets/webedt_session_secret).
"""

# Read by `docker compose` for ${...} in the compose files, never by the server: (name, default, help).
COMPOSE_ONLY = (
    (
        "POSTGRES_PASSWORD",
        "webedt",
        "Password of the local PostgreSQL in docker-compose.yml (local use only; no @ : / ? characters).",
    ),
    ("API_HOST_PORT", "3001", "Host port of the server in docker-compose.yml (bound to 127.0.0.1 only)."),
    (
        "API_IMAGE",
        "internal-api-server:latest",
        "Image that docker-compose.external.yml tags its build as (swarm.yml requires it from the shell).",
    ),
)
COMPOSE_SECTION = "Docker compose only (read by `docker compose` for ${...}, not by the server)"


def sections() -> list[tuple[str, list[Field[Any]]]]:
    """The settings in their groups, in the order of the Config fields."""
    groups: list[tuple[str, list[Field[Any]]]] = []
    for spec in fields(Config):
        if "help" not in spec.metadata:
            raise ValueError(f"Config.{spec.name} has no help: declare it with setting(default, help)")
        if "section" in spec.metadata or not groups:
            groups.append((spec.metadata.get("section", "Settings"), []))
        groups[-1][1].append(spec)
    return groups


def env_value(value: Any) -> str:
    """A default as the environment variable would spell it (load_config reads it back equal)."""
    if value is None:
        return ""  # unset: "none" (a budget, for instance)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return ",".join(str(item) for item in value)
    if isinstance(value, Path) and value.is_relative_to(PROJECT_ROOT):
        return str(value.relative_to(PROJECT_ROOT))
    return str(value)


def _names(spec: Field[Any]) -> list[str]:
    return [spec.name.upper(), *spec.metadata["also"]]


def readme_table() -> str:
    """The configuration table of README.md, markers included."""
    lines = [README_START, "| Variable | Default | Meaning |", "|---|---|---|"]
    for title, specs in sections():
        lines.append(f"| **{title}** | | |")
        for spec in specs:
            value = env_value(spec.default)
            default = spec.metadata.get("default_text") or (f"`{value}`" if value else "—")
            help_text = spec.metadata["help"].replace("|", "\\|") + (" Secret." if spec.metadata["secret"] else "")
            lines.append(f"| {', '.join(f'`{n}`' for n in _names(spec))} | {default} | {help_text} |")
    lines.append(README_END)
    return "\n".join(lines)


def _comment(text: str) -> list[str]:
    return textwrap.wrap(text.replace("`", ""), WIDTH - 2, initial_indent="# ", subsequent_indent="# ")


def _section_line(title: str) -> str:
    head = f"# ---- {title} "
    return head + "-" * max(4, WIDTH - len(head))


def env_example() -> str:
    """The whole of `.env.example`."""
    out = [ENV_INTRO]
    for title, specs in sections():
        out.append(_section_line(title))
        for spec in specs:
            name, *others = _names(spec)
            out.extend(_comment(spec.metadata["help"]))
            if spec.metadata["secret"]:
                # The line right above the variable says it is a secret and how to pass it as a file.
                out.append(f"# [secret] Or {name}_FILE=/path of a file holding it.")
            value = "" if spec.metadata["secret"] else env_value(spec.default)
            out.append(f"{name}={value}" if spec.metadata["fill_in"] else f"# {name}={value}")
            out.extend(f"# {other}=" for other in others)
        out.append("")
    out.append(_section_line(COMPOSE_SECTION))
    for name, value, help_text in COMPOSE_ONLY:
        out.extend(_comment(help_text))
        out.append(f"# {name}={value}")
    return "\n".join(out) + "\n"


def readme_with_table(readme: str) -> str:
    """`readme` with the text between the markers replaced by the generated table."""
    start, end = readme.find(README_START), readme.find(README_END)
    if start < 0 or end < start:
        raise ValueError(f"README.md lacks the markers {README_START!r} and {README_END!r}")
    return readme[:start] + readme_table() + readme[end + len(README_END) :]


def write(root: Path = PROJECT_ROOT) -> list[str]:
    """Rewrite the README's table and `.env.example` under `root`; the names of the files changed."""
    changed = []
    for name, render in (
        ("README.md", lambda old: readme_with_table(old)),
        (".env.example", lambda _old: env_example()),
    ):
        path = root / name
        old = path.read_text() if path.exists() else ""
        new = render(old)
        if new != old:
            path.write_text(new)
            changed.append(name)
    return changed
