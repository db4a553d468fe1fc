"""`make demo`'s entry point, run for real, and every command it prints replayed."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from extauth.demo import runner
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


def _demo_ports() -> dict[str, int]:
    return {
        name: harness.free_port()
        for name in ("port", "admin-port", "extauth-port", "metrics-port", "upstream-port")
    }


def _demo_argv(run_dir: Path, ports: dict[str, int]) -> list[str]:
    argv = [sys.executable, "-m", "extauth.demo", "--run-dir", str(run_dir)]
    for name, port in ports.items():
        argv += [f"--{name}", str(port)]
    return argv


def test_demo_refuses_to_start_on_a_taken_port(tmp_path: Path) -> None:
    ports = _demo_ports()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", ports["extauth-port"]))
        holder.listen()
        result = subprocess.run(
            _demo_argv(tmp_path, ports), capture_output=True, text=True, timeout=30, check=False
        )
    assert result.returncode == 2
    assert f"--extauth-port {ports['extauth-port']} (in use)" in result.stderr
    assert "demo ready" not in result.stdout
    assert not (tmp_path / "extauth.log").exists()  # nothing was started


@pytest.mark.parametrize("how", [signal.SIGHUP, signal.SIGKILL])
def test_a_closed_terminal_or_a_killed_runner_stops_every_child(
    tmp_path: Path, how: signal.Signals
) -> None:
    ports = _demo_ports()
    demo = subprocess.Popen(
        _demo_argv(tmp_path, ports),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert demo.stdout is not None
    lines: list[str] = []
    for line in demo.stdout:
        lines.append(line)
        if "demo ready" in line:
            break
    assert "demo ready" in "".join(lines), "".join(lines)
    children = [int(pid) for pid in _child_pids(demo.pid)]
    assert len(children) == 3
    demo.send_signal(how)
    demo.wait(30)
    demo.stdout.close()

    def all_gone() -> bool | None:
        return True if not any(_alive(pid) for pid in children) else None

    harness.wait_until(all_gone, 20, "the demo's children to exit")
    for port in ports.values():
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(("127.0.0.1", port))  # nothing listens there any more


def _child_pids(pid: int) -> list[str]:
    found = subprocess.run(
        ["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True, check=False
    )
    return found.stdout.split()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_a_port_counts_only_when_the_child_itself_listens() -> None:
    with socket.socket() as mine:
        mine.bind(("127.0.0.1", 0))
        mine.listen()
        port = mine.getsockname()[1]
        assert runner.owns_port(os.getpid(), port)
        other = subprocess.Popen(["sleep", "30"])
        try:
            assert not runner.owns_port(other.pid, port)
        finally:
            other.kill()
            other.wait()
    assert not runner.owns_port(os.getpid(), port)
