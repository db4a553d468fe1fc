"""How log records become lines: `--log-format text` (for people) or `json` (for a log
pipeline), one record per line either way.

A record may carry what a client or a file name chose (a path, a request id, a config id,
a file called `a\\n2026-01-01 ERROR forged`). So that none of it can forge a line:
- json: one object per line (time in RFC 3339 UTC, level, logger, message, then the
  record's `fields` as keys); `json.dumps` escapes every control character and every
  non-ASCII one, and each value is bounded;
- text: control characters in the message are escaped, and a traceback's lines are
  indented, so every line that begins with a time is a record's first line.
Tracebacks say the exception's type and where it was raised, frame by frame, never its
message: a message may quote request data (a key). The decision log passes its entry as
`fields` (`extra={"fields": {...}}`): keys of the JSON object, or its message in text.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import traceback
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, TextIO

FORMATS = ("text", "json")
# Bounds on what one record may write, whatever a caller passed.
MESSAGE_LIMIT = 8192
FIELD_LIMIT = 1024
TRACEBACK_FRAMES = 30
# Keys a record's fields may not take over.
_RESERVED = frozenset({"time", "level", "logger", "message", "worker", "traceback"})
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def one_line(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """`text` with control characters escaped, at most `limit` characters of it (and its
    real length when cut)."""
    cut = text if len(text) <= limit else f"{text[:limit]}... ({len(text)} chars)"
    return _CONTROL.sub(_escape, cut)


def _bounded(value: object) -> object:
    if isinstance(value, str):
        return (
            value if len(value) <= FIELD_LIMIT else f"{value[:FIELD_LIMIT]}... ({len(value)} chars)"
        )
    if value is None or isinstance(value, bool | int | float):
        return value
    return _bounded(str(value))


def frames(exc_info: Any) -> str:
    """An exception as its type and the places it passed, innermost last; no message."""
    kind, _, tb = exc_info
    places = traceback.extract_tb(tb)[-TRACEBACK_FRAMES:]
    where = " <- ".join(f"{f.filename}:{f.lineno} in {f.name}" for f in reversed(places))
    name = getattr(kind, "__name__", "exception")
    return f"{name} at {where}" if where else name


class _Base(logging.Formatter):
    def __init__(self) -> None:
        super().__init__()
        self.worker: int | None = None  # set in a --workers child

    @staticmethod
    def _fields(record: logging.LogRecord) -> Mapping[str, object] | None:
        fields = getattr(record, "fields", None)
        return fields if isinstance(fields, Mapping) else None


class JsonFormatter(_Base):
    def format(self, record: logging.LogRecord) -> str:
        fields = self._fields(record)
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            # A record that carries fields says what it is in a word; they are the rest.
            "message": getattr(record, "brief", None) if fields else None,
        }
        if line["message"] is None:
            message = record.getMessage()
            if len(message) > MESSAGE_LIMIT:
                message = f"{message[:MESSAGE_LIMIT]}... ({len(message)} chars)"
            line["message"] = message
        if self.worker is not None:
            line["worker"] = self.worker
        for name, value in (fields or {}).items():
            key = str(name)[:64]
            if key not in _RESERVED:
                line[key] = _bounded(value)
        if record.exc_info and record.exc_info[0] is not None:
            line["traceback"] = frames(record.exc_info)
        elif record.stack_info:
            line["traceback"] = one_line(record.stack_info)
        return json.dumps(line, ensure_ascii=True, separators=(",", ":"), default=str)


class TextFormatter(_Base):
    def format(self, record: logging.LogRecord) -> str:
        worker = f" [worker {self.worker}]" if self.worker is not None else ""
        line = (
            f"{self.formatTime(record)} {record.levelname}{worker} {record.name}: "
            f"{one_line(record.getMessage())}"
        )
        if record.exc_info and record.exc_info[0] is not None:
            line += f"\n    traceback: {one_line(frames(record.exc_info))}"
        elif record.stack_info:
            line += f"\n    stack: {one_line(record.stack_info)}"
        return line


def formatter(kind: str) -> _Base:
    return JsonFormatter() if kind == "json" else TextFormatter()


def configure(level: str, kind: str, stream: TextIO = sys.stderr) -> None:
    """Every record of the process, Python warnings included, through one handler."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter(kind))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)


def tag_worker(index: int) -> None:
    """In a --workers child: every line says which worker wrote it."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler.formatter, _Base):
            handler.formatter.worker = index
