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
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import replace

from extauth.server import Settings

log = logging.getLogger(__name__)


def worker_settings(settings: Settings, index: int) -> Settings:
    http = settings.http_address
    if http is not None:
        host, _, port = http.rpartition(":")
        http = f"{host}:{int(port) + index}" if int(port) else http
    return replace(settings, http_address=http, reuse_port=True)


def run_workers(settings: Settings, count: int, serve_one: Callable[[Settings], int]) -> int:
    children: dict[int, int] = {}
    for index in range(count):
        pid = os.fork()
        if pid == 0:  # the worker
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            for handler in logging.getLogger().handlers:
                handler.setFormatter(
                    logging.Formatter(
                        f"%(asctime)s %(levelname)s [worker {index}] %(name)s: %(message)s"
                    )
                )
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
        elif code != 0:
            failed = True
    return 1 if failed else 0
