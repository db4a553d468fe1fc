"""Fuzzing (hypothesis): the Check handler and the YAML loader under hostile input.

Properties, not examples: whatever arrives, the handler answers with a CheckResponse, and
an allow only ever comes from a valid key present in the request, with the key's own
metadata injected; the loader never raises, only reports `file:line` problems.

CI runs a bounded pass (the "ci" profile); `make fuzz` runs the long one.
"""

from __future__ import annotations

import asyncio
import os
import string
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from extauth import loader, manifests
from extauth.building import PolicyHolder
from extauth.server import AuthorizationService
from extauth.wire import ext_authz_pb2 as pb
from tests.builders import authconfig, secret, snapshot

settings.register_profile(
    "ci", max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "long", max_examples=20_000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("EXTAUTH_FUZZ_PROFILE", "ci"))

KEYS = {"k" * 8 + "A1b2C3d4E5f6G7h8": "red", "z" * 8 + "Q9w8E7r6T5y4U3i2": "blue"}
CONFIGS = ("ns.cfg", "ns.cookies")

# Valid UTF-8 only: protobuf strings cannot hold lone surrogates (bytes go in raw_value).
text = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=300)
names = st.one_of(st.sampled_from(["x-key", "cookie", "x-org", "authorization", ""]), text)


@pytest.fixture(scope="module")
def service() -> Iterator[tuple[AuthorizationService, asyncio.AbstractEventLoop]]:
    holder = PolicyHolder(default_config="ns.cfg")
    documents = [secret(f"s{i}", key, org=org) for i, (key, org) in enumerate(KEYS.items())]
    holder.update(
        [
            snapshot(
                *documents,
                authconfig(
                    "cfg",
                    """
                    headerName: x-key
                    clientIdHeader: x-client
                    k8sSecretApikeyStorage: {apiKeySecretRefs: [{name: s0}, {name: s1}]}
                    headersFromMetadataEntry: {x-org: {name: org}}
                    """,
                ),
                authconfig(
                    "cookies",
                    """
                    keySources: [{cookie: k}, {query: k}]
                    k8sSecretApikeyStorage: {apiKeySecretRefs: [{name: s0}]}
                    """,
                ),
            )
        ]
    )
    loop = asyncio.new_event_loop()
    yield AuthorizationService(holder), loop
    loop.close()


def _run(
    service: tuple[AuthorizationService, asyncio.AbstractEventLoop], request: pb.CheckRequest
) -> pb.CheckResponse:
    handler, loop = service
    raw = loop.run_until_complete(handler.check(request, None))  # type: ignore[arg-type]
    return pb.CheckResponse.FromString(raw)


def _present(request: pb.CheckRequest) -> set[str]:
    """Valid keys appearing anywhere in the request."""
    http = request.attributes.request.http
    haystack = " ".join(
        [*http.headers.values(), http.path]
        + [h.value + h.raw_value.decode("utf-8", "replace") for h in http.header_map.headers]
    )
    return {key for key in KEYS if key in haystack}


def _check_invariants(request: pb.CheckRequest, response: pb.CheckResponse) -> None:
    kind = response.WhichOneof("http_response")
    assert kind in ("ok_response", "denied_response")
    if kind == "denied_response":
        assert response.status.code != 0
        assert response.denied_response.status.code in (401, 403, 500, 503)
        for key in KEYS:  # a deny never echoes a key
            assert key not in response.denied_response.body
        return
    assert response.status.code == 0
    present = _present(request)
    assert present, "allowed without a valid key in the request"
    injected = {h.header.key: h.header.value for h in response.ok_response.headers}
    if "x-org" in injected:
        assert injected["x-org"] in {KEYS[k] for k in present}
    if response.dynamic_metadata.fields["config_id"].string_value == "ns.cfg":
        # x-key is that config's key source: it never goes upstream.
        assert "x-key" in response.ok_response.headers_to_remove


@given(st.binary(max_size=2048))
def test_arbitrary_bytes(service: Any, data: bytes) -> None:
    try:
        request = pb.CheckRequest.FromString(data)
    except DecodeError:
        return  # grpc answers an error; Envoy (failure_mode_allow: false) denies
    _check_invariants(request, _run(service, request))


credential = st.one_of(
    st.none(),
    st.sampled_from(list(KEYS)),
    st.sampled_from([f"Bearer {k}" for k in KEYS] + [f" {k} " for k in KEYS]),
    st.sampled_from([k[:-1] for k in KEYS] + [k + "x" for k in KEYS]),
    text,
)


@given(
    headers=st.dictionaries(names, text, max_size=30),
    key=credential,
    raw=st.lists(st.tuples(names, st.binary(max_size=200)), max_size=10),
    extensions=st.dictionaries(
        st.sampled_from(["config_id", "other", ""]) | text,
        st.sampled_from([*CONFIGS, "", "ns.missing"]) | text,
        max_size=4,
    ),
    path=st.one_of(text, st.builds(lambda k: f"/p?k={k}", st.sampled_from(list(KEYS)))),
    huge=st.integers(min_value=0, max_value=200_000),
)
def test_hostile_requests(
    service: Any,
    headers: dict[str, str],
    key: str | None,
    raw: list[tuple[str, bytes]],
    extensions: dict[str, str],
    path: str,
    huge: int,
) -> None:
    request = pb.CheckRequest()
    http = request.attributes.request.http
    http.headers.update(headers)
    if key is not None:
        http.headers["x-key"] = key
    if huge:
        http.headers["x-huge"] = "a" * huge
    for name, value in raw:
        http.header_map.headers.add(key=name, raw_value=value)
    request.attributes.context_extensions.update(extensions)
    http.path = path
    _check_invariants(request, _run(service, request))


