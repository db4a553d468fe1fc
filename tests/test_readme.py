"""Every command in README.md runs as written, or the reason it cannot run here is stated.

The README's fenced blocks are read as a newcomer reads them: in `console` blocks, `$ `
lines are commands and the lines under them what they print; in `sh` blocks every line is
a command. Each command must match one entry of `PLAN`: run in a fresh copy of the
checkout (its printed lines compared, within reason: keys and timestamps vary), run as a
stack of long-lived processes, or skipped with the test that covers it instead. A command
added to the README without an entry fails this test until someone says how it is checked.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests import harness
from tests.harness import ROOT

README = ROOT / "README.md"


@dataclass
class Command:
    text: str
    block: int
    expected: list[str] = field(default_factory=list)


def commands(text: str) -> list[Command]:
    found: list[Command] = []
    for number, match in enumerate(re.finditer(r"```(\w*)\n(.*?)```", text, re.S)):
        language, body = match.groups()
        if language == "console":
            current: Command | None = None
            for line in body.splitlines():
                if line.startswith("$ "):
                    current = Command(line[2:], number)
                    found.append(current)
                elif current is not None and current.text.endswith("\\"):
                    current.text = current.text[:-1] + line.strip()
                elif current is not None:
                    current.expected.append(line)
        elif language in ("sh", "bash", "shell"):
            for line in body.splitlines():
                command = re.sub(r"\s+# .*$", "", line).strip()
                if command and not command.startswith("#"):
                    found.append(Command(command, number))
    return found


# How each README command is checked: "run" (in a fresh copy, output compared), "stack"
# (the by-hand Envoy stack, below), or the reason it is not run here.
PLAN: list[tuple[str, str]] = [
    (r"^make test$", "the suite itself: this is what CI runs"),
    (
        r"^(OPENAI_API_KEY=\S+ )?make demo( DEMO_ARGS=.*)?$",
        "tests/e2e/test_demo.py runs the demo's entry point and replays every command it prints",
    ),
    (r"^curl -s http://127\.0\.0\.1:8080/openai -H 'vanity-auth: team1-key' -d", "stack"),
    (
        r"^curl .*http://127\.0\.0\.1:(8080|9090)/",
        "the demo's transcript (trimmed): tests/e2e/test_demo.py replays what the demo prints",
    ),
    (r"^docker ", "no Docker engine on the build machines; tests/test_compose.py checks compose"),
    (r"^kubectl ", "tests/kube/ applies the manifests to kube-lite and checks them"),
    (
        r"^cd deploy/kubernetes/overlays/\S+ && kustomize edit set image ",
        "kustomize is not on the build machines; tests/kube/test_deploy.py renders the overlays",
    ),
    (
        r"^\.venv/bin/extauth validate broken\.yaml$",
        "illustrates a message; the file is not shipped",
    ),
    (r"^make serve$", "stack"),
    (r"^\.venv/bin/python -m extauth\.demo\.upstream --port 8000$", "stack"),
    (r"^\.venv/bin/envoy -c envoy/envoy\.yaml$", "stack"),
    (r"^cp envoy/secrets/provider-key\.example\.yaml envoy/secrets/provider-key\.yaml$", "run"),
    (r"^\.venv/bin/extauth (keys new|inspect|validate authconfigs/)", "run"),
    (
        r"^extauth serve --config-dir authconfigs --decision-log --log-format json$",
        "illustrates the format; tests/test_logformat.py runs serve in both formats",
    ),
]


def plan_of(command: Command) -> str | None:
    for pattern, plan in PLAN:
        if re.search(pattern, command.text):
            return plan
    return None


ALL = commands(README.read_text())


def test_every_readme_command_is_accounted_for() -> None:
    assert len(ALL) > 10
    unplanned = [c.text for c in ALL if plan_of(c) is None]
    assert unplanned == [], "README commands with no entry in PLAN (tests/test_readme.py)"


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A copy of what a fresh clone holds, with this checkout's venv."""
    copy = tmp_path / "extauth"
    files = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.split(b"\0")
    for name in filter(None, (f.decode() for f in files)):
        source = ROOT / name
        if source.is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, copy / name)
    (copy / ".venv").symlink_to(ROOT / ".venv")
    # `make` in the copy must find the venv up to date, never reinstall it from here.
    stamp = ROOT / ".venv" / ".installed"
    assert stamp.stat().st_mtime >= (copy / "pyproject.toml").stat().st_mtime
    return copy


def _matches(expected: str, actual: str) -> bool:
    """A printed line against the README's: keys (eak_...) vary."""
    pattern = re.escape(expected)
    pattern = re.sub(r"eak_[A-Za-z0-9_\\-]+", r"eak_[A-Za-z0-9_-]+", pattern)
    return re.fullmatch(pattern, actual) is not None


@pytest.mark.parametrize(
    "command",
    [c for c in ALL if plan_of(c) == "run"],
    ids=lambda c: c.text[:50],
)
def test_readme_command_runs_as_written(command: Command, checkout: Path) -> None:
    result = subprocess.run(
        ["bash", "-c", command.text],
        cwd=checkout,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"{command.text}\n{result.stdout}{result.stderr}"
    printed = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if not re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (INFO|DEBUG) ", line)
    ]
    for expected in command.expected:
        assert any(_matches(expected, line) for line in printed), (
            f"{command.text}: README shows {expected!r}, the command printed:\n"
            + "\n".join(printed)
        )


STACK_PORTS = (9001, 9090, 8000, 8080, 9901)


def _free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.mark.e2e
def test_the_by_hand_stack_runs_as_written(checkout: Path) -> None:
    """The README's 'same pieces by hand' block, on the ports it names."""
    taken = [port for port in STACK_PORTS if not _free(port)]
    if taken:
        pytest.skip(f"the README's stack needs ports {taken} free (a running demo?)")
    stack = [c for c in ALL if plan_of(c) == "stack"]
    long_lived = [c for c in stack if not c.text.startswith("curl")]
    (probe,) = [c for c in stack if c.text.startswith("curl")]
    shutil.copy(
        checkout / "envoy/secrets/provider-key.example.yaml",
        checkout / "envoy/secrets/provider-key.yaml",
    )
    processes = [
        subprocess.Popen(
            ["bash", "-c", f"exec {c.text}"],
            cwd=checkout,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        for c in long_lived
    ]
    try:

        def answered() -> str | None:
            result = subprocess.run(
                ["bash", "-c", probe.text], cwd=checkout, capture_output=True, text=True
            )
            return result.stdout if '"x-org": "developers"' in result.stdout else None

        body = harness.wait_until(answered, 60, "the README's stack to answer")
        assert "team1-key" not in body
        assert "vanity-auth" not in body
    finally:
        for process in processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            process.wait(20)
