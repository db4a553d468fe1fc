"""`extauth serve --workers N`: N processes sharing one gRPC port (SO_REUSEPORT).

One Python process serves Checks on one core; a second process is how the service uses a
second core. The kernel spreads *connections* over the processes, so the Envoy configs
recycle their ext_authz connections (`max_requests_per_connection`) and allow several per
host, which keeps the spread even over time.

Each worker is a full service: its own sources, policy and status endpoint (worker i on
the --http-address port + i, so each can be scraped and probed). The parent forks before
any gRPC use, forwards SIGTERM/SIGINT, and fails fast: if one worker dies, it stops the
others and exits 1, so a supervisor (Kubernetes, systemd) restarts the whole unit rather
than leaving it half-sized.

Workers never outlive the parent: each asks the kernel for SIGKILL when its parent dies
(PR_SET_PDEATHSIG), so after `kill -9` of the parent the port is free at once and a
restarted unit does not share it with orphans still serving the old configuration.
SO_REUSEPORT would let a second unit join the port silently; the parent holds a lock
named after the port (an abstract Unix socket, released by the kernel when the last
process of the unit exits) and a second unit refuses to start.
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
from collections.abc import Callable
from dataclasses import replace

from extauth import logformat
from extauth.server import Settings

log = logging.getLogger(__name__)


def worker_settings(settings: Settings, index: int) -> Settings:
    http = settings.http_address
    if http is not None:
        host, _, port = http.rpartition(":")
        http = f"{host}:{int(port) + index}" if int(port) else http
    return replace(settings, http_address=http, reuse_port=True)


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
    port = int(address.rpartition(":")[2])
    lock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        lock.bind(f"\0extauth-grpc-port-{port}")
    except OSError as exc:
        lock.close()
        raise PortTaken(f"port {port} is already served by another extauth unit") from exc
    return lock


def run_workers(settings: Settings, count: int, serve_one: Callable[[Settings], int]) -> int:
    try:
        lock = port_lock(settings.grpc_address)
    except PortTaken as exc:
        log.error("cannot listen on %s: %s", settings.grpc_address, exc)
        return 2
    parent = os.getpid()
    children: dict[int, int] = {}
    for index in range(count):
        pid = os.fork()
        if pid == 0:  # the worker
            die_with_parent(parent)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            logformat.tag_worker(index)
            code = 1
            try:
                code = serve_one(worker_settings(settings, index))
            except BaseException as exc:  # os._exit below would swallow the traceback
                log.error("worker %d failed: %s: %s", index, type(exc).__name__, exc)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        children[pid] = index
    log.info("started %d workers: %s", count, sorted(children))

    stopping = False

    def forward(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    failed = False
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        index = children.pop(pid, -1)
        code = os.waitstatus_to_exitcode(status)
        if index < 0:
            continue
        if not stopping:
            log.error("worker %d (pid %d) exited (%d); stopping the others", index, pid, code)
            failed = True
            forward(signal.SIGTERM, None)
        elif code not in (0, -signal.SIGTERM, -signal.SIGINT):
            # Killed by the signal forwarded to it: a worker still starting up, before
            # it takes over SIGTERM itself, had nothing to drain; a clean stop too.
            failed = True
    lock.close()
    return 1 if failed else 0
