"""What an operator may tune in the Kubernetes source, each number declared once.

`serve` makes its `--kube-*` options from these fields (their default, range, unit and
help: `ranges.py`), `KubernetesSource` takes the record whole, and the parts of the
source that pace themselves (watches, the heartbeat, the status writer, the Secret size
bound) take their defaults from `DEFAULTS`: a default is never written twice.
"""

from __future__ import annotations

from dataclasses import dataclass

from extauth.ranges import check, ranged


@dataclass(frozen=True, slots=True)
class Tuning:
    # fmt: off
    watch_timeout: int = ranged(300, 1, 3600, "SECONDS",
                                "restart each watch this often (server-side timeout)")
    heartbeat: float = ranged(10.0, 0.2, 60, "SECONDS",
                              "ask the API server this often whether it answers "
                              "(a hung one is noticed within this plus 3 s)")
    request_timeout: float = ranged(5.0, 0.2, 120, "SECONDS",
                                    "how long a list or watch request waits for the answer "
                                    "to start")
    # What extauth keeps of a Secret is its entries and labels. 1 MiB is the API server's
    # own bound on an object; a team's key and a few metadata entries are under 1 KiB.
    max_secret_bytes: int = ranged(16 * 1024, 256, 4 * 1024 * 1024, "BYTES",
                                   "refuse an API-key Secret whose entries and labels "
                                   "exceed this")
    # Per replica.
    status_rate: float = ranged(50.0, 0.1, 10_000, "PER_SECOND",
                                "at most this many AuthConfig status writes a second")
    # fmt: on

    def __post_init__(self) -> None:
        check(self)


DEFAULTS = Tuning()
