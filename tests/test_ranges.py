"""ranges.py: a settings record's numbers, declared once with their range, and refused
outside it by the record itself and by the command line alike."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from extauth import ranges
from extauth.manifests import DEFAULT_LIMITS, MAX_DEPTH_CEILING, Limits
from extauth.ranges import Range, check, ranged
from extauth.sources.tuning import DEFAULTS, Tuning

SECONDS = Range(0.2, 60, "SECONDS", "how long")
COUNT = Range(1, 3600, "N", "how many")
BYTES = Range(1, 2**40, "N", "how large")


@pytest.mark.parametrize(
    ("text", "kind", "within", "number"),
    [
        ("0.2", float, SECONDS, 0.2),
        ("60", float, SECONDS, 60.0),
        (" 7.5 ", float, SECONDS, 7.5),
        ("1", int, COUNT, 1),
        ("3600", int, COUNT, 3600),
    ],
)
def test_a_number_in_its_range_is_read_both_bounds_included(
    text: str, kind: type[int] | type[float], within: Range, number: float
) -> None:
    read = ranges.parse(text, kind, *within.bounds)
    assert read == number
    assert type(read) is kind


@pytest.mark.parametrize(
    ("text", "kind", "within", "message"),
    [
        ("0.1", float, SECONDS, "must be at least 0.2 (got 0.1)"),
        ("61", float, SECONDS, "must be at most 60 (got 61)"),
        ("0", int, COUNT, "must be at least 1 (got 0)"),
        ("3601", int, COUNT, "must be at most 3600 (got 3601)"),
        # NaN compares false with both bounds: a plain range check lets it through.
        ("nan", float, SECONDS, "'nan' is not a number"),
        ("NaN", float, SECONDS, "'NaN' is not a number"),
        ("-nan", float, SECONDS, "'-nan' is not a number"),
        ("inf", float, SECONDS, "'inf' is not a number"),
        ("-Infinity", float, SECONDS, "'-Infinity' is not a number"),
        # A float too large to hold is a number out of range; only `inf` is not a number.
        ("1e400", float, SECONDS, "must be at most 60 (got 1e400)"),
        ("-1e400", float, SECONDS, "must be at least 0.2 (got -1e400)"),
        ("9" * 400, float, SECONDS, f"must be at most 60 (got {'9' * 40}... (400 characters))"),
        # An int too long for int() to read (over 4,300 digits): out of range, quoted short.
        ("9" * 5000, int, COUNT, f"must be at most 3600 (got {'9' * 40}... (5000 characters))"),
        (
            "-" + "9" * 5000,
            int,
            COUNT,
            f"must be at least 1 (got -{'9' * 39}... (5001 characters))",
        ),
        ("x" * 5000, int, COUNT, f"{'x' * 40!r}... (5000 characters) is not a number"),
        ("1.5", int, COUNT, "'1.5' is not a number"),
        ("soon", int, COUNT, "'soon' is not a number"),
        ("", float, SECONDS, "'' is not a number"),
        # A large bound written out whole, not 2.14748e+09.
        (
            "2147483649",
            int,
            Range(1, 2**31, "N", ""),
            "must be at most 2147483648 (got 2147483649)",
        ),
        ("1099511627777", int, BYTES, "must be at most 1099511627776 (got 1099511627777)"),
        ("0.05", float, Range(0.1, 1e4, "N", ""), "must be at least 0.1 (got 0.05)"),
        ("10000.5", float, Range(0.1, 1e4, "N", ""), "must be at most 10000 (got 10000.5)"),
    ],
)
def test_a_number_outside_its_range_or_not_a_number_is_refused_saying_why(
    text: str, kind: type[int] | type[float], within: Range, message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)) as refused:
        ranges.parse(text, kind, *within.bounds)
    assert str(refused.value) == message


@given(st.floats(min_value=0.2, max_value=60))
def test_every_float_in_range_reads_back_as_itself(number: float) -> None:
    assert ranges.parse(repr(number), float, *SECONDS.bounds) == number


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_no_float_outside_its_range_is_ever_read(number: float) -> None:
    try:
        read = ranges.parse(repr(number), float, *SECONDS.bounds)
    except ValueError:
        assert not (0.2 <= number <= 60)
    else:
        assert 0.2 <= read <= 60


@dataclass(frozen=True, slots=True)
class _Example:
    count: int = ranged(5, 1, 10, "N", "how many")
    pause: float = ranged(1.0, 0.5, 2.0, "SECONDS", "how long")
    name: str = "left alone: not ranged"

    def __post_init__(self) -> None:
        check(self)


def test_a_record_lists_its_ranged_fields_in_order_with_kind_and_default() -> None:
    found = ranges.fields_of(_Example)
    assert [(f.name, f.kind, f.default, f.range.unit) for f in found] == [
        ("count", int, 5, "N"),
        ("pause", float, 1.0, "SECONDS"),
    ]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"count": 0}, "_Example: count: must be at least 1 (got 0)"),
        ({"count": 2.5}, "_Example: count: 2.5 is not a whole number"),
        ({"count": True}, "_Example: count: True is not a number"),
        ({"count": "5"}, "_Example: count: '5' is not a number"),
        ({"pause": math.nan}, "_Example: pause: nan is not a number"),
        ({"pause": math.inf}, "_Example: pause: inf is not a number"),
        (
            {"count": 11, "pause": 0.1},
            "_Example: count: must be at most 10 (got 11); pause: must be at least 0.5 (got 0.1)",
        ),
    ],
)
def test_a_record_refuses_to_be_made_out_of_range_naming_every_field(
    settings: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)) as refused:
        _Example(**settings)  # type: ignore[arg-type]
    assert str(refused.value) == message


def test_a_whole_number_past_the_largest_float_is_out_of_range_not_an_overflow() -> None:
    """An int is compared exactly: turned into a float (to ask whether it is finite) it
    would raise OverflowError, which argparse does not catch (a traceback for
    `--max-depth 999...9`)."""
    huge = 2**1024  # the largest float is just under this
    with pytest.raises(ValueError, match=r"^_Example: count: must be at most 10 \(got a number"):
        _Example(count=huge)
    with pytest.raises(ValueError, match=r"^_Example: pause: must be at least 0\.5 \(got -a num"):
        _Example(pause=-huge)
    # Past 4,300 digits Python will not write the number out: the field is still named.
    with pytest.raises(
        ValueError,
        match=r"^_Example: count: must be at most 10 \(got a number of about 5001 digits\)$",
    ):
        _Example(count=10**5000)
    with pytest.raises(
        ValueError, match=r"^must be at most 3600 \(got 9{40}\.\.\. \(400 characters\)\)$"
    ):
        ranges.parse("9" * 400, int, *COUNT.bounds)


def test_a_whole_number_is_a_float_field_value() -> None:
    assert _Example(pause=2).pause == 2


def test_only_numbers_can_be_ranged() -> None:
    @dataclass(frozen=True)
    class Wrong:
        label: str = ranged(1, 0, 2, "N", "not a number field")

    with pytest.raises(TypeError, match=r"Wrong.label: a ranged field is int or float"):
        ranges.fields_of(Wrong)


def test_the_file_limits_and_the_kubernetes_tuning_refuse_what_their_options_refuse() -> None:
    assert Limits() == DEFAULT_LIMITS
    assert Tuning() == DEFAULTS
    with pytest.raises(ValueError, match="max_depth: must be at most 1000"):
        Limits(max_depth=MAX_DEPTH_CEILING + 1)
    with pytest.raises(ValueError, match="heartbeat: nan is not a number"):
        Tuning(heartbeat=math.nan)
    with pytest.raises(ValueError, match="watch_timeout: must be at least 1"):
        Tuning(watch_timeout=0)
