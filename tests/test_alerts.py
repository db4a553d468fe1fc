"""The alert rules in deploy/prometheus/: promtool accepts them and their unit tests pass.

Each rule group has a `promtool test rules` file of its own (deploy/prometheus/tests/
<group>.yml) in which every alert of the group is seen both firing and not firing; the
check below holds each file to that, and a rule changed on purpose must fail its tests.
tests/test_observability.py loads the same rules into a real Prometheus.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness import ROOT, debian_tool

PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
RULES = PROMETHEUS_DIR / "alerts.yml"
RULE_TESTS = PROMETHEUS_DIR / "tests"


def promtool() -> str:
    return debian_tool("promtool", "prometheus")


def run_promtool(*args: str, cwd: Path = PROMETHEUS_DIR) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args], capture_output=True, text=True, timeout=60, check=False, cwd=cwd
    )


def _groups() -> dict[str, list[str]]:
    """group name -> its alert names, from the rules file."""
    rules: dict[str, Any] = yaml.safe_load(RULES.read_text())
    return {g["name"]: [r["alert"] for r in g["rules"]] for g in rules["groups"]}


def test_promtool_accepts_the_rules_and_the_config() -> None:
    result = run_promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    result = run_promtool("check", "config", str(PROMETHEUS_DIR / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    groups = _groups()
    assert set(groups) == {
        "extauth-availability",
        "extauth-decisions",
        "envoy-ext-authz",
        "extauth-keys",
        "extauth-sources",
    }
    assert {p.stem for p in RULE_TESTS.glob("*.yml")} == set(groups)
    for group, alerts in groups.items():
        spec: dict[str, Any] = yaml.safe_load((RULE_TESTS / f"{group}.yml").read_text())
        assert spec["rule_files"] == ["../alerts.yml"]
        cases = [case for test in spec["tests"] for case in test.get("alert_rule_test", [])]
        for alert in alerts:
            outcomes = {bool(c["exp_alerts"]) for c in cases if c["alertname"] == alert}
            assert outcomes == {True, False}, f"{group}/{alert}: firing and not firing"
            for case in cases:
                for expected in case["exp_alerts"]:
                    # Annotations are compared too: a broken template fails the test.
                    assert expected["exp_annotations"], f"{group}/{alert}: annotations"


@pytest.mark.parametrize("group", sorted(_groups()))
def test_rule_unit_tests_pass(group: str) -> None:
    result = run_promtool("test", "rules", f"tests/{group}.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_a_changed_rule_fails_its_tests(tmp_path: Path) -> None:
    # Guards the tests above: promtool really evaluates the rules against the cases.
    promtool()
    shutil.copytree(PROMETHEUS_DIR, tmp_path / "prometheus")
    rules = tmp_path / "prometheus" / "alerts.yml"
    text = rules.read_text()
    assert text.count(") > 0.5") == 1
    rules.write_text(text.replace(") > 0.5", ") > 0.9"))
    result = run_promtool(
        "test", "rules", "tests/extauth-decisions.yml", cwd=tmp_path / "prometheus"
    )
    assert result.returncode != 0
    assert "ExtauthDenySpike" in result.stdout + result.stderr
