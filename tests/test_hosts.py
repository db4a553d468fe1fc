"""spec.hosts: which AuthConfig a request's host selects when its route names none.

The patterns an AuthConfig may claim, the host spellings a request may send (an attacker
writes them), the order of precedence, and the conflicts between AuthConfigs."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from extauth import cli, hosts, inspecting, manifests
from extauth.building import PolicyBuilder, compile_policy
from extauth.changes import Change, PlacedAuthConfig, Removal
from extauth.deciding import decide
from extauth.decisions import Allow, Deny, Reason
from extauth.origins import Origin
from extauth.resources import AuthConfig
from tests.builders import authconfig, secret, snapshot


def hosted(name: str, patterns: list[str], header: str = "x-key", ref: str = "a") -> str:
    body = f"headerName: {header}\nk8sSecretApikeyStorage: {{apiKeySecretRefs: [{{name: {ref}}}]}}"
    return authconfig(name, body) + f"  hosts: {json.dumps(patterns)}\n"


@pytest.mark.parametrize(
    ("pattern", "canonical"),
    [
        ("api.example.com", "api.example.com"),
        ("API.Example.COM", "api.example.com"),
        ("api.example.com.", "api.example.com"),
        ("api.example.com:8443", "api.example.com:8443"),
        ("api.example.com.:8443", "api.example.com:8443"),
        ("*.Example.com", "*.example.com"),
        ("*.example.com:443", "*.example.com:443"),
        ("*.co.uk", "*.co.uk"),  # two labels: no list of public suffixes here
        ("localhost", "localhost"),
        ("10.0.0.1:8080", "10.0.0.1:8080"),
        ("[::1]", "[::1]"),
        ("[0:0:0:0:0:0:0:1]:8080", "[::1]:8080"),
        ("[2001:DB8::A]", "[2001:db8::a]"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("svc_internal.local", "svc_internal.local"),
        ("a" * 63 + ".com", "a" * 63 + ".com"),
        (".".join(["a" * 61] * 4), ".".join(["a" * 61] * 4)),  # 247 characters
    ],
)
def test_patterns_are_canonical(pattern: str, canonical: str) -> None:
    assert hosts.normalize(pattern) == canonical


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("", "cannot be empty"),
        ("*", "would claim every host"),
        ("*.", "is not a host name"),
        ("*.:80", "is not a host name"),
        ("a.*.com", "only as the whole first label"),
        ("*example.com", "only as the whole first label"),
        ("**.example.com", "only as the whole first label"),
        ("*.*.example.com", "only as the whole first label"),
        ("*:8080", "only as the whole first label"),
        # One AuthConfig taking every host under a top-level domain that no other claims
        # (another team's, between its AuthConfig's deletion and recreation).
        ("*.com", "a whole top-level domain"),
        ("*.COM.", "a whole top-level domain"),
        ("*.local:8443", "a whole top-level domain"),
        ("*.internal", "a whole top-level domain"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("\u212aey.example.com", "is not ASCII"),  # KELVIN SIGN, which lower() makes `k`
        ("api.example.com:0", "from 1 to 65535"),
        ("api.example.com:65536", "from 1 to 65535"),
        ("api.example.com:080", "without leading zeros"),
        ("api.example.com:", "from 1 to 65535"),
        ("api.example.com:http", "from 1 to 65535"),
        ("::1", "goes in brackets"),
        ("[::1", "not an IPv6 address"),
        ("[::1]x", "not an IPv6 address"),
        ("[example.com]", "not an IPv6 address"),
        ("[fe80::1%eth0]", "zone index"),
        ("[::1]:99999", "from 1 to 65535"),
        ("*.[::1]", "cannot be a wildcard"),
        ("a..example.com", "is not a host name"),
        (".example.com", "is not a host name"),
        ("example.com..", "is not a host name"),
        ("-a.example.com", "is not a host name"),
        ("a b.com", "is not a host name"),
        ("a/b.com", "is not a host name"),
        ("user@example.com", "is not a host name"),
        ("a" * 64 + ".com", "is not a host name"),
        (".".join(["a" * 63] * 4) + ".com", "is not a host name"),  # 260 characters
        ("x" * 100_000, "(a value of over 100 characters)"),
    ],
)
def test_patterns_refused(pattern: str, message: str) -> None:
    with pytest.raises(
        hosts.HostPatternError, match=message.replace("(", r"\(").replace(")", r"\)")
    ):
        hosts.normalize(pattern)


def test_duplicates_within_one_authconfig_are_refused_by_the_model() -> None:
    text = hosted("cfg", ["api.example.com", "API.example.com."])
    result = manifests.parse_text(text, "dup.yaml")
    assert not result.ok
    (problem,) = result.problems
    assert "hosts lists 'api.example.com' twice" in problem.message
    assert problem.path == "dup.yaml"
    assert problem.line == 9


def test_the_model_refuses_a_bad_pattern_and_too_many() -> None:
    spec: dict[str, Any] = {"configs": [{"apiKeyAuth": {"apiKeySecretRefs": [{"name": "s"}]}}]}
    base: dict[str, Any] = {
        "apiVersion": "extauth.solo.io/v1",
        "kind": "AuthConfig",
        "metadata": {"name": "c", "namespace": "ns"},
    }
    for bad in (
        ["a.*.com"],
        [""],
        [7],
        "api.example.com",
        [f"h{i}.example.com" for i in range(257)],
    ):
        with pytest.raises(ValidationError):
            AuthConfig.model_validate(base | {"spec": spec | {"hosts": bad}})
    fine = AuthConfig.model_validate(base | {"spec": spec | {"hosts": ["*.a.com"]}})
    assert fine.spec.hosts == ["*.a.com"]


TABLE, CONFLICTS = hosts.build(
    [
        (1, "exact", ["api.example.com"]),
        (2, "port", ["api.example.com:8443"]),
        (3, "wild", ["*.example.com"]),
        (4, "deeper", ["*.eu.example.com"]),
        (5, "wildport", ["*.eu.example.com:8443"]),
        (6, "ipv6", ["[::1]:8080"]),
        (7, "v6any", ["[::1]"]),
        (8, "ipv4", ["10.0.0.1"]),
    ]
)


@pytest.mark.parametrize(
    ("host", "config_id"),
    [
        ("api.example.com", "exact"),
        ("api.example.com:80", "exact"),  # no host:port pattern: then host (Istio's host:*)
        ("api.example.com:8443", "port"),  # host:port first
        ("API.EXAMPLE.COM:8443", "port"),
        ("api.example.com:08443", "exact"),  # literal, as Envoy's domains: host:* takes it
        # Istio's `api.example.com:*` takes any port, even one no socket has.
        ("api.example.com:0", "exact"),
        ("api.example.com:65536", "exact"),
        ("api.example.com:8443:8443", "exact"),
        ("www.example.com", "wild"),
        ("a.b.c.example.com", "wild"),  # `*` is one label or more
        ("x.eu.example.com", "deeper"),  # the longest wildcard wins
        ("x.eu.example.com:8443", "wildport"),
        ("eu.example.com", "wild"),
        # Envoy's `*.example.com` takes any host that ends in `.example.com`, valid name
        # or not: were extauth to refuse these, --default-config would judge a request
        # Envoy routed to the wildcard's virtual host.
        ("user@api.example.com", "wild"),
        (".api.example.com", "wild"),
        ("x..example.com", "wild"),
        ("\u212api.example.com", "wild"),  # KELVIN SIGN: not `k` (exact), as for Envoy
        ("\uff41pi.example.com", "wild"),  # a fullwidth letter
        ("x." * 130 + "example.com", "wild"),
        ("a" * 100_000 + ".example.com", "wild"),
        ("[::1]:8080", "ipv6"),
        ("[::1]:9", "v6any"),
        ("[::1]:0", "v6any"),
        ("[::1]", "v6any"),
        ("10.0.0.1:3000", "ipv4"),
    ],
)
def test_lookup(host: str, config_id: str | None) -> None:
    assert TABLE.lookup(host) == config_id


@pytest.mark.parametrize(
    "host",
    [
        "",
        ":8443",
        # Envoy matches domains literally: a trailing dot is another host, routed to
        # another virtual host (or none) unless the gateway strips it from the header.
        "api.example.com.",
        "api.example.com.:8443",
        "api.example.com..",
        # A wildcard takes no port but the one it names (Envoy has one `*` per domain).
        "x.eu.example.com:9000",
        "www.example.com:8443",
        "example.com",  # `*.example.com` never matches the apex
        "example.com:8443",
        ".example.com",  # `*` stands for one character or more
        "com",
        "[::2]",
        "[0::1]:8080",  # another spelling of [::1]: another host to Envoy
        "api.example.com\u3002",  # an ideographic full stop is not a dot
        "api.example.com\x00",
        "api.example.com evil.com",
        "api.example.com/path",
        "api.example.com@evil.com",
        "[::1",
        "[::1]8080",
        "[fe80::1%25eth0]:8080",
        "::1",
        "a." * 30_000 + "example.org",
    ],
)
def test_hosts_that_select_nothing(host: str) -> None:
    assert TABLE.lookup(host) is None


def test_an_empty_table_selects_nothing() -> None:
    empty, conflicts = hosts.build([])
    assert not empty
    assert conflicts == []
    assert empty.lookup("api.example.com") is None


def test_conflicts_go_to_the_lower_rank_whatever_the_order() -> None:
    claims = [
        ((1, "z"), "old", ["api.example.com", "*.example.com"]),
        ((2, "a"), "new", ["api.example.com", "*.example.com", "new.example.com"]),
    ]
    for order in (claims, claims[::-1]):
        table, conflicts = hosts.build(order)
        assert table.lookup("api.example.com") == "old"
        assert table.lookup("other.example.com") == "old"
        assert table.lookup("new.example.com") == "new"
        assert [(c.pattern, c.refused, c.holder) for c in conflicts] == [
            ("api.example.com", "new", "old"),
            ("*.example.com", "new", "old"),
        ]


def test_a_wildcard_and_an_exact_pattern_do_not_conflict() -> None:
    table, conflicts = hosts.build([(1, "w", ["*.a.com"]), (2, "e", ["x.a.com", "a.com"])])
    assert conflicts == []
    assert (table.lookup("x.a.com"), table.lookup("y.a.com"), table.lookup("a.com")) == (
        "e",
        "w",
        "e",
    )


KEYS = (secret("a", "key-a", org="red"), secret("b", "key-b", org="blue"))


def test_precedence_config_id_then_hosts_then_default() -> None:
    policy = compile_policy(
        snapshot(
            *KEYS,
            hosted("red", ["red.example.com"]),
            hosted("blue", ["*.blue.example.com"], ref="b"),
            hosted("fallback", [], ref="b"),
        ),
        default_config="ns.fallback",
    )
    key_a, key_b = {"x-key": "key-a"}, {"x-key": "key-b"}
    red = decide(policy, {}, key_a, "/", host="red.example.com")
    assert isinstance(red, Allow)
    assert red.config_id == "ns.red"
    # The route's config_id wins over the host.
    named = decide(policy, {"config_id": "ns.blue"}, key_a, "/", host="red.example.com")
    assert named == Deny(Reason.INVALID, "ns.blue", "the x-key header")
    blue = decide(policy, {}, key_b, "/", host="api.blue.example.com")
    assert isinstance(blue, Allow)
    assert blue.config_id == "ns.blue"
    assert decide(policy, {}, key_a, "/", host="api.blue.example.com") == Deny(
        Reason.INVALID, "ns.blue", "the x-key header"
    )
    # Unclaimed hosts fall back to the default: a wildcard takes no port it does not
    # name, as Envoy's `*.blue.example.com` does not (Istio routes that elsewhere).
    for host in ("elsewhere.example.com", "", "\u212aed.example.com", "api.blue.example.com:443"):
        fallback = decide(policy, {}, key_b, "/", host=host)
        assert isinstance(fallback, Allow)
        assert fallback.config_id == "ns.fallback"


def test_an_unclaimed_host_without_a_default_is_denied() -> None:
    policy = compile_policy(snapshot(*KEYS, hosted("red", ["red.example.com"])))
    assert decide(policy, {}, {"x-key": "key-a"}, "/", host="blue.example.com") == Deny(
        Reason.NO_CONFIG, None
    )
    spelled = decide(policy, {}, {"x-key": "key-a"}, "/", host="RED.example.com")
    assert isinstance(spelled, Allow)
    assert spelled.config_id == "ns.red"
    # A trailing dot is another host to Envoy's domains: not red's virtual host.
    dotted = decide(policy, {}, {"x-key": "key-a"}, "/", host="red.example.com.")
    assert dotted == Deny(Reason.NO_CONFIG, None)


def test_conflicting_files_the_first_path_keeps_the_host(tmp_path: Path) -> None:
    older = snapshot(hosted("red", ["shared.example.com", "*.example.com"]), path="a.yaml")
    newer = snapshot(
        hosted("blue", ["shared.example.com", "blue.example.com", "*.EXAMPLE.com."], ref="b"),
        path="b.yaml",
    )
    builder = PolicyBuilder()
    # Whatever order they arrive in, the same winner.
    builder.apply(snapshot(*KEYS))
    builder.apply(newer)
    builder.apply(older)
    policy = builder.build()
    assert policy.hosts.lookup("shared.example.com") == "ns.red"
    assert policy.hosts.lookup("x.example.com") == "ns.red"
    assert policy.hosts.lookup("blue.example.com") == "ns.blue"
    conflicts = sorted(str(p) for p in policy.problems if "already claimed" in p.message)
    assert conflicts == [
        "b.yaml:1: AuthConfig ns/blue: host '*.example.com' is already claimed by AuthConfig "
        "ns/red (a.yaml:1), which comes first; refused for this AuthConfig",
        "b.yaml:1: AuthConfig ns/blue: host 'shared.example.com' is already claimed by "
        "AuthConfig ns/red (a.yaml:1), which comes first; refused for this AuthConfig",
    ]
    # The holder goes: the other takes its hosts over, and the problems go with it.
    builder.apply(Change(removed=(Removal("AuthConfig", ("ns", "red"), "a.yaml"),)))
    policy = builder.build()
    assert policy.hosts.lookup("shared.example.com") == "ns.blue"
    assert policy.hosts.lookup("x.example.com") == "ns.blue"
    assert not [p for p in policy.problems if "already claimed" in p.message]


def test_among_kubernetes_objects_the_older_keeps_the_host() -> None:
    """The source puts an object's age (creationTimestamp, then uid) in its origin's
    `document`; the name a tenant picks does not matter."""

    def placed(name: str, age_rank: int) -> PlacedAuthConfig:
        text = textwrap.dedent(hosted(name, ["api.example.com"]))
        (loaded,) = manifests.parse_text(text, "x.yaml").resources
        assert isinstance(loaded.resource, AuthConfig)
        return PlacedAuthConfig(
            loaded.resource, Origin(f"kubernetes:AuthConfig/ns/{name}", 0, age_rank)
        )

    policy = compile_policy(Change((placed("aaa-newer", 2 << 128), placed("zzz-older", 1 << 128))))
    assert policy.hosts.lookup("api.example.com") == "ns.zzz-older"
    (problem,) = [p for p in policy.problems if "already claimed" in p.message]
    assert problem.path == "kubernetes:AuthConfig/ns/aaa-newer"


def test_validate_reports_a_conflict(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a.yaml").write_text(
        "\n---\n".join(KEYS) + "\n---\n" + hosted("red", ["api.example.com"])
    )
    (tmp_path / "b.yaml").write_text(hosted("blue", ["API.example.com"], ref="b"))
    assert cli.main(["validate", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert f"{tmp_path / 'b.yaml'}:1: AuthConfig ns/blue: host 'api.example.com' is already" in out


def test_lookup_probes_stay_few_whatever_the_host() -> None:
    """The exact host, the host without its port, then the suffixes no longer than the
    longest wildcard: a host of thousands of dots costs what a short one does."""
    probes = 0

    class Counting(dict[str, str]):
        def get(self, key: str, default: object = None) -> object:  # type: ignore[override]
            nonlocal probes
            probes += 1
            return super().get(key, default)

    table = hosts.HostTable(Counting(), Counting({"example.org": "x"}))
    assert table.lookup("a." * 120 + "example.com:8080") is None
    assert probes <= 2 + len("example.org")
    probes = 0
    assert table.lookup("a." * 30_000 + "example.com") is None
    assert probes <= 2 + len("example.org")
    probes = 0
    assert table.lookup("a." * 30_000 + "example.org") == "x"
    assert probes <= 2 + len("example.org")


def test_inspect_shows_the_hosts_each_config_holds() -> None:
    policy = compile_policy(
        snapshot(
            *KEYS,
            hosted("red", ["b.example.com", "*.example.com", "a.example.com:8443"]),
            hosted("blue", ["b.example.com", "blue.example.com"], ref="b"),
        )
    )
    text = inspecting.render(inspecting.report(policy), 0)
    assert "  hosts (routes without config_id): blue.example.com\n" in text
    assert (
        "  hosts (routes without config_id): *.example.com, a.example.com:8443, b.example.com\n"
        in text
    )
    assert "host 'b.example.com' is already claimed by AuthConfig ns/red" in text


def test_a_lookup_answers_the_same_each_time() -> None:
    table, _ = hosts.build([(1, "w", ["*.a.com"]), (2, "e", ["x.a.com:8080"])])
    for _ in range(2):  # pure: nothing of a first answer is kept to change a second
        assert table.lookup("y.a.com") == "w"
        assert table.lookup("x.a.com:8080") == "e"
        assert table.lookup("x.b.com") is None


def test_a_wildcard_naming_the_port_beats_an_exact_host_without_it() -> None:
    """Envoy tries exact domains, then suffix wildcards, then prefix ones: with Istio's
    domains `api.eu.example.com`, `api.eu.example.com:*` and `*.eu.example.com:8443`,
    `api.eu.example.com:8443` goes to the wildcard's virtual host, so to its AuthConfig."""
    table, _ = hosts.build(
        [(1, "exact", ["api.eu.example.com"]), (2, "wildport", ["*.eu.example.com:8443"])]
    )
    assert table.lookup("api.eu.example.com:8443") == "wildport"
    assert table.lookup("api.eu.example.com:9000") == "exact"
    assert table.lookup("api.eu.example.com") == "exact"
