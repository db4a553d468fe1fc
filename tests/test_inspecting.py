"""`extauth inspect`: who each AuthConfig admits, and never a key."""

from __future__ import annotations

import json
from pathlib import Path

from extauth import inspecting
from extauth.building import compile_policy
from tests.builders import authconfig, merge, secret, snapshot
from tests.harness import run_cli

KEYS = ("key-red-7f3a", "key-blue-9c2e", "key-next-1b4d", "key-lost-5e6f", "key-nometa-8d9a")


def _documents() -> list[str]:
    return [
        secret(
            "red",
            KEYS[0],
            labels={"tier": "partner"},
            x_org="red",
            expires_at="2030-01-31T00:00:00Z",
        ),
        secret("blue", KEYS[1], labels={"tier": "partner"}, x_org="blue", api_key_next=KEYS[2]),
        secret("lost", KEYS[3], labels={"tier": "free"}, x_org="grey"),
        secret("nometa", KEYS[4], namespace="other"),
        authconfig(
            "partners",
            """
            headerName: x-api-key
            labelSelector: {tier: partner}
            headersFromMetadataEntry: {x-org: {name: x-org, required: true}}
            """,
        ),
        authconfig(
            "by-ref",
            """
            keySources: [{header: x-key}, {query: api_key}]
            apiKeySecretRefs: [{name: nometa, namespace: other}, {name: red}]
            headersFromMetadataEntry: {x-org: {name: x-org, required: true}}
            requireHashedKeys: false
            """,
        ),
    ]


def test_report_lists_admitted_identities_selection_and_the_unadmitted() -> None:
    policy = compile_policy(merge(snapshot(*_documents())))
    report = inspecting.report(policy)
    views = {view.config_id: view for view in report.authconfigs}
    assert sorted(views) == ["ns.by-ref", "ns.partners"]

    partners = views["ns.partners"]
    assert partners.state == "Accepted"
    assert [(i.namespace, i.name) for i in partners.identities] == [("ns", "blue"), ("ns", "red")]
    red = next(i for i in partners.identities if i.name == "red")
    assert red.headers == {"x-org": "red"}
    assert red.expires_at == "2030-01-31T00:00:00Z"
    (selection,) = partners.selections
    assert selection.label_selectors == ({"tier": "partner"},)
    assert selection.key_sources == ("header x-api-key",)

    by_ref = views["ns.by-ref"]
    assert [(i.namespace, i.name) for i in by_ref.identities] == [
        ("ns", "red"),
        ("other", "nometa"),
    ]
    nometa = next(i for i in by_ref.identities if i.name == "nometa")
    assert nometa.missing_required == ("x-org",)  # admitted by ref, denied for lack of x-org
    assert by_ref.selections[0].secret_refs == ("ns/red", "other/nometa")
    assert by_ref.selections[0].key_sources == ("header x-key", "query api_key")

    assert report.unadmitted == ("ns/lost",)  # a rotation's second key is one identity


def test_text_and_json_never_contain_a_key() -> None:
    policy = compile_policy(merge(snapshot(*_documents())))
    report = inspecting.report(policy)
    text = inspecting.render(report, limit=0)
    as_json = report.to_json()
    for key in KEYS:
        assert key not in text
        assert key not in as_json
    assert "DENIED: lacks x-org" in text
    assert "admits every apikey Secret labelled tier=partner" in text
    assert json.loads(as_json)["unadmitted"] == ["ns/lost"]


def test_limit_shortens_long_lists() -> None:
    many = [secret(f"k{i:03}", f"key-{i:03}", labels={"tier": "partner"}) for i in range(30)]
    config = authconfig("partners", "labelSelector: {tier: partner}")
    report = inspecting.report(compile_policy(snapshot(*many, config)))
    text = inspecting.render(report, limit=5)
    assert "identities: 30" in text
    assert "ns/k004" in text
    assert "ns/k005" not in text
    assert "... and 25 more (--limit 0: all)" in text


def test_the_command_reads_a_directory(tmp_path: Path) -> None:
    (tmp_path / "all.yaml").write_text("---\n".join(_documents()))
    (tmp_path / "broken.yaml").write_text("kind: [\n")
    result = run_cli("inspect", "--config-dir", str(tmp_path), "--output", "json", timeout=60)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert [c["config_id"] for c in report["authconfigs"]] == ["ns.by-ref", "ns.partners"]
    assert report["unadmitted"] == ["ns/lost"]
    for key in KEYS:
        assert key not in result.stdout
        assert key not in result.stderr
    missing = run_cli("inspect", timeout=60)
    assert missing.returncode == 2
    assert "give --config-dir DIR, --kubernetes, or both" in missing.stderr
