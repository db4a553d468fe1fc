"""`make demo`'s entry point, run for real, and every command it prints replayed."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests import harness
from tests.harness import ROOT

pytestmark = pytest.mark.e2e


def test_demo_commands_behave_as_printed(tmp_path: Path) -> None:
    ports = {
        name: harness.free_port()
        for name in ("port", "admin-port", "extauth-port", "metrics-port", "upstream-port")
    }
    argv = [sys.executable, "-m", "extauth.demo", "--run-dir", str(tmp_path)]
    for name, port in ports.items():
        argv += [f"--{name}", str(port)]
    demo = subprocess.Popen(
        argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        assert demo.stdout is not None
        for line in demo.stdout:
            lines.append(line.rstrip("\n"))
            if "demo ready" in line:
                ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert ready.wait(90), "\n".join(lines)
        commands = [line[2:] for line in lines if line.startswith("$ ")]
        expects = [line[len("expect: ") :] for line in lines if line.startswith("expect: ")]
        assert len(commands) == len(expects) == 5
        for command, expect in zip(commands, expects, strict=True):
            result = subprocess.run(
                ["bash", "-c", command], capture_output=True, text=True, timeout=30, check=False
            )
            assert expect in result.stdout, f"{command}\n-> {result.stdout}{result.stderr}"
        # What the story promises, beyond the printed substrings:
        chat = subprocess.run(
            ["bash", "-c", commands[2]], capture_output=True, text=True, check=True
        )
        assert "team1-key" not in chat.stdout
        assert re.search(r'"authorization": "Bearer sk-d\.\.\. \(\d+ chars, masked\)"', chat.stdout)
        assert "vanity-auth" not in chat.stdout
    finally:
        demo.send_signal(signal.SIGINT)
        code = demo.wait(30)
        reader.join(5)
        assert demo.stdout is not None
        demo.stdout.close()
    assert code == 0, "\n".join(lines)
    table = "\n".join(lines[lines.index("stopping ...") :])
    assert "running" not in table
    assert table.count("exited (0)") == 3
    envoy_log = (tmp_path / "envoy.log").read_text()
    assert '"identity":"team1-apikey"' in envoy_log
    assert "team1-key" not in envoy_log
