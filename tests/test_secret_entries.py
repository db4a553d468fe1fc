"""Secret entries read as Kubernetes reads them, and matched as HTTP carries them.

base64 as Go's encoding/json decodes it (line breaks skipped, anything else refused),
`expires-at` strictly RFC 3339, and one notion of whitespace (HTTP's SP and HTAB) for
stored keys, metadata and the key found in a request.
"""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from extauth import cli, deciding, loader
from extauth.apikeys import ApiKey, parse_expiry
from extauth.building import compile_policy
from extauth.deciding import decide
from extauth.decisions import Allow, Deny
from extauth.policy import Policy
from extauth.resources import Secret
from tests.builders import authconfig, snapshot

HEAD = (
    "apiVersion: v1\nkind: Secret\ntype: extauth.solo.io/apikey\n"
    "metadata: {name: a, namespace: ns}\n"
)
CONFIG = authconfig("cfg", "headerName: x-key\napiKeySecretRefs: [{name: a}]")


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _key(text: str) -> ApiKey | str:
    """The file's key, or its first problem."""
    result = loader.load_text(text, "f.yaml")
    if not result.ok:
        return str(result.problems[0])
    (key,) = result.definitions
    assert isinstance(key, ApiKey)
    return key


# base64 -----------------------------------------------------------------------------------

WRAPPED = _b64("a-rather-long-team-key-" + "x" * 40)


@pytest.mark.parametrize(
    "written",
    [
        f"  api-key: |\n    {WRAPPED[:40]}\n    {WRAPPED[40:]}\n",  # a block scalar: LF
        f'  api-key: "{WRAPPED[:40]}\\n{WRAPPED[40:]}\\n"\n',
        f'  api-key: "{WRAPPED[:40]}\\r\\n{WRAPPED[40:]}"\n',
        f'  api-key: "\\n{WRAPPED}"\n',
    ],
)
def test_line_wrapped_base64_is_read_as_kubernetes_reads_it(written: str) -> None:
    key = _key(HEAD + "data:\n" + written)
    assert isinstance(key, ApiKey), key
    expected = _key(HEAD + f"stringData: {{api-key: a-rather-long-team-key-{'x' * 40}}}\n")
    assert isinstance(expected, ApiKey)
    assert key.digest == expected.digest


@pytest.mark.parametrize(
    "value",
    [
        f'"{WRAPPED[:40]} {WRAPPED[40:]}"',  # a space: Go refuses it
        f'"{WRAPPED[:40]}\\t{WRAPPED[40:]}"',
        f"'{WRAPPED[:40]}\u00a0{WRAPPED[40:]}'",
        _b64("ab").rstrip("="),  # padding missing
        _b64("ab") + "YQ==",  # data after the padding
        "dGVhbTEta2V5-",  # URL-safe alphabet
    ],
)
def test_anything_else_outside_base64_stays_refused(value: str) -> None:
    problem = _key(HEAD + f"data: {{api-key: {value}}}\n")
    assert isinstance(problem, str)
    assert "data.api-key: is not valid base64" in problem


# expires-at -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "timestamp"),
    [
        ("2027-01-31T00:00:00Z", 1801353600.0),
        ("2027-01-31t00:00:00z", 1801353600.0),
        ("2027-01-31T02:00:00+02:00", 1801353600.0),
        ("2027-01-30T19:30:00-04:30", 1801353600.0),
        ("2027-01-31T00:00:00-00:00", 1801353600.0),
        ("2027-01-31T00:00:00.25Z", 1801353600.25),
        ("2016-12-31T23:59:60Z", 1483228800.0),  # a leap second
    ],
)
def test_expires_at_reads_rfc_3339(value: str, timestamp: float) -> None:
    assert parse_expiry(value) == timestamp
    key = _key(HEAD + f"stringData: {{api-key: k-1, expires-at: '{value}'}}\n")
    assert isinstance(key, ApiKey)
    assert key.expires_at == timestamp


