"""booleanExpr: parsed with the usual precedence (`!` over `&&` over `||`)."""

from __future__ import annotations

import pytest

from extauth import boolexpr, deciding


@pytest.mark.parametrize(
    ("expr", "values", "expected"),
    [
        ("a || b && c", {"a": False, "b": True, "c": False}, False),
        ("a || b && c", {"a": True, "b": False, "c": False}, True),
        ("(a || b) && c", {"a": True, "b": False, "c": False}, False),
        ("!a && !!b", {"a": False, "b": True}, True),
        ("!(a || b)", {"a": False, "b": False}, True),
    ],
)
def test_boolexpr_precedence(expr: str, values: dict[str, bool], expected: bool) -> None:
    parsed = boolexpr.parse(expr)
    assert deciding.evaluate(parsed, values) is expected
    assert parsed.names == frozenset(values)
