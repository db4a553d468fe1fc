"""Whether the API server is answering, asked on a clock rather than inferred from silence.

A watch on a quiet kind receives nothing for minutes, and so does a watch on a hung API
server (or a dead connection to it): silence proves nothing. So a `Heartbeat` asks a
question that must be answered, a list of one AuthConfig read from etcd (a quorum read:
it proves the storage answers too), every `interval` seconds, with a deadline. A missed
answer marks the API server lost at once: a warning, the metric `extauth_kube_api_up` 0,
and `/readyz` says so; the watches are kicked, so they resume on fresh connections (in a
cluster with several API servers, most likely on a healthy one). While lost it asks twice
a second; the first answer marks it back and wakes every watch out of its backoff, so
what changed meanwhile applies within a second or two of the API server answering.

A watch that fails asks at once (`check_soon`) rather than at the next beat: an outage
shorter than the interval is then noticed too, and ends with the watches woken, whatever
their backoff has grown to. If that question is answered, the failure was the watch's
own (a 403, a 410): the API server is not marked lost and the watch backs off as usual.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from extauth.sources.tuning import DEFAULTS
from extauth.sources.watching import describe

log = logging.getLogger(__name__)

# How often to ask while the API server is lost.
_LOST_INTERVAL = 0.5


class Heartbeat:
    def __init__(
        self,
        probe: Callable[[float], None],
        *,
        interval: float = DEFAULTS.heartbeat,
        on_lost: Callable[[], None] = lambda: None,
        on_back: Callable[[], None] = lambda: None,
    ) -> None:
        self._probe = probe  # raises when there is no answer within its argument (s)
        self.interval = interval
        self._on_lost = on_lost
        self._on_back = on_back
        self.up = True
        self.last_answer = time.monotonic()
        self.lost_count = 0  # times the API server was lost
        self._soon = threading.Event()

    def silent_for(self) -> float:
        """Seconds since the API server last answered (0 while it answers)."""
        return 0.0 if self.up else time.monotonic() - self.last_answer

    def describe(self) -> str | None:
        """For /readyz: None while the API server answers."""
        if self.up:
            return None
        return (
            f"kubernetes: the API server has not answered for {self.silent_for():.0f} s; "
            "serving the last state it sent (changes since are not applied yet)"
        )

    def check_soon(self) -> None:
        """Ask now (a watch failed), not at the next beat; also ends `run` once stopped."""
        self._soon.set()

    def run(self, stop: threading.Event) -> None:
        self.last_answer = time.monotonic()  # the source has just read the CRD
        while not stop.is_set():
            self._soon.wait(self.interval if self.up else _LOST_INTERVAL)
            self._soon.clear()
            if stop.is_set():
                return
            self.beat()

    def beat(self) -> None:
        # Never longer than the interval, and short enough that an answer after an
        # outage is seen within a few seconds.
        deadline = min(self.interval, 3.0)
        try:
            self._probe(deadline)
        except Exception as exc:
            if self.up:
                self.up = False
                self.lost_count += 1
                log.warning(
                    "kubernetes: the API server did not answer within %.1f s (%s); "
                    "restarting the watches, serving the last state meanwhile",
                    deadline,
                    describe(exc),
                )
                self._on_lost()
            return
        if not self.up:
            log.warning(
                "kubernetes: the API server answers again after %.1f s; resuming the watches",
                time.monotonic() - self.last_answer,
            )
            self.up = True
            self.last_answer = time.monotonic()
            self._on_back()
        self.last_answer = time.monotonic()