@pytest.mark.parametrize(
    "value",
    [
        "2027-W05-1T00:00Z",  # ISO week date
        "20270131T000000Z",  # ISO basic format
        "2027-01-31T00:00Z",  # no seconds
        "2027-01-31 00:00:00Z",  # a space for T
        "2027-01-31",
        "2027-01-31T00:00:00+0200",
        "2027-01-31T00:00:00+02",
        "2027-01-31T00:00:00+24:00",
        "2027-02-30T00:00:00Z",
        "2027-01-31T24:00:00Z",
        "2027-01-31T00:00:61Z",
        "0000-01-01T00:00:00Z",
        "2027-01-31T00:00:00.Z",
        "\u0662027-01-31T00:00:00Z",  # an Arabic-Indic digit
        " 2027-01-31T00:00:00Z",
        "2027-01-31T00:00:00Z\n",
    ],
)
def test_expires_at_refuses_what_rfc_3339_does_not_have(value: str) -> None:
    with pytest.raises(ValueError, match="is not an RFC 3339 time"):
        parse_expiry(value)
    problem = _key(HEAD + f"data: {{api-key: {_b64('k-1')}, expires-at: {_b64(value)}}}\n")
    assert isinstance(problem, str)
    assert "entry 'expires-at'" in problem


def test_expires_at_without_a_zone_says_so() -> None:
    with pytest.raises(ValueError, match="needs a timezone"):
        parse_expiry("2027-01-31T00:00:00")


# One notion of whitespace -----------------------------------------------------------------


def _policy(key: str) -> Policy:
    text = HEAD + f"data: {{api-key: {_b64(key)}}}\n"
    return compile_policy(snapshot(text, CONFIG))


def _allowed(policy: Policy, sent: str) -> bool:
    decision = decide(policy, {"config_id": "ns.cfg"}, {"x-key": sent}, "/", None)
    assert isinstance(decision, Allow | Deny)
    return isinstance(decision, Allow)


@pytest.mark.parametrize("space", ["\u00a0", "\u3000", "\u2003", "\u0085", "\u200b", "\ufeff"])
def test_a_key_ending_in_other_whitespace_is_its_own_key(space: str) -> None:
    # Stored with it: valid, and it matches only itself.
    stored = _policy("team1-key" + space)
    assert _allowed(stored, "team1-key" + space)
    assert _allowed(stored, f" Bearer team1-key{space}\t")
    assert not _allowed(stored, "team1-key")
    # Stored without it: a request that adds it is another key.
    plain = _policy("team1-key")
    assert not _allowed(plain, "team1-key" + space)
    assert not _allowed(plain, space + "team1-key")
    assert not _allowed(plain, "Bearer" + space + "team1-key")


def test_http_whitespace_is_trimmed_from_requests_and_refused_in_secrets() -> None:
    plain = _policy("team1-key")
    for sent in (" team1-key", "team1-key\t", "Bearer \tteam1-key ", "bearer\tteam1-key"):
        assert _allowed(plain, sent)
    for stored in (" team1-key", "team1-key\t"):
        problem = _key(HEAD + f"data: {{api-key: {_b64(stored)}}}\n")
        assert isinstance(problem, str)
        assert "leading or trailing whitespace" in problem
    assert deciding.cookie("a=1; k=team1-key\u00a0", "k") == "team1-key\u00a0"
    assert deciding.cookie("a=1;\tk=team1-key ", "k") == "team1-key"


def test_validate_and_the_model_agree_on_wrapped_base64(tmp_path: Path) -> None:
    path = tmp_path / "k.yaml"
    path.write_text(HEAD + f"data:\n  api-key: |\n    {WRAPPED[:40]}\n    {WRAPPED[40:]}\n")
    assert cli.main(["validate", str(path)]) == 0
    model = Secret.model_validate(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "extauth.solo.io/apikey",
            "metadata": {"name": "a"},
            "data": {"api-key": WRAPPED[:30] + "\r\n" + WRAPPED[30:]},
        }
    )
    assert model.entries()["api-key"] == "a-rather-long-team-key-" + "x" * 40
