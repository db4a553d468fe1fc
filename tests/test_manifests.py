"""Loading YAML into resources: what is accepted, and what each mistake says (file:line)."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from extauth import manifests
from extauth.resources import AuthConfig, Secret
from extauth.sources import listing

ROOT = Path(__file__).resolve().parents[1]

SECRET = """\
apiVersion: v1
kind: Secret
type: extauth.solo.io/apikey
metadata: {name: team1-apikey, namespace: agentgateway-system, labels: {llm-provider: openai}}
data: {api-key: dGVhbTEta2V5, x-org: ZGV2ZWxvcGVycw==}
"""

AUTHCONFIG = """\
apiVersion: extauth.solo.io/v1
kind: AuthConfig
metadata: {name: apikey-auth, namespace: agentgateway-system}
spec:
  configs:
    - apiKeyAuth:
        headerName: vanity-auth
        k8sSecretApikeyStorage:
          apiKeySecretRefs: [{name: team1-apikey}]
        headersFromMetadataEntry:
          x-org: {name: x-org}
"""


def parse(text: str) -> manifests.FileResult:
    return manifests.parse_text(textwrap.dedent(text), "f.yaml")


def only_problem(text: str) -> str:
    result = parse(text)
    assert not result.ok
    assert len(result.problems) == 1, result.problems
    return str(result.problems[0])


def test_scenario_documents_load() -> None:
    result = parse(SECRET + "---\n" + AUTHCONFIG)
    assert result.ok
    secret, config = (loaded.resource for loaded in result.resources)
    assert isinstance(secret, Secret)
    assert secret.entries() == {"api-key": "team1-key", "x-org": "developers"}
    assert isinstance(config, AuthConfig)
    assert config.config_id == "agentgateway-system.apikey-auth"
    auth = config.spec.configs[0].api_key_auth
    assert auth.header_name == "vanity-auth"
    # The ref's namespace defaults to the AuthConfig's.
    assert auth.secret_refs("agentgateway-system") == [("agentgateway-system", "team1-apikey")]
    assert result.resources[1].origin.line == 7
    assert result.resources[1].origin.document == 2


def test_examples_in_authconfigs_are_valid() -> None:
    for path in listing.walk(ROOT / "authconfigs").files:
        result = manifests.load_file(path)
        assert result.ok, result.problems
        assert result.resources


def test_defaults_and_deprecated_fields() -> None:
    result = parse(
        """
        apiVersion: extauth.solo.io/v1
        kind: AuthConfig
        metadata: {name: old-style}
        spec:
          configs:
            - apiKeyAuth:
                labelSelector: {team: a}
                apiKeySecretRefs: [{name: k1, namespace: other}]
                headersFromMetadata:
                  x-team: {name: team, required: true}
        """
    )
    assert result.ok, result.problems
    config = result.resources[0].resource
    assert isinstance(config, AuthConfig)
    assert config.metadata.namespace == "default"
    auth = config.spec.configs[0].api_key_auth
    assert auth.header_name == "api-key"
    assert auth.selectors() == [{"team": "a"}]
    assert auth.secret_refs("default") == [("other", "k1")]
    assert auth.metadata_headers()["x-team"].required is True


def test_match_labels_form_and_extensions() -> None:
    result = parse(
        """
        apiVersion: extauth.solo.io/v1
        kind: AuthConfig
        metadata: {name: ext, namespace: ns}
        spec:
          configs:
            - name: teamkeys
              apiKeyAuth:
                keySources: [{header: X-Key}, {query: key}, {cookie: key}]
                forwardCredential: true
                clientIdHeader: X-Client
                k8sSecretApikeyStorage:
                  labelSelector: {matchLabels: {tier: partner}}
        """
    )
    assert result.ok, result.problems
    config = result.resources[0].resource
    assert isinstance(config, AuthConfig)
    auth = config.spec.configs[0].api_key_auth
    assert auth.selectors() == [{"tier": "partner"}]
    assert [s.header for s in auth.sources()] == ["x-key", None, None]  # lowercased
    assert auth.client_id_header == "x-client"
    assert auth.forward_credential is True


def test_string_data_wins_over_data() -> None:
    result = parse(SECRET + "stringData: {x-org: platform}\n")
    secret = result.resources[0].resource
    assert isinstance(secret, Secret)
    assert secret.entries()["x-org"] == "platform"


def test_secrets_of_other_types_are_ignored_not_errors() -> None:
    result = parse(SECRET.replace("extauth.solo.io/apikey", "kubernetes.io/tls"))
    assert result.ok
    assert not result.resources
    assert "kubernetes.io/tls" in result.ignored[0]


def test_secret_repr_hides_values() -> None:
    secret = parse(SECRET).resources[0].resource
    assert "dGVhbTEta2V5" not in repr(secret)
    assert "team1-key" not in repr(secret)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            AUTHCONFIG.replace("headerName", "headerNmae"),
            "f.yaml:7: document 1 (AuthConfig agentgateway-system/apikey-auth): "
            "spec.configs[0].apiKeyAuth.headerNmae: Extra inputs are not permitted",
        ),
        (
            AUTHCONFIG.replace("vanity-auth", "42"),
            "f.yaml:7: document 1 (AuthConfig agentgateway-system/apikey-auth): "
            "spec.configs[0].apiKeyAuth.headerName: Input should be a valid string",
        ),
        (
            AUTHCONFIG.replace("{name: x-org}", "{name: x-org, required: 'true'}"),
            "spec.configs[0].apiKeyAuth.headersFromMetadataEntry.x-org.required: "
            "Input should be a valid boolean",
        ),
        (
            AUTHCONFIG.replace("apiKeyAuth:", "oauth2: {}\n      apiKeyAuth:"),
            "f.yaml:6: document 1 (AuthConfig agentgateway-system/apikey-auth): "
            "spec.configs[0]: unsupported auth config 'oauth2'",
        ),
        (
            AUTHCONFIG.replace("extauth.solo.io/v1", "extauth.solo.io/v2"),
            "f.yaml:1: document 1: AuthConfig apiVersion must be 'extauth.solo.io/v1'",
        ),
        (
            AUTHCONFIG.replace("vanity-auth", "'bad header'"),
            "headerName: 'bad header' is not a valid HTTP header name",
        ),
        (
            AUTHCONFIG.replace("x-org: {name: x-org}", "Host: {name: x-org}"),
            "header 'Host' is managed by Envoy",
        ),
        (
            AUTHCONFIG.replace("name: apikey-auth", "name: Bad_Name"),
            "f.yaml:3: document 1 (AuthConfig agentgateway-system/Bad_Name): metadata.name: "
            "'Bad_Name' is not a valid resource name",
        ),
        (
            AUTHCONFIG.replace(
                "k8sSecretApikeyStorage:\n          apiKeySecretRefs: [{name: team1-apikey}]",
                "k8sSecretApikeyStorage: {}",
            ),
            "apiKeyAuth admits no keys",
        ),
        (
            AUTHCONFIG.replace("apiKeySecretRefs: [{name: team1-apikey}]", "labelSelector: {}"),
            "an empty label selector would admit every API key",
        ),
        (
            AUTHCONFIG.replace("headerName: vanity-auth", "headerName: a\n        keySources: []"),
            "set either headerName or keySources, not both",
        ),
        (
            AUTHCONFIG.replace("headerName: vanity-auth", "keySources: [{header: a, query: b}]"),
            "a key source names exactly one of header, query or cookie",
        ),
        (
            AUTHCONFIG.replace("headerName: vanity-auth", "headerName: x-org"),
            "are both a key source and injected",
        ),
        (
            "apiVersion: extauth.solo.io/v1\nkind: AuthConfig\nmetadata: {name: a}\n"
            "spec: {configs: []}\n",
            "spec.configs: List should have at least 1 item",
        ),
        (
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: a}\n",
            "f.yaml:1: document 1: unsupported resource (apiVersion 'apps/v1', kind 'Deployment')",
        ),
        ("- just\n- a list\n", "f.yaml:1: document 1: expected a mapping"),
        (
            SECRET.replace("namespace: agentgateway-system,", "namespace: a, namespace: b,"),
            "f.yaml:4: document 1: duplicate key 'namespace'",
        ),
        ("a: [unclosed\nb: c\n", "f.yaml:2: YAML syntax error"),
    ],
)
def test_problems_name_file_line_document_and_field(text: str, expected: str) -> None:
    assert expected in only_problem(text)


@pytest.mark.parametrize(
    ("data", "expected", "secret_value"),
    [
        ("{api-key: 'not base64!!'}", "data.api-key: is not valid base64", "not base64!!"),
        ("{x-org: ZGV2ZWxvcGVycw==}", "needs an 'api-key' (or 'api-key-hash') entry", None),
        ("{api-key: ''}", "entry 'api-key' is empty", None),
        ("{api-key: //79}", "entry 'api-key' is not UTF-8 text", None),
        # "team1-key\r\n" and "dev\nX-Admin: 1" in base64: header injection attempts.
        ("{api-key: dGVhbTEta2V5DQo=}", "entry 'api-key' contains control characters", None),
        (
            "{api-key: dGVhbTEta2V5, x-org: ZGV2ClgtQWRtaW46IDE=}",
            "entry 'x-org' contains control characters",
            "X-Admin",
        ),
        ("{api-key: IHRlYW0xLWtleSA=}", "entry 'api-key' has leading or trailing whitespace", None),
        ("{'bad/entry': dGVhbTEta2V5}", "entry name 'bad/entry' is not a valid Secret key", None),
    ],
)
def test_secret_problems_never_quote_values(
    data: str, expected: str, secret_value: str | None
) -> None:
    text = SECRET.replace("data: {api-key: dGVhbTEta2V5, x-org: ZGV2ZWxvcGVycw==}", f"data: {data}")
    message = only_problem(text)
    assert expected in message
    assert "dGVhbTEta2V5" not in message
    assert "team1-key" not in message
    if secret_value:
        assert secret_value not in message


@pytest.mark.parametrize(
    "data",
    [
        "{api-key:dGVhbTEta2V5}",  # the space after the colon forgotten: one name, no value
        "{api-key=dGVhbTEta2V5}",
        "{api-key dGVhbTEta2V5}",
        "{x-org: ZGV2ZWxvcGVycw==, api-key:dGVhbTEta2V5: x}",
    ],
)
def test_an_entry_name_that_swallowed_its_value_is_never_quoted(data: str) -> None:
    """A forgotten space after `api-key:` in a flow mapping makes the key part of the
    entry's name, which messages show (as kubectl describe does): the key was in the
    log and in validate's output. A name holding ':', '=' or whitespace (never a valid
    entry name) is held like a value."""
    text = SECRET.replace("data: {api-key: dGVhbTEta2V5, x-org: ZGV2ZWxvcGVycw==}", f"data: {data}")
    message = only_problem(text)
    assert message.startswith("f.yaml:5: document 1: refused (the reason is withheld")
    assert "dGVhbTEta2V5" not in message


def test_an_entry_without_a_value_is_never_quoted() -> None:
    """`{api-key, KEY}`: a comma for a colon makes the key an entry name without a value."""
    text = SECRET.replace("{api-key: dGVhbTEta2V5, x-org", "{api-key, dGVhbTEta2V5, x-org")
    result = parse(text)
    assert not result.ok
    assert result.problems
    for problem in result.problems:
        assert "dGVhbTEta2V5" not in str(problem)
        assert "team1-key" not in str(problem)
    # A known entry left without a value is named, as before.
    missing = only_problem(SECRET.replace("x-org: ZGV2ZWxvcGVycw==", "api-key-hash: ~"))
    assert "data.api-key-hash: Input should be a valid string" in missing


def test_alias_bomb_is_refused_quickly() -> None:
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for level in range(1, 9):
        prev = f"*a{level - 1}"
        levels.append(f"a{level}: &a{level} [{', '.join([prev] * 10)}]")
    text = "\n".join(levels) + "\nkind: Secret\n"
    assert "too large once YAML aliases are expanded" in only_problem(text)


def test_empty_documents_are_skipped() -> None:
    result = parse("---\n" + SECRET + "---\n---\n")
    assert result.ok
    assert len(result.resources) == 1


def test_one_bad_document_rejects_the_file_but_reports_all(tmp_path: Path) -> None:
    path = tmp_path / "mixed.yaml"
    path.write_text(SECRET + "---\n" + AUTHCONFIG.replace("headerName", "hedaerName"))
    result = manifests.load_file(path)
    assert not result.ok
    assert len(result.resources) == 1  # the good document is read, the file still rejected
    assert str(result.problems[0]).startswith(f"{path}:13: document 2")


def test_unreadable_files_are_problems(tmp_path: Path) -> None:
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00")
    assert "not UTF-8" in str(manifests.load_file(binary).problems[0])
    missing = manifests.load_file(tmp_path / "gone.yaml")
    assert "cannot read file" in str(missing.problems[0])


def test_a_document_of_millions_of_nodes_is_refused_before_it_is_composed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A 4 MB flat list (two million scalars) took 25 s and 1 GB to compose, holding the
    GIL; a file at --max-file-bytes would have exhausted memory. The node count is
    checked on the event stream first, like the depth."""
    composed: list[str] = []
    real = yaml.compose_all

    def compose_all(*args: Any, **kwargs: Any) -> Any:
        composed.append("composed")
        return real(*args, **kwargs)

    monkeypatch.setattr(yaml, "compose_all", compose_all)
    flat = "[" + ",".join(["a"] * (manifests.MAX_DOCUMENT_NODES + 1)) + "]\n"
    block = "".join(f"k{i}: v\n" for i in range(manifests.MAX_DOCUMENT_NODES // 2 + 1))
    for text, document in ((flat, 1), (SECRET + "---\n" + block, 2)):
        result = manifests.parse_text(text, "f.yaml")
        assert not result.resources
        assert len(result.problems) == 1
        assert str(result.problems[0]).startswith(
            f"f.yaml:{1 if document == 1 else 6 + manifests.MAX_DOCUMENT_NODES // 2}: "
            f"document {document}: more than {manifests.MAX_DOCUMENT_NODES} YAML nodes"
        )
    assert composed == []
    # Just under the limit: composed and read (here: not a resource).
    under = "[" + ",".join(["a"] * (manifests.MAX_DOCUMENT_NODES - 1)) + "]\n"
    assert "expected a mapping" in only_problem(under)


def test_a_control_character_is_reported_on_its_line_by_name() -> None:
    """libyaml's reader error has no mark: the message said 'line 1: invalid YAML'
    wherever the NUL was. Its position (in UTF-8 bytes) gives the line."""
    assert only_problem("a: é\nb: 2\nc: x\x00y\n") == (
        "f.yaml:3: YAML syntax error: control characters are not allowed"
    )
    assert only_problem("# \u00e9\u00e9\n---\n" + SECRET + "# \x1b[2J\n").startswith(
        "f.yaml:8: YAML syntax error: control characters are not allowed"
    )
