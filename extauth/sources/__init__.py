"""Sources read resources from the outside world and publish `Change`s.

Every source has the same shape: an async iterator of changes whose first item is the
complete initial state (the service is ready once every source's has arrived) and whose
later items say what was defined, redefined or removed. Sources do I/O only; applying
changes is `policy.py`'s.
"""

from collections.abc import AsyncIterator
from typing import Protocol

from extauth.snapshot import Change


class Source(Protocol):
    def changes(self) -> AsyncIterator[Change]: ...