# The YAML loader --------------------------------------------------------------------------


@given(st.text(max_size=2000))
def test_loader_never_raises_on_text(document: str) -> None:
    result = manifests.parse_text(document, "f.yaml")
    for problem in result.problems:
        assert str(problem).startswith("f.yaml:")


json_like = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
    max_leaves=20,
)


@given(
    kind=st.sampled_from(["Secret", "AuthConfig"]),
    path=st.lists(
        st.sampled_from(
            [
                "spec",
                "configs",
                0,
                "apiKeyAuth",
                "metadata",
                "data",
                "stringData",
                "headerName",
                "labels",
            ]
        ),
        max_size=5,
    ),
    value=json_like,
)
def test_loader_reports_wrong_types_without_crashing(
    kind: str, path: list[Any], value: Any
) -> None:
    base: dict[str, Any] = yaml.safe_load(
        secret("a", "key-a")
        if kind == "Secret"
        else authconfig("cfg", "apiKeySecretRefs: [{name: a}]")
    )
    node: Any = base
    for step in path[:-1]:
        if isinstance(node, dict) and isinstance(step, str):
            node = node.setdefault(step, {})
        elif isinstance(node, list) and isinstance(step, int) and node:
            node = node[0]
        else:
            break
    if path and isinstance(node, dict) and isinstance(path[-1], str):
        node[path[-1]] = value
    result = manifests.parse_text(yaml.safe_dump(base), "f.yaml")
    if result.ok and result.resources:
        return
    for problem in result.problems:
        assert str(problem).startswith("f.yaml:")
        assert "key-a" not in str(problem)


@given(st.integers(min_value=1, max_value=12), st.integers(min_value=2, max_value=12))
def test_alias_bombs_are_refused(levels: int, width: int) -> None:
    lines = [f"a0: &a0 [{', '.join(['x'] * width)}]"]
    for level in range(1, levels):
        lines.append(f"a{level}: &a{level} [{', '.join([f'*a{level - 1}'] * width)}]")
    result = manifests.parse_text("\n".join(lines) + "\nkind: Secret\n", "f.yaml")
    assert not result.ok
    expanded = sum(width**i for i in range(1, levels + 1))
    too_large = any("too large" in str(p) for p in result.problems)
    # The loader counts keys and containers too: compare well away from the limit.
    if expanded > 2 * manifests.MAX_EXPANDED_NODES:
        assert too_large
    if 2 * expanded < manifests.MAX_EXPANDED_NODES:
        assert not too_large


@pytest.mark.parametrize(
    "document", ["=", "!!python/object:os.system {}", "!custom {a: 1}", "a: !!binary xyz"]
)
def test_unconstructable_yaml_is_a_problem(document: str) -> None:
    # Found by the long fuzz pass: these raised out of the loader.
    result = manifests.parse_text(document, "f.yaml")
    assert not result.ok
    assert str(result.problems[0]).startswith("f.yaml:1: document 1: YAML error")


def test_duplicate_keys_anywhere_are_reported() -> None:
    for field in string.ascii_lowercase[:5]:
        text_doc = f"apiVersion: v1\nkind: Secret\n{field}: 1\n{field}: 2\n"
        result = manifests.parse_text(text_doc, "f.yaml")
        assert any(f"duplicate key '{field}'" in str(p) for p in result.problems)


def test_huge_documents_are_reported_not_fatal(tmp_path: Any) -> None:
    big = tmp_path / "big.yaml"
    big.write_text(
        "apiVersion: v1\nkind: Secret\ntype: extauth.solo.io/apikey\n"
        "stringData: {api-key: " + "x" * 8_000_000 + "}\n"
    )
    result = manifests.load_file(big)
    assert not result.ok  # no metadata: refused with a message, and nothing crashed
    assert "metadata" in str(result.problems[0])
    many = "".join(f"---\nkind: Thing{i}\n" for i in range(20_000))
    assert len(manifests.parse_text(many, "f.yaml").problems) == 20_000


_TAGS = ["", "!!bool ", "!!int ", "!!float ", "!!timestamp ", "!!binary ", "!!null ", "!!set "]
_TAGS += ["!!str ", "!!omap ", "!x ", "!!python/name:os.system ", "!<tag:k> "]
_SHAPES = ["{k}", "[{k}]", "{{{k}: 1}}", "{{{k}}}", "'{k}'", '"{k}"', "[[{k}], {{a: {k}}}]"]


@given(
    field=st.sampled_from(["data", "stringData"]),
    entry=st.sampled_from(["api-key", "api-key-next", "api-key-hash", "x-org"]),
    tag=st.sampled_from(_TAGS),
    shape=st.sampled_from(_SHAPES),
    nested=st.booleans(),
    # With a digit and 12 characters, a key is not a piece of our own words by chance.
    key=st.text(string.ascii_letters + string.digits + "-_.+/=", min_size=12, max_size=40).filter(
        lambda k: any(c.isdigit() for c in k)
    ),
)
def test_a_key_is_never_in_a_message_whatever_its_tag_or_type(
    field: str, entry: str, tag: str, shape: str, nested: bool, key: str
) -> None:
    value = tag + shape.format(k=key)
    held = f"{{{value}: 1}}" if nested else value  # the key as a mapping key, under an entry
    text = (
        "apiVersion: v1\nkind: Secret\ntype: extauth.solo.io/apikey\n"
        f"metadata: {{name: a, namespace: ns}}\n{field}: {{{entry}: {held}, other: '{key}'}}\n"
    )
    result = loader.load_text(text, "f.yaml")
    for problem in result.problems:
        assert str(problem).startswith("f.yaml:")
        assert key not in str(problem)
