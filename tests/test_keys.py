"""`extauth keys new`: the key's shape, the file it writes, and the README's story."""

from __future__ import annotations

import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from extauth import cli, deciding, keys, manifests, secretscan
from extauth.building import compile_policy
from extauth.changes import Change
from extauth.decisions import Allow
from extauth.loader import definitions
from extauth.resources import Secret
from tests.builders import allowed, authconfig, snapshot

ROOT = Path(__file__).resolve().parents[1]
KEY_PATTERN = re.compile(r"eak_[A-Za-z0-9_-]{43}")


def run_keys(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "extauth.cli", "keys", "new", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def key_of(result: subprocess.CompletedProcess[str]) -> str:
    return result.stderr.rsplit(": ", 1)[1].strip()


def test_keys_carry_the_documented_prefix_and_pattern() -> None:
    made = {keys.new_key() for _ in range(200)}
    assert len(made) == 200
    assert all(KEY_PATTERN.fullmatch(key) for key in made)
    assert keys.new_key(48).startswith(keys.KEY_PREFIX)


def test_the_readme_story_admits_the_new_key(tmp_path: Path) -> None:
    """README: `keys new team2-apikey ... --label llm-provider=openai -o authconfigs/team2.yaml`
    and the shipped AuthConfig admits the key, with the team's header."""
    config_dir = tmp_path / "authconfigs"
    shutil.copytree(ROOT / "authconfigs", config_dir)
    result = run_keys(
        "team2-apikey",
        "-n",
        "agentgateway-system",
        "--meta",
        "x-org=platform",
        "--label",
        "llm-provider=openai",
        "-o",
        str(config_dir / "team2.yaml"),
    )
    assert result.returncode == 0, result.stderr
    assert not result.stdout
    key = key_of(result)
    assert KEY_PATTERN.fullmatch(key)
    written = config_dir / "team2.yaml"
    assert stat.S_IMODE(written.stat().st_mode) == 0o600
    assert key not in written.read_text()  # base64 only
    loaded: list[manifests.Loaded] = []
    for path in sorted(config_dir.glob("*.yaml")):
        file = manifests.load_file(path)
        assert file.ok, file.problems
        loaded.extend(file.resources)
    policy = compile_policy(Change(definitions(loaded)))
    grant = deciding.grant(policy, "agentgateway-system.apikey-auth", key)
    assert grant is not None
    assert grant.identity == "team2-apikey"
    assert ("x-org", "platform") in grant.set_headers
    assert deciding.grant(policy, "agentgateway-system.apikey-auth", key + "x") is None


def test_output_is_never_partial_and_never_overwritten(tmp_path: Path) -> None:
    target = tmp_path / "team.yaml"
    failed = run_keys("Bad_Name", "-o", str(target))
    assert failed.returncode == 2
    assert "is not a valid resource name" in failed.stderr
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []  # no temporary file left behind either

    first = run_keys("team", "-o", str(target))
    assert first.returncode == 0, first.stderr
    before = target.read_text()
    again = run_keys("team", "-o", str(target))
    assert again.returncode == 2
    assert "exists; pass --force" in again.stderr
    assert target.read_text() == before
    assert "eak_" not in again.stderr  # no key is made up for a file that is not written

    forced = run_keys("team", "-o", str(target), "--force")
    assert forced.returncode == 0, forced.stderr
    assert target.read_text() != before
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["team.yaml"]

    missing = run_keys("team", "-o", str(tmp_path / "no" / "such" / "dir.yaml"))
    assert missing.returncode == 2
    assert "cannot write" in missing.stderr
    assert "eak_" not in missing.stderr


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ({"a b": "c"}, "label key 'a b' is not valid"),
        ({"-a": "c"}, "label key '-a' is not valid"),
        ({"a": "b c"}, "label 'a' has an invalid value"),
        ({"a": "x" * 64}, "label 'a' has an invalid value"),
        ({"Example.com/a": "b"}, "label key 'Example.com/a' is not valid"),
        ({"a/": "b"}, "label key 'a/' is not valid"),
    ],
)
def test_labels_are_checked_as_kubernetes_checks_them(labels: dict[str, str], message: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        keys.manifest("team", "default", keys.new_key(), {}, labels)


def test_kubernetes_label_forms_are_accepted() -> None:
    labels = {"example.com/team": "a_b.c-9", "llm-provider": "openai", "empty": ""}
    text = keys.manifest("team", "default", keys.new_key(), {}, labels)
    document = Secret.model_validate(yaml.safe_load(text))
    assert document.metadata.labels == labels


def test_the_fast_path_declines_what_the_model_refuses(tmp_path: Path) -> None:
    """A file in the `keys new` layout with a label Kubernetes refuses: the fast path
    leaves it to the general loader, which refuses it with the label's line."""
    text = keys.manifest("team", "default", keys.new_key(), {}, {"tier": "gold"})
    bad = text.replace("tier: gold", "tier: -gold")
    assert secretscan.scan(text, "ok.yaml") is not None
    assert secretscan.scan(bad, "bad.yaml") is None
    result = manifests.parse_text(bad, "bad.yaml")
    assert not result.ok
    assert "label 'tier' has an invalid value" in str(result.problems[0])


def test_a_bad_label_fails_the_command_with_its_reason() -> None:
    result = run_keys("team", "--label", "a b=c")
    assert result.returncode == 2
    assert "label key 'a b' is not valid" in result.stderr
    assert not result.stdout


def test_keys_new_hashed_prints_a_hash_only_manifest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        cli.main(
            ["keys", "new", "team3", "-n", "ns", "--hashed", "--expires-at", "2099-01-01T00:00:00Z"]
        )
        == 0
    )
    out = capsys.readouterr()
    key = out.err.rsplit(": ", 1)[1].strip()
    assert "api-key-hash" in out.out
    assert "api-key:" not in out.out
    path = tmp_path / "k.yaml"
    path.write_text(out.out)
    loaded = manifests.load_file(path)
    assert loaded.ok
    resource = loaded.resources[0].resource
    assert isinstance(resource, Secret)
    assert keys.key_hash(key) == resource.entries()["api-key-hash"]
    policy = compile_policy(
        Change(
            (
                *snapshot(
                    authconfig("cfg", "headerName: x-key\napiKeySecretRefs: [{name: team3}]")
                ).upserted,
                *_from_file(path).upserted,
            )
        )
    )
    assert isinstance(allowed(policy, {"x-key": key}), Allow)


def _from_file(path: Path) -> Change:
    return Change(definitions(manifests.load_file(path).resources))
