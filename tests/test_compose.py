"""docker-compose.yml checked as far as a machine without a Docker engine can: it parses, every
command it runs exists and is the one the native tests run, and ports and settings agree."""

from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from paylayer.callers import CALLER_NAMES
from paylayer.cli import build_parser
from paylayer.ops.services import MIGRATED, MODULES
from paylayer.settings import DEFAULT_ADDRS, REPO_ROOT, Settings

APP_SERVICES = tuple(MODULES)
# Published ports: the gateway's to the world, the console's to the host's loopback only.
PUBLISHED = {"gateway": ["8080:8080"], "console": ["127.0.0.1:8081:8081"]}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    return loaded


def _port(addr: str) -> int:
    return int(addr.rsplit(":", 1)[1])


def _settings_read_from_env() -> set[str]:
    return Settings.variables()


def test_every_service_is_defined_with_its_dependencies(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"postgres", "migrate", *APP_SERVICES}
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in APP_SERVICES:
        conditions = services[name]["depends_on"]
        assert all(
            c["condition"] in ("service_healthy", "service_completed_successfully")
            for c in conditions.values()
        )
    assert services["gateway"]["depends_on"]["payments"]["condition"] == "service_healthy"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_each_service_runs_the_same_module_the_native_stack_runs(
    compose: dict[str, Any], name: str
) -> None:
    command = compose["services"][name]["command"]
    assert command == ["python", "-m", MODULES[name]]
    assert importlib.util.find_spec(MODULES[name]) is not None


@pytest.mark.parametrize("name", APP_SERVICES)
def test_healthchecks_are_real_cli_commands_on_grpc_health(
    compose: dict[str, Any], name: str
) -> None:
    test = compose["services"][name]["healthcheck"]["test"]
    assert test[:2] == ["CMD", "paylayer"]
    args = build_parser().parse_args(test[2:])
    assert args.command == "health" and args.services == [name]


def test_the_migration_job_runs_real_cli_commands_one_role_per_schema(
    compose: dict[str, Any],
) -> None:
    script = compose["services"]["migrate"]["command"][-1]
    steps = [shlex.split(step) for step in script.split("&&")]
    migrated = []
    for step in steps:
        assert step[0].startswith("DATABASE_URL=")
        args = build_parser().parse_args(step[2:])
        assert step[1] == "paylayer" and args.command == "migrate"
        migrated += args.services
    assert sorted(migrated) == sorted(MIGRATED)
    env = compose["services"]["migrate"]["environment"]
    for service in migrated:
        assert env[f"{service.upper()}_DATABASE_URL"].startswith(f"postgresql://{service}:")


@pytest.mark.parametrize("name", APP_SERVICES)
def test_ports_and_addresses_agree_with_the_code(compose: dict[str, Any], name: str) -> None:
    service = compose["services"][name]
    env = {**compose["x-env"], **service["environment"]}
    port = _port(DEFAULT_ADDRS[name])
    assert _port(env["LISTEN_ADDR"]) == port
    # Closed by default: only the gateway's webhook port leaves the compose network.
    assert service.get("ports", []) == PUBLISHED.get(name, [])
    for other in ("payments", "entitlements", "accounts"):
        assert env[f"{other.upper()}_ADDR"] == f"{other}:{_port(DEFAULT_ADDRS[other])}"
    unknown = set(env) - _settings_read_from_env()
    assert not unknown, f"compose sets variables the code never reads: {unknown}"
    if name not in ("gateway", "console"):
        # The service's own DML-only role; its owner role only migrates.
        assert env["DATABASE_URL"].startswith(f"postgresql://{name}_app:")
        assert int(env["DATABASE_POOL_SIZE"]) > 0
    # Each process presents its own caller token; entitlements calls no one and holds none,
    # the console calls with the token its operator signed in with.
    token = env.get("INTERNAL_TOKEN")
    if name in ("entitlements", "console"):
        assert token is None
    else:
        assert token == f"${{{name.upper()}_TOKEN:?set {name.upper()}_TOKEN}}"


