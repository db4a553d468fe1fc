"""Linux inotify through ctypes: the events that tell a finished file from one being
written.

watchfiles (and most watchers) report "changed" and nothing more; a file rewritten in
place (open, write half, pause, write the rest) looks changed twice. inotify says more:
IN_MODIFY while data is written, IN_CLOSE_WRITE when the writer closes the file,
IN_MOVED_TO when a finished file is renamed into place. `Inotify` is a thin reader of
those events, non-blocking, for an event loop's add_reader; what they mean for the config
directory is `files.py`'s.
"""

from __future__ import annotations

import ctypes
import os
import struct
from dataclasses import dataclass

IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_ISDIR = 0x40000000

_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC
_HEADER = struct.Struct("iIII")  # wd, mask, cookie, len

WATCHED = (
    IN_MODIFY
    | IN_ATTRIB
    | IN_CLOSE_WRITE
    | IN_MOVED_FROM
    | IN_MOVED_TO
    | IN_CREATE
    | IN_DELETE
    | IN_DELETE_SELF
    | IN_MOVE_SELF
    | IN_ONLYDIR
)


@dataclass(frozen=True, slots=True)
class Event:
    wd: int
    mask: int
    name: str  # "" for events about the watched directory itself, or an overflow


class Inotify:
    """One inotify instance. Raises OSError where inotify is not available."""

    def __init__(self) -> None:
        # The symbols already loaded into this process (libc among them), whatever the
        # C library is called here.
        self._libc = ctypes.CDLL(None, use_errno=True)
        if not hasattr(self._libc, "inotify_init1"):
            raise OSError("inotify is not available here")
        fd = self._libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            errno = ctypes.get_errno()
            raise OSError(errno, os.strerror(errno))
        self.fd: int = fd

    def add(self, directory: str) -> int:
        """Watch a directory (following a symlink to it); the watch descriptor."""
        wd: int = self._libc.inotify_add_watch(self.fd, os.fsencode(directory), WATCHED)
        if wd < 0:
            errno = ctypes.get_errno()
            raise OSError(errno, os.strerror(errno), directory)
        return wd

    def remove(self, wd: int) -> None:
        self._libc.inotify_rm_watch(self.fd, wd)  # fails harmlessly when already gone

    def read(self) -> list[Event]:
        """Every event queued now (none when the queue is empty)."""
        events: list[Event] = []
        while True:
            try:
                data = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                return events
            offset = 0
            while offset + _HEADER.size <= len(data):
                wd, mask, _, length = _HEADER.unpack_from(data, offset)
                offset += _HEADER.size
                raw = data[offset : offset + length].split(b"\0", 1)[0]
                offset += length
                events.append(Event(wd, mask, os.fsdecode(raw)))

    def close(self) -> None:
        os.close(self.fd)
