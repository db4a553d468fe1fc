"""The resource models: what a Secret's entries and an AuthConfig's booleanExpr may hold."""

from __future__ import annotations

import pytest

from extauth import manifests
from tests.builders import expr_config


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        (
            "{api-key: k, api-key-hash: 'sha256:" + "0" * 64 + "'}",
            "give 'api-key' or 'api-key-hash', not both",
        ),
        ("{api-key-hash: 'md5:abc'}", "must be 'sha256:' and 64 hex digits"),
        ("{api-key-hash: 'sha256:" + "0" * 63 + "'}", "must be 'sha256:' and 64 hex digits"),
        ("{api-key: k, expires-at: 'next tuesday'}", "is not an RFC 3339 time"),
        ("{api-key: k, expires-at: '2027-01-01T00:00:00'}", "needs a timezone"),
        ("{api-key: k, api-key-next: ''}", "entry 'api-key-next' is empty"),
    ],
)
def test_key_entries_are_checked(entries: str, message: str) -> None:
    text = (
        "apiVersion: v1\nkind: Secret\ntype: extauth.solo.io/apikey\n"
        f"metadata: {{name: a, namespace: ns}}\nstringData: {entries}\n"
    )
    result = manifests.parse_text(text, "f.yaml")
    assert not result.ok
    assert message in str(result.problems[0])


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("teamkeys || ghost", "booleanExpr names ['ghost'] that no configs entry has"),
        ("teamkeys", "configs entries ['partnerkeys'] are not used in booleanExpr"),
        ("teamkeys ||", "ends too early"),
        ("(teamkeys || partnerkeys", "missing ')'"),
        ("teamkeys partnerkeys", "unexpected 'partnerkeys'"),
        ("teamkeys | partnerkeys", "cannot read booleanExpr"),
    ],
)
def test_boolean_expr_problems(expr: str, message: str) -> None:
    result = manifests.parse_text(expr_config(expr), "f.yaml")
    assert not result.ok
    assert message in str(result.problems[0])


def test_boolean_expr_needs_named_entries() -> None:
    text = expr_config("teamkeys || partnerkeys").replace(
        "    - name: partnerkeys\n      apiKeyAuth", "    - apiKeyAuth"
    )
    result = manifests.parse_text(text, "f.yaml")
    assert "every entry of configs needs a name" in str(result.problems[0])
