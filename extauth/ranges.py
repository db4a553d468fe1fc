"""Numbers with a range: a settings record's field that says its bounds, unit and meaning.

A component's tunable numbers (a file's limits, the Kubernetes source's pacing) are
declared once, as fields of the component's own frozen record: the default, the lowest
and highest value, the unit and a line of help. The record refuses a value outside its
range when it is made, whoever makes it (the command line, a test, a program), and the
command line makes its options from the same fields. So a default or a bound is written
in one place, and the option, the environment variable and the record cannot disagree.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from dataclasses import dataclass
from typing import Any

_KEY = "extauth.range"


@dataclass(frozen=True, slots=True)
class Range:
    low: float
    high: float
    unit: str  # what the option's value is called in its help: N, SECONDS, BYTES
    help: str

    @property
    def bounds(self) -> tuple[float, float]:
        return self.low, self.high


def ranged(default: float, low: float, high: float, unit: str, help: str) -> Any:
    """A record field holding a number from `low` to `high` (both allowed)."""
    return dataclasses.field(default=default, metadata={_KEY: Range(low, high, unit, help)})


@dataclass(frozen=True, slots=True)
class RangedField:
    """One ranged field of a record class, as `fields_of` finds it."""

    name: str
    kind: type[int] | type[float]
    default: float
    range: Range


def fields_of(record: type[Any]) -> tuple[RangedField, ...]:
    """The ranged fields of a record class, in the order it declares them."""
    hints = typing.get_type_hints(record)
    found: list[RangedField] = []
    for field in dataclasses.fields(record):
        where = field.metadata.get(_KEY)
        if where is None:
            continue
        kind, default = hints[field.name], field.default
        if kind not in (int, float) or not isinstance(default, int | float):
            raise TypeError(f"{record.__name__}.{field.name}: a ranged field is int or float")
        found.append(RangedField(field.name, kind, default, where))
    return tuple(found)


def problem(
    kind: type[int] | type[float], value: object, low: float, high: float, spelled: str = ""
) -> str | None:
    """Why `value` cannot be such a number from `low` to `high`, or None; `spelled`, how
    it was written, if it was (the message quotes that, not how Python prints the number).

    NaN is refused: it compares false with every bound, so a plain `low <= value <= high`
    would let it through. Only a float can be NaN or infinite; an int is compared exactly,
    however long (`math.isfinite` would turn it into a float: an OverflowError past 1e308).
    """

    def shown(quoted: bool) -> str:
        # Built only for a refusal: a value in range costs no message.
        return _excerpt(spelled, quoted) if spelled else _shown(value)

    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or (isinstance(value, float) and not math.isfinite(value))
    ):
        return f"{shown(True)} is not a number"
    if kind is int and not isinstance(value, int):
        return f"{shown(True)} is not a whole number"
    if value < low:
        return f"must be at least {_bound(low)} (got {shown(False)})"
    if value > high:
        return f"must be at most {_bound(high)} (got {shown(False)})"
    return None


def parse(text: str, kind: type[int] | type[float], low: float, high: float) -> int | float:
    """The number a command line or an environment variable spells; ValueError says why
    not, in the words `problem` uses.

    A number too long for Python to read (an int of over 4,300 digits) or to hold (a float
    past 1e308, which reads as infinity) is out of range, not "not a number"; only `nan`
    and `inf` themselves are that."""
    try:
        number = kind(text)
    except ValueError:
        if not _WHOLE.fullmatch(text):
            raise ValueError(f"{_excerpt(text, True)} is not a number") from None
        number = -math.inf if text.strip().startswith("-") else math.inf
    if isinstance(number, float) and math.isinf(number) and not _INFINITE.fullmatch(text):
        bound = f"at least {_bound(low)}" if number < 0 else f"at most {_bound(high)}"
        raise ValueError(f"must be {bound} (got {_excerpt(text, False)})")
    found = problem(kind, number, low, high, text)
    if found is not None:
        raise ValueError(found)
    return number


# How a whole number and an infinity may be spelled for int() and float() to read them.
_WHOLE = re.compile(r"\s*[+-]?[0-9][0-9_]*\s*", re.ASCII)
_INFINITE = re.compile(r"\s*[+-]?(inf|infinity)\s*", re.ASCII | re.IGNORECASE)
# The most of a spelled value a message quotes: a value may be thousands of characters.
_QUOTED = 40


def _excerpt(text: str, quoted: bool) -> str:
    """At most `_QUOTED` characters of a spelled value, with its length past that; quoted
    (as repr writes it) where the message says it is not a number, bare where it is one."""
    text = text if quoted else text.strip()
    head = repr(text[:_QUOTED]) if quoted else text[:_QUOTED]
    return head if len(text) <= _QUOTED else f"{head}... ({len(text)} characters)"


def _shown(value: object) -> str:
    """A value as a message shows it: a whole number past 1e40 by its size (Python will
    not even write one of over 4,300 digits as text), anything else as its repr."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 10**40:
        digits = int(value.bit_length() * math.log10(2)) + 1
        return f"{'-' if value < 0 else ''}a number of about {digits} digits"
    return _excerpt(repr(value), False)


def _bound(number: float) -> str:
    """A bound as the operator types it: `g` alone would write 2**31 as 2.14748e+09, a
    limit that cannot be read off and looks like the 2147483649 it refuses."""
    return str(int(number)) if float(number).is_integer() else f"{number:g}"


def check(record: Any) -> None:
    """Raise ValueError naming each ranged field of `record` that is out of its range;
    a record's `__post_init__` calls it, so that no component is made with one."""
    found = [
        f"{each.name}: {why}"
        for each in fields_of(record.__class__)
        if (why := problem(each.kind, getattr(record, each.name), *each.range.bounds)) is not None
    ]
    if found:
        raise ValueError(f"{type(record).__name__}: " + "; ".join(found))
