"""`extauth serve --workers N`: N processes, each on the shared gRPC port and its own.

One Python process serves Checks on one core; a second process is how the service uses a
second core. Every worker listens on the shared port (SO_REUSEPORT), as before, and on a
port of its own (`worker_grpc_port`: the shared port + 1 + i). The kernel spreads the
shared port's *connections* by a hash of their addresses, and Envoy holds few: in half
the measured runs one worker took every Check (BENCHMARKS.md, "Workers"). Listed as
endpoints of Envoy's extauth cluster (`extauth envoy-config --workers N`), the own ports
let Envoy balance Checks itself and health-check each worker.

Each worker is a full service: its own sources, policy, health (grpc.health.v1 on both
of its ports) and status endpoint (the --http-address port + i). The parent forks before
any gRPC use and forwards SIGTERM/SIGINT. A worker that dies is started again alone, its
index and ports unchanged; the others keep serving, and Envoy's health check takes the
dead one's endpoint out meanwhile. A worker that cannot start at all (its port taken)
stops the unit with exit 2; one that keeps dying soon after each start (`Restarts`)
stops it with exit 1, for the supervisor to see.

Workers never outlive the parent: each asks the kernel for SIGKILL when its parent dies
(PR_SET_PDEATHSIG), so after `kill -9` of the parent the ports are free at once and a
restarted unit does not share them with orphans still serving the old configuration.
SO_REUSEPORT would let a second unit join the shared port silently; the parent holds a
lock named after each port of the unit (an abstract Unix socket, released by the kernel
when the last process of the unit exits) and a second unit refuses to start.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from extauth import logformat

if TYPE_CHECKING:  # the Envoy config generator imports this module without the server
    from extauth.server import Settings

log = logging.getLogger(__name__)

# The highest port number; a unit's ports must all fit below it.
MAX_PORT = 65535


def worker_grpc_port(port: int, index: int) -> int:
    """Worker `index`'s own gRPC port: the one layout extauth binds and Envoy configs list."""
    return port + 1 + index


def worker_http_port(port: int, index: int) -> int:
    """Worker `index`'s /metrics, /healthz and status page port (--http-address's + i).
    Port 0 stays 0, each worker taking a port of the kernel's choosing: 0 + i would be
    a well-known port, bound silently by a root process."""
    return port + index if port else 0


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def unit_ports(grpc_address: str, count: int) -> list[int]:
    """Every gRPC port a unit of `count` workers serves: the shared one, then each worker's."""
    port = _split(grpc_address)[1]
    return [port, *(worker_grpc_port(port, i) for i in range(count))]


def port_problem(grpc_address: str, http_address: str | None, count: int) -> str | None:
    """Why a unit of `count` workers cannot have these addresses, or None. Checked before
    anything starts: a worker's gRPC port landing on another worker's HTTP port would
    otherwise surface as one worker failing to bind, after the others have loaded."""
    grpc_ports = unit_ports(grpc_address, count)
    if grpc_ports[0] == 0:
        # The workers' own ports would be 1, 2, ...: well known ports, bound silently as root.
        return "--workers needs a fixed --grpc-address port"
    if grpc_ports[-1] > MAX_PORT:
        return (
            f"--workers {count} needs gRPC ports {grpc_ports[0]}-{grpc_ports[-1]} "
            f"(worker i's own port is --grpc-address's + 1 + i), past {MAX_PORT}"
        )
    if http_address is None:
        return None
    http = _split(http_address)[1]
    if http == 0:
        return None
    http_ports = [worker_http_port(http, i) for i in range(count)]
    if http_ports[-1] > MAX_PORT:
        return f"--workers {count} needs HTTP ports {http}-{http_ports[-1]}, past {MAX_PORT}"
    clash = sorted(set(grpc_ports) & set(http_ports))
    if clash:
        return (
            f"--workers {count}: gRPC ports {grpc_ports[0]}-{grpc_ports[-1]} (the shared "
            f"port, then each worker's own) and HTTP ports {http}-{http_ports[-1]} (worker i "
            f"on --http-address's + i) overlap at {', '.join(map(str, clash))}; move one"
        )
    return None


def worker_settings(settings: Settings, index: int) -> Settings:
    http = settings.http_address
    if http is not None:
        host, port = _split(http)
        http = f"{host}:{worker_http_port(port, index)}"
    host, port = _split(settings.grpc_address)
    own = f"{host}:{worker_grpc_port(port, index)}"
    return replace(settings, http_address=http, reuse_port=True, worker_grpc_address=own)


_PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """SIGKILL this process when its parent dies; exit now if it already has."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:  # it died between fork() and prctl()
        os._exit(1)


class PortTaken(Exception):
    """Another extauth unit serves this gRPC port."""


def port_lock(address: str) -> socket.socket:
    """Hold the unit's claim on the gRPC port for as long as any of its processes lives.

    An abstract Unix socket: no file to clean up after a crash, gone with the last
    process holding it, and scoped to the network namespace, as the port is."""
    return _lock(_split(address)[1])


def _lock(port: int) -> socket.socket:
    lock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        lock.bind(f"\0extauth-grpc-port-{port}")
    except OSError as exc:
        lock.close()
        raise PortTaken(f"port {port} is already served by another extauth unit") from exc
    return lock


def unit_locks(grpc_address: str, count: int) -> list[socket.socket]:
    """The claims on every port of a unit of `count` workers (`port_lock`, each)."""
    locks: list[socket.socket] = []
    try:
        for port in unit_ports(grpc_address, count):
            locks.append(_lock(port))
    except PortTaken:
        for lock in locks:
            lock.close()
        raise
    return locks


# A worker that dies this soon after it started serving counts as a quick death: it is
# started again after a back-off, and after MAX_QUICK_DEATHS in a row the unit gives up.
QUICK_DEATH = 30.0
MAX_QUICK_DEATHS = 5
MAX_BACKOFF = 8.0


@dataclass
class Restarts:
    """When to start a dead worker again, and when to give up: what it died of may be
    what kills it at start (a file that crashes the loader, memory), and restarting it
    at once forever would hide that from the supervisor and burn a core."""

    quick: dict[int, int] = field(default_factory=dict)

    def delay(self, index: int, lived: float) -> float | None:
        """Seconds to wait before worker `index` starts again (it lived `lived` seconds),
        or None: give up."""
        quick = self.quick.get(index, 0) + 1 if lived < QUICK_DEATH else 0
        self.quick[index] = quick
        if quick >= MAX_QUICK_DEATHS:
            return None
        return 0.0 if quick <= 1 else min(2.0 ** (quick - 2), MAX_BACKOFF)


@dataclass
class _Worker:
    index: int
    serving_from: float  # monotonic: the fork, plus its back-off
    restarted: bool


def run_workers(settings: Settings, count: int, serve_one: Callable[[Settings], int]) -> int:
    try:
        locks = unit_locks(settings.grpc_address, count)
    except PortTaken as exc:
        log.error("cannot listen on %s: %s", settings.grpc_address, exc)
        return 2
    parent = os.getpid()
    children: dict[int, _Worker] = {}
    stopping = False

    def start(index: int, delay: float, restarted: bool) -> int:
        pid = os.fork()
        if pid == 0:  # the worker
            die_with_parent(parent)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            logformat.tag_worker(index)
            code = 1
            try:
                # The back-off is the child's, so the parent keeps waiting on all of them.
                time.sleep(delay)
                code = serve_one(worker_settings(settings, index))
            except BaseException as exc:  # os._exit below would swallow the traceback
                log.error("worker %d failed: %s: %s", index, type(exc).__name__, exc)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        children[pid] = _Worker(index, time.monotonic() + delay, restarted)
        if stopping:  # the stop signal came between the fork and the line above
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        return pid

    for index in range(count):
        start(index, 0.0, restarted=False)
    log.info("started %d workers: %s", count, sorted(children))

    def forward(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    result = 0
    restarts = Restarts()
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        worker = children.pop(pid, None)
        if worker is None:
            continue
        code = os.waitstatus_to_exitcode(status)
        if stopping:
            # Killed by the signal forwarded to it: a worker still starting up, before
            # it takes over SIGTERM itself, had nothing to drain; a clean stop too.
            if code not in (0, -signal.SIGTERM, -signal.SIGINT):
                result = result or 1
            continue
        if code == 2 and not worker.restarted:
            log.error("worker %d could not start (exit 2); stopping the others", worker.index)
            result = 2
            forward(signal.SIGTERM, None)
            continue
        lived = time.monotonic() - worker.serving_from
        delay = restarts.delay(worker.index, lived)
        if delay is None:
            log.error(
                "worker %d (pid %d) exited (%d) %d times in a row within %.0f s of starting; "
                "stopping the others",
                worker.index,
                pid,
                code,
                MAX_QUICK_DEATHS,
                QUICK_DEATH,
            )
            result = 1
            forward(signal.SIGTERM, None)
            continue
        new = start(worker.index, delay, restarted=True)
        log.error(
            "worker %d (pid %d) exited (%d) after %.1f s; started it again as pid %d%s",
            worker.index,
            pid,
            code,
            lived,
            new,
            f" in {delay:g} s" if delay else "",
        )
    for lock in locks:
        lock.close()
    return result
