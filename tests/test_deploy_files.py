"""Deployment files: Dockerfile, compose files, swarm.yml and .env.example.

No Docker engine is needed: hadolint and check-jsonschema (compose-spec schema, built in, offline)
lint the files, the properties production depends on are read from the parsed files, and the
image's health probe is run against a live server.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from services import config_docs
from services.config import Config, load_config
from tests.helpers import PROJECT_ROOT, TestServer, free_port

BIN = Path(sys.executable).parent
COMPOSE_FILES = ["docker-compose.yml", "docker-compose.external.yml", "swarm.yml"]
SECRETS = ["SESSION_SECRET", "DATABASE_URL", "GITHUB_CLIENT_SECRET", "ENCRYPTION_KEY"]
SERVICE = "internal-api-server"


def tool(name: str) -> str:
    path = BIN / name
    assert path.exists(), f"{name} is missing: run `make install` (it is pinned in requirements-dev.txt)"
    return str(path)


def run(*args: str, cwd: Path = PROJECT_ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


def load_yaml(name: str) -> dict[str, Any]:
    return YAML(typ="safe", pure=True).load((PROJECT_ROOT / name).read_text())


def seconds(duration: str) -> float:
    """A compose duration ("45s", "1m30s", "1h") in seconds."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|m|s|us|ns)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"not a duration: {duration!r}"
    scale = {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}
    return sum(float(n) * scale[u] for n, u in parts)


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in (PROJECT_ROOT / "Dockerfile").read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        pending += stripped[:-1] + " " if stripped.endswith("\\") else stripped
        if not stripped.endswith("\\"):
            keyword, _, rest = pending.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
            pending = ""
    return instructions


def dockerfile_healthcheck() -> list[str]:
    [healthcheck] = [args for keyword, args in dockerfile_instructions() if keyword == "HEALTHCHECK"]
    return json.loads(healthcheck[healthcheck.index("CMD") + 3 :])


def config_variables() -> list[str]:
    """Every NAME that load_config reads, found in its source and its Config fields (each read
    by its name) rather than listed by hand."""
    source = (PROJECT_ROOT / "services" / "config.py").read_text()
    names = re.findall(r"_(?:read|text|number|bool|url)\(\s*env,\s*\"([A-Z][A-Z0-9_]*)\"", source)
    return list(dict.fromkeys([*names, *(spec.name.upper() for spec in dataclasses.fields(Config))]))


def env_example() -> dict[str, tuple[str, bool, str]]:
    """NAME -> (shown value, commented out, the comment line above it) for each line of .env.example."""
    entries: dict[str, tuple[str, bool, str]] = {}
    previous = ""
    for line in (PROJECT_ROOT / ".env.example").read_text().splitlines():
        match = re.match(r"^(#\s*)?([A-Z][A-Z0-9_]*)=(.*)$", line)
        if match:
            entries[match.group(2)] = (match.group(3), bool(match.group(1)), previous)
        previous = line
    return entries


# ---- linters ------------------------------------------------------------------------------------


def test_hadolint_passes_the_dockerfile() -> None:
    result = run(tool("hadolint"), "--no-color", "Dockerfile")
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_rules_are_only_ignored_inline_with_a_reason() -> None:
    assert not list(PROJECT_ROOT.glob(".hadolint.y*ml")), "no project-wide hadolint ignores"
    lines = (PROJECT_ROOT / "Dockerfile").read_text().splitlines()
    for number, line in enumerate(lines):
        if "hadolint ignore" in line:
            assert lines[number - 1].startswith("#") and "hadolint" not in lines[number - 1], (
                f"Dockerfile line {number + 1}: say why above an inline ignore"
            )


def test_hadolint_does_fail_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y git\nCMD python server.py\n")
    result = run(tool("hadolint"), "--no-color", str(bad), cwd=tmp_path)
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # the `latest` tag


