"""Where a definition was read, what is wrong with it, and how a failure is told safely.

The bottom of the vocabulary: no I/O, nothing imported but the standard library.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from pathlib import PurePath
from typing import NamedTuple


class Origin(NamedTuple):
    """Where a resource was read: file, 1-based line of its document, 1-based index.

    A named tuple, not a frozen dataclass: one is made per Secret, and at a million
    Secrets a frozen dataclass's __init__ alone costs a second.
    """

    path: str
    line: int
    document: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}" if self.line else self.path


@dataclass(frozen=True, slots=True)
class Problem:
    path: str
    line: int
    message: str
    warning: bool = False

    def __str__(self) -> str:
        prefix = "warning: " if self.warning else ""
        where = f"{self.path}:{self.line}" if self.line else self.path
        return f"{where}: {prefix}{self.message}"


def failure_site(exc: BaseException) -> str:
    """An exception as its type and the place it was raised (`ValueError at decide.py:12`),
    never its message: a message, like a traceback's locals, may quote what was being
    read or checked (a key). The one way a failure is told, in logs and in problems."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" at {PurePath(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
    return f"{type(exc).__name__}{where}"