# The variables that carry a caller's token: each caller's own, and the table of them all.
CALLER_TOKEN_VARIABLES = {f"{name.upper()}_TOKEN" for name in CALLER_NAMES} | {"CALLER_TOKENS"}
# The processes that authenticate callers, and so read CALLER_TOKENS.
AUTHENTICATORS = {"payments", "entitlements", "accounts", "console"}


def _variables_referenced(value: object) -> set[str]:
    return set(re.findall(r"\$\{([A-Z0-9_]+)", str(value)))


@pytest.mark.parametrize("name", APP_SERVICES)
def test_each_process_holds_its_own_caller_token_and_no_one_elses(
    compose: dict[str, Any], name: str
) -> None:
    """A process broken into yields its own token only: the Internet-facing gateway above all
    must not carry CALLER_TOKENS, whose plain entries would let it call as anyone."""
    env = compose["services"][name]["environment"]
    referenced = set().union(*(_variables_referenced(v) for v in env.values()))
    own = {f"{name.upper()}_TOKEN"} & CALLER_TOKEN_VARIABLES
    if name in AUTHENTICATORS:
        own.add("CALLER_TOKENS")
    assert referenced & CALLER_TOKEN_VARIABLES == own
    assert ("CALLER_TOKENS" in env) == (name in AUTHENTICATORS)


def test_the_gateway_holds_only_its_own_token(compose: dict[str, Any]) -> None:
    env = compose["services"]["gateway"]["environment"]
    assert "CALLER_TOKENS" not in env
    assert "CALLER_TOKENS" not in compose["x-env"]
    referenced = set().union(*(_variables_referenced(v) for v in env.values()))
    assert referenced & CALLER_TOKEN_VARIABLES == {"GATEWAY_TOKEN"}
    assert env["INTERNAL_TOKEN"] == "${GATEWAY_TOKEN:?set GATEWAY_TOKEN}"


def test_the_published_ports_are_the_gateways_and_the_consoles_on_loopback(
    compose: dict[str, Any],
) -> None:
    published = {n: s["ports"] for n, s in compose["services"].items() if s.get("ports")}
    assert published == PUBLISHED


# Connections a process opens beside its pool: each one's dedicated LISTEN connection
# (entitlements' cache invalidation, payments' inbox wake-up).
OUT_OF_POOL_CONNECTIONS = {"entitlements": 1, "payments": 1}


def test_the_out_of_pool_connections_are_the_ones_the_code_opens() -> None:
    """A new asyncpg.connect() in a service is a connection no pool bounds: count it here."""
    opened = {
        service: sum(
            path.read_text().count("asyncpg.connect(")
            for path in (REPO_ROOT / MODULES[service]).rglob("*.py")
        )
        for service in APP_SERVICES
    }
    assert {s: n for s, n in opened.items() if n} == OUT_OF_POOL_CONNECTIONS


def test_compose_pools_fit_in_postgres_connections(compose: dict[str, Any]) -> None:
    pools = [
        int(s["environment"]["DATABASE_POOL_SIZE"])
        for s in compose["services"].values()
        if "DATABASE_POOL_SIZE" in s.get("environment", {})
    ]
    # Plus the LISTEN connections outside the pools and the reserved superuser slots.
    assert sum(pools) + sum(OUT_OF_POOL_CONNECTIONS.values()) <= 100 - 3


def test_stop_grace_outlasts_the_services_own_grace(compose: dict[str, Any]) -> None:
    grace = float(compose["x-env"]["SHUTDOWN_GRACE_SECONDS"])
    assert float(compose["x-app"]["stop_grace_period"].rstrip("s")) > grace


def test_the_dockerfile_copies_only_what_exists_and_generates_the_protos() -> None:
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    for line in dockerfile.splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (REPO_ROOT / source).exists(), source
    # The install runs setup.py's build hook, which generates the protos.
    assert "setup.py" in dockerfile and "pip install" in dockerfile
    assert "grpc_tools.protoc" in (REPO_ROOT / "setup.py").read_text()


def test_postgres_mounts_the_init_script_that_creates_the_roles(compose: dict[str, Any]) -> None:
    volumes = compose["services"]["postgres"]["volumes"]
    for volume in volumes:
        source = volume.split(":")[0]
        if source.startswith("./"):
            assert (REPO_ROOT / Path(source)).exists(), source
    assert any("roles.sql" in v for v in volumes)
