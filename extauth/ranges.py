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


def ranged(default: float, low: float, high: float, unit: str, help: str) -> Any:
    """A record field holding a number from `low` to `high` (both allowed)."""
    return dataclasses.field(default=default, metadata={_KEY: Range(low, high, unit, help)})


@dataclass(frozen=True, slots=True)
class Ranged:
    name: str
    kind: type[int] | type[float]
    default: float
    range: Range


def of(record: type[Any]) -> tuple[Ranged, ...]:
    """The ranged fields of a record class, in the order it declares them."""
    hints = typing.get_type_hints(record)
    found: list[Ranged] = []
    for field in dataclasses.fields(record):
        where = field.metadata.get(_KEY)
        if where is None:
            continue
        kind, default = hints[field.name], field.default
        if kind not in (int, float) or not isinstance(default, int | float):
            raise TypeError(f"{record.__name__}.{field.name}: a ranged field is int or float")
        found.append(Ranged(field.name, kind, default, where))
    return tuple(found)


def problem(
    kind: type[int] | type[float], value: object, where: Range, spelled: str | None = None
) -> str | None:
    """Why `value` cannot be such a number, or None; `spelled`, how it was written (the
    message quotes that, not how Python prints the number). NaN is refused: it compares
    false with every bound, so a plain `low <= value <= high` would let it through. Only a
    float can be NaN or infinite; an int is compared exactly, however long (`math.isfinite`
    would convert it to a float, an OverflowError past 1.8e308 that escapes argparse)."""
    shown = repr(value) if spelled is None else repr(spelled)
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or (isinstance(value, float) and not math.isfinite(value))
    ):
        return f"{shown} is not a number"
    if kind is int and not isinstance(value, int):
        return f"{shown} is not a whole number"
    got = value if spelled is None else spelled
    if value < where.low:
        return f"must be at least {_bound(where.low)} (got {got})"
    if value > where.high:
        return f"must be at most {_bound(where.high)} (got {got})"
    return None


def _bound(number: float) -> str:
    """A bound as the operator types it: `g` alone would write 2**31 as 2.14748e+09, a
    limit that cannot be read off and looks like the 2147483649 it refuses."""
    return str(int(number)) if float(number).is_integer() else f"{number:g}"


def parse(text: str, kind: type[int] | type[float], where: Range) -> int | float:
    """The number a command line or an environment variable spells; ValueError says why
    not, in the words `problem` uses."""
    try:
        number = kind(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None
    found = problem(kind, number, where, text)
    if found is not None:
        raise ValueError(found)
    return number


def check(record: Any) -> None:
    """Raise ValueError naming each ranged field of `record` that is out of its range;
    a record's `__post_init__` calls it, so that no component is made with one."""
    found = [
        f"{each.name}: {why}"
        for each in of(record.__class__)
        if (why := problem(each.kind, getattr(record, each.name), each.range)) is not None
    ]
    if found:
        raise ValueError(f"{type(record).__name__}: " + "; ".join(found))