def test_compose_and_swarm_files_match_the_compose_schema() -> None:
    result = run(tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", *COMPOSE_FILES)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_compose_schema_check_does_fail_a_bad_file(tmp_path: Path) -> None:
    bad = tmp_path / "swarm.yml"
    bad.write_text((PROJECT_ROOT / "swarm.yml").read_text().replace("order: start-first", "order: sideways", 1))
    result = run(tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(bad), cwd=tmp_path)
    assert result.returncode != 0
    assert "sideways" in result.stdout + result.stderr


@pytest.mark.skipif(shutil.which("docker") is None, reason="no docker CLI on this machine")
def test_docker_stack_loader_accepts_swarm_yml() -> None:
    """`docker stack config` runs Docker's own stack loader and needs no engine."""
    env = {**os.environ, "API_IMAGE": "registry.example.com/internal-api-server:1.2.3"}
    result = subprocess.run(
        ["docker", "stack", "config", "-c", "swarm.yml"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "image: registry.example.com/internal-api-server:1.2.3" in result.stdout


# ---- Dockerfile ---------------------------------------------------------------------------------


def test_dockerfile_is_multi_stage_on_a_pinned_slim_python_311() -> None:
    bases = [args.split()[0] for keyword, args in dockerfile_instructions() if keyword == "FROM"]
    assert len(bases) >= 2
    for base in bases:
        assert re.fullmatch(r"python:3\.11\.\d+-slim(-[a-z]+)?", base), base


def test_dockerfile_runtime_settings() -> None:
    instructions = dockerfile_instructions()
    text = "\n".join(f"{keyword} {args}" for keyword, args in instructions)
    runtime = text[text.rindex("FROM ") :]
    assert re.search(r"apt-get install [^\n]*\bgit\b", runtime)
    # psql for `db shell`, since the embedded PostgreSQL (which brings its own) is not installed.
    assert re.search(r"apt-get install [^\n]*\bpostgresql-client\b", runtime)
    # Neither the base image nor the venv keeps pip and setuptools: production installs nothing.
    assert re.search(r"^RUN .*python -m pip uninstall --yes .*\bpip setuptools\b", runtime, re.M)
    assert re.search(r"/opt/venv/bin/python -m pip uninstall --yes .*\bpip setuptools\b", text)
    for setting in ("NODE_ENV=production", "PORT=3001", "WORKSPACE_DIR=/workspace"):
        assert setting in runtime
    assert "chown app:app /workspace" in runtime
    for name in ("BUILD_COMMIT_SHA", "BUILD_TIMESTAMP", "BUILD_IMAGE_TAG"):
        assert re.search(rf"^ARG {name}\b", runtime, re.M)
        assert f"{name}=${{{name}}}" in runtime  # the build argument reaches the environment
    [user] = [args for keyword, args in instructions if keyword == "USER"]
    assert user.split(":")[0] not in ("root", "0")
    assert "--uid 10001" in runtime
    assert ("STOPSIGNAL", "SIGTERM") in instructions


def test_dockerfile_runs_python_directly_so_sigterm_reaches_it() -> None:
    instructions = dockerfile_instructions()
    [cmd] = [args for keyword, args in instructions if keyword == "CMD"]
    assert json.loads(cmd) == ["python", "server.py"]
    for keyword, args in instructions:
        if keyword == "ENTRYPOINT":
            entrypoint = json.loads(args)  # exec form, no shell in between
            assert Path(entrypoint[0]).name == "tini" and "sh" not in entrypoint


def test_healthcheck_probes_liveness_with_python_not_curl() -> None:
    probe = dockerfile_healthcheck()
    assert probe[:2] == ["python", "-c"]
    # /live, never /health: a database outage must not get every task restarted (issue 21).
    assert "/live'" in probe[2] and "/health" not in probe[2] and "curl" not in " ".join(probe)
    swarm = load_yaml("swarm.yml")["services"][SERVICE]["healthcheck"]["test"]
    assert swarm == ["CMD", *probe], "swarm.yml and the Dockerfile must probe the same way"


async def probe_exit_code(port: int) -> int:
    probe = dockerfile_healthcheck()
    env = {**os.environ, "PORT": str(port)}
    env.pop("API_PORT", None)
    process = await asyncio.create_subprocess_exec(sys.executable, *probe[1:], env=env)
    return await asyncio.wait_for(process.wait(), 30)


async def test_healthcheck_command_passes_against_a_live_server(server: TestServer) -> None:
    assert await probe_exit_code(server.port) == 0


async def test_healthcheck_command_fails_when_nothing_answers() -> None:
    assert await probe_exit_code(free_port()) != 0


def test_dockerignore_keeps_secrets_and_local_state_out_of_the_image() -> None:
    ignored = {
        line.strip() for line in (PROJECT_ROOT / ".dockerignore").read_text().splitlines() if line.strip()[:1] != "#"
    }
    for entry in (".env", ".venv", ".data", ".git"):
        assert entry in ignored
    for needed in ("server.py", "handlers", "services", "importer", "queries", "migrations", "requirements.txt"):
        assert needed not in ignored


# ---- .env.example -------------------------------------------------------------------------------


REGENERATE = "run `.venv/bin/python server.py config docs` after changing a setting in services/config.py"


def test_readme_configuration_table_is_generated_from_the_config_fields() -> None:
    """Like Datasette's test_settings_are_documented: the table is the fields' help, rendered."""
    readme = (PROJECT_ROOT / "README.md").read_text()
    assert config_docs.readme_table() in readme, REGENERATE
    for spec in dataclasses.fields(Config):
        assert f"| `{spec.name.upper()}`" in config_docs.readme_table(), spec.name


def test_env_example_is_generated_from_the_config_fields() -> None:
    assert (PROJECT_ROOT / ".env.example").read_text() == config_docs.env_example(), REGENERATE


def test_every_setting_has_its_help_and_a_group() -> None:
    specs = [spec for _title, group in config_docs.sections() for spec in group]
    assert [spec.name for spec in specs] == [spec.name for spec in dataclasses.fields(Config)]
    for spec in specs:
        assert spec.metadata["help"].strip(), f"Config.{spec.name}: say what it does in setting(default, help)"
    assert "section" in dataclasses.fields(Config)[0].metadata  # the first field opens a group


def test_config_docs_command_rewrites_a_stale_table_and_env_example(tmp_path: Path) -> None:
    """What `server.py config docs` does, on copies: a hand-written row and an edited .env.example
    are replaced by the generated text; the README around the markers is kept."""
    readme = (PROJECT_ROOT / "README.md").read_text()
    end = readme.index(config_docs.README_END)
    stale = readme[:end] + "| `NEW_SETTING` | `1` | written by hand |\n" + readme[end:]
    (tmp_path / "README.md").write_text(stale)
    (tmp_path / ".env.example").write_text("# PORT=1\n")
    assert config_docs.write(tmp_path) == ["README.md", ".env.example"]
    assert (tmp_path / "README.md").read_text() == readme
    assert (tmp_path / ".env.example").read_text() == config_docs.env_example()
    assert config_docs.write(tmp_path) == []


def test_config_docs_command_runs_without_a_configuration(tmp_path: Path) -> None:
    """It needs no valid settings: a production environment without secrets may run it."""
    env = {**os.environ, "NODE_ENV": "production", "DATABASE_URL": "", "SESSION_SECRET": ""}
    result = subprocess.run(
        [sys.executable, "server.py", "config", "docs"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "up to date" in result.stdout


def test_env_example_lists_every_variable_load_config_reads() -> None:
    names = config_variables()
    assert len(names) >= 30 and {"DATABASE_URL", "SESSION_SECRET", "PORT"} <= set(names)  # the regex still works
    missing = [name for name in names if name not in env_example()]
    assert not missing, f".env.example lacks {missing}"


def test_env_example_marks_secrets_and_holds_no_values_for_them() -> None:
    entries = env_example()
    text = (PROJECT_ROOT / ".env.example").read_text()
    assert "NAME_FILE" in text
    for name in SECRETS:
        value, _, comment = entries[name]
        assert value == "", f"{name} must not have a value in .env.example"
        assert "[secret]" in comment and f"{name}_FILE" in comment, comment


def test_env_example_defaults_are_the_real_defaults() -> None:
    """Uncommenting every documented default changes nothing."""
    base = {"SESSION_SECRET": "x" * 32}
    documented = {name: value for name, (value, commented, _) in env_example().items() if commented and value}
    assert len(documented) >= 25
    assert load_config({**documented, **base}) == load_config(base)


# ---- swarm.yml ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def swarm() -> dict[str, Any]:
    return load_yaml("swarm.yml")


@pytest.fixture(scope="module")
def swarm_service(swarm: dict[str, Any]) -> dict[str, Any]:
    return swarm["services"][SERVICE]


def test_swarm_runs_replicas_with_health_gated_rolling_updates(swarm_service: dict[str, Any]) -> None:
    deploy = swarm_service["deploy"]
    assert deploy.get("mode", "replicated") == "replicated" and deploy["replicas"] >= 2
    update = deploy["update_config"]
    assert update["order"] == "start-first"
    assert update["failure_action"] == "rollback"
    assert update["parallelism"] == 1
    # A new task is watched at least as long as its health check needs to call it unhealthy.
    health = swarm_service["healthcheck"]
    needed = seconds(health["start_period"]) + seconds(health["interval"]) * health["retries"]
    assert seconds(update["monitor"]) >= needed
    assert deploy["rollback_config"]["parallelism"] >= 1


def test_swarm_stop_grace_period_outlasts_the_stream_drain(swarm_service: dict[str, Any]) -> None:
    drain = float(swarm_service["environment"].get("SHUTDOWN_GRACE_SECONDS", Config.shutdown_grace_seconds))
    assert seconds(swarm_service["stop_grace_period"]) >= drain + 15
    assert swarm_service.get("stop_signal", "SIGTERM") == "SIGTERM"


def test_swarm_passes_secrets_as_files(swarm: dict[str, Any], swarm_service: dict[str, Any]) -> None:
    environment = swarm_service["environment"]
    mounted = {entry["source"] if isinstance(entry, dict) else entry for entry in swarm_service["secrets"]}
    for name in SECRETS:
        assert name not in environment, f"{name} must come from a secret file, not a variable"
        path = environment[f"{name}_FILE"]
        secret = Path(path).name
        assert path == f"/run/secrets/{secret}" and secret in mounted
        assert swarm["secrets"][secret] == {"external": True}


def test_swarm_raises_the_open_files_limit(swarm_service: dict[str, Any]) -> None:
    nofile = swarm_service["ulimits"]["nofile"]
    soft, hard = (nofile["soft"], nofile["hard"]) if isinstance(nofile, dict) else (nofile, nofile)
    assert soft >= 65536 and hard >= soft


def test_swarm_is_reachable_only_on_dokploy_network(swarm: dict[str, Any], swarm_service: dict[str, Any]) -> None:
    assert "ports" not in swarm_service
    assert swarm_service["networks"] == ["dokploy-network"]
    assert swarm["networks"]["dokploy-network"]["external"] is True
    assert swarm_service["environment"]["NODE_ENV"] == "production"


# ---- compose files ------------------------------------------------------------------------------


def test_local_compose_runs_the_server_on_its_own_postgres() -> None:
    services = load_yaml("docker-compose.yml")["services"]
    db, api = services["postgres"], services[SERVICE]
    assert re.fullmatch(r"postgres:1[67](\.\d+)*-alpine", db["image"])
    assert "healthcheck" in db and any(v.endswith(":/var/lib/postgresql/data") for v in db["volumes"])
    assert api["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "@postgres:5432/" in api["environment"]["DATABASE_URL"]
    assert api["environment"]["SESSION_SECRET"].startswith("${SESSION_SECRET")
    assert all(port.startswith("127.0.0.1:") for port in api["ports"]), "publish on loopback only"
    assert seconds(api["stop_grace_period"]) >= Config.shutdown_grace_seconds + 15


def test_external_compose_joins_dokploy_network_without_ports() -> None:
    compose = load_yaml("docker-compose.external.yml")
    api = compose["services"][SERVICE]
    assert "ports" not in api and "postgres" not in compose["services"]
    assert api["networks"] == ["dokploy-network"]
    assert compose["networks"]["dokploy-network"]["external"] is True
    assert api["environment"]["DATABASE_URL"].startswith("${DATABASE_URL:?")
    assert seconds(api["stop_grace_period"]) >= Config.shutdown_grace_seconds + 15


def test_compose_files_needing_compose_2_24_say_so() -> None:
    """`env_file` entries with `path`/`required` are read only by Docker Compose 2.24 and later;
    older ones stop with a schema error that does not name the version."""
    needing = [
        name
        for name in ("docker-compose.yml", "docker-compose.external.yml")
        for service in load_yaml(name)["services"].values()
        if any(isinstance(entry, dict) and "required" in entry for entry in service.get("env_file", []))
    ]
    assert needing, "no compose file uses `env_file: required` any more: drop this test and the README note"
    readme = (PROJECT_ROOT / "README.md").read_text()
    assert "Docker Compose 2.24 or later" in readme
    for name in needing:
        assert "Compose 2.24 or later" in (PROJECT_ROOT / name).read_text(), name
