"""Sources read resources from the outside world and publish `Snapshot`s.

Every source has the same shape: an async iterator of snapshots whose first item is the
complete initial state (the service is ready once it has arrived) and whose later items
are complete states after each change. Sources do I/O only; compiling is `policy.py`'s.
"""

from collections.abc import AsyncIterator
from typing import Protocol

from extauth.snapshot import Snapshot


class Source(Protocol):
    def snapshots(self) -> AsyncIterator[Snapshot]: ...
