"""The stack as processes: which to start, where each listens, how to stop them in order.

`paylayer dev`, the tests and the benchmarks all run the stack through this, so what is tested
is what developers run. Replicas of a gRPC service listen on their own ports; clients get the
list and spread calls over it (round_robin), as they would over DNS in Kubernetes.
"""

from __future__ import annotations

import ctypes
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

# Started in this order; stopped in the reverse, so the gateway goes first.
MODULES = {
    "accounts": "accounts_service",
    "entitlements": "entitlements_service",
    "payments": "payments_service",
    "gateway": "gateway",
    "console": "console",  # the operator console (HTTP), after the services it reads
}
GRPC_SERVICES = ("accounts", "entitlements", "payments")


# Ports handed out by `free_port` are below Linux's ephemeral range (32768 and up), so an
# outgoing connection cannot take one between the probe and the server's own bind.
_PORT_RANGE = (20000, 32000)
_handed_out: set[int] = set()


def free_port() -> int:
    """A port on 127.0.0.1 nothing listens on, not handed out before by this process."""
    while True:
        port = random.randint(*_PORT_RANGE)
        if port in _handed_out:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port


@dataclass(frozen=True)
class Instance:
    name: str  # "payments", then "payments-2", "payments-3" for replicas
    service: str
    listen_addr: str
    metrics_addr: str | None


def plan(
    replicas: int, address: Callable[[str, int], str], metrics: Callable[[str, int], str]
) -> list[Instance]:
    """Every process to run: `replicas` of each service, addressed by the given functions."""
    return [
        Instance(
            name=service if index == 0 else f"{service}-{index + 1}",
            service=service,
            listen_addr=address(service, index),
            metrics_addr=metrics(service, index),
        )
        for service in MODULES
        for index in range(replicas)
    ]


def shifted(addr: str, index: int, step: int = 100) -> str:
    """The address of replica `index`: the same host, the port moved up by `step` per replica."""
    host, port = addr.rsplit(":", 1)
    return f"{host}:{int(port) + step * index}"


def client_env(instances: list[Instance]) -> dict[str, str]:
    """*_ADDR for clients: every replica of a service, comma-separated."""
    env = {}
    for service in MODULES:
        addrs = [i.listen_addr for i in instances if i.service == service]
        env[f"{service.upper()}_ADDR"] = ",".join(addrs)
    return env


PARENT_PID_VARIABLE = "PAYLAYER_PARENT_PID"


def die_with_parent() -> None:
    """Called first thing by every service: end with the launcher, so none is orphaned.

    Done in the child rather than with Popen's preexec_fn, which may deadlock a child forked
    from a parent that runs gRPC threads (the tests do).
    """
    parent = os.environ.get(PARENT_PID_VARIABLE)
    if not parent:
        return
    PR_SET_PDEATHSIG = 1
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return  # not Linux: the launcher's own stop is all there is
    if os.getppid() != int(parent):
        raise SystemExit("launcher gone before start")


def own_token(service: str, env: Mapping[str, str]) -> dict[str, str]:
    """INTERNAL_TOKEN for one process: its own name's token from CALLER_TOKENS (the last listed,
    the newest during a rotation), so no process holds another's credential. A process with no
    caller name of its own (entitlements calls no one) gets none."""
    if not env.get("CALLER_TOKENS"):
        return {}  # single-token mode: everyone presents INTERNAL_TOKEN
    own = [
        token.strip()
        for name, _, token in (e.partition(":") for e in env["CALLER_TOKENS"].split(","))
        if name.strip() == service and token.strip() and not token.strip().startswith("sha256=")
    ]
    return {"INTERNAL_TOKEN": own[-1] if own else ""}


def start(
    instance: Instance, env: Mapping[str, str], output: IO[bytes] | None = None
) -> subprocess.Popen[Any]:
    child_env = {
        **env,
        **own_token(instance.service, env),
        "LISTEN_ADDR": instance.listen_addr,
        PARENT_PID_VARIABLE: str(os.getpid()),
    }
    if instance.metrics_addr:
        child_env["METRICS_ADDR"] = instance.metrics_addr
    return subprocess.Popen(
        [sys.executable, "-m", MODULES[instance.service]],
        env=child_env,
        stdout=output,
        stderr=subprocess.STDOUT if output is not None else None,
        # Own session: a Ctrl-C reaches only the parent, which stops the children in order.
        start_new_session=True,
    )


def stop_all(children: Mapping[str, subprocess.Popen[Any]], grace: float) -> None:
    """SIGTERM in reverse start order, then wait out the grace; whatever is left is killed."""
    for child in reversed(list(children.values())):
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace + 5
    for child in children.values():
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def log_file(log_dir: Path, instance: Instance) -> IO[bytes]:
    return (log_dir / f"{instance.name}.log").open("ab")
