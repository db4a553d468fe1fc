"""`extauth serve --workers N` as a unit: its workers die with it, and a second unit cannot
share its port. Real processes; the "kill -9 the parent" case from issue 11.
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests import harness
from tests.harness import ROOT, wait_until

pytestmark = pytest.mark.e2e


def _children(pid: int) -> list[int]:
    found = subprocess.run(
        ["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True, check=False
    )
    return [int(p) for p in found.stdout.split()]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def _port_free(port: int) -> bool:
    """Whether a plain socket (no SO_REUSEPORT) can take the port."""
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def test_kill_9_of_the_parent_takes_the_workers_and_frees_the_port(tmp_path: Path) -> None:
    unit = harness.Extauth(ROOT / "authconfigs", tmp_path / "unit.log", "--workers", "2")
    try:
        unit.wait_ready()
        workers = _children(unit.proc.pid)
        assert len(workers) == 2
        assert not _port_free(unit.port)
        unit.proc.kill()
        killed = time.monotonic()
        wait_until(lambda: True if _port_free(unit.port) else None, 5, "the port to be free")
        freed = time.monotonic() - killed
        wait_until(
            lambda: True if not any(_alive(w) for w in workers) else None, 5, "workers to die"
        )
    finally:
        unit.stop()
    assert not harness.grpc_serving(unit.address)
    print(f"\nport free {freed:.3f}s after kill -9 of the parent")


def test_a_second_unit_refuses_the_port_the_first_serves(tmp_path: Path) -> None:
    first = harness.Extauth(ROOT / "authconfigs", tmp_path / "first.log", "--workers", "2")
    second: harness.Extauth | None = None
    try:
        first.wait_ready()
        second = harness.Extauth(
            ROOT / "authconfigs", tmp_path / "second.log", "--workers", "2", port=first.port
        )
        assert second.proc.wait(20) == 2
        assert "already served by another extauth unit" in second.log()
        assert harness.grpc_serving(first.address)
        assert len(_children(first.proc.pid)) == 2
    finally:
        if second is not None:
            second.stop()
        assert first.stop() == 0
    # Once the first unit is gone, the port (and its lock) are free for the next one.
    third = harness.Extauth(
        ROOT / "authconfigs", tmp_path / "third.log", "--workers", "2", port=first.port
    )
    try:
        third.wait_ready()
    finally:
        assert third.stop() == 0


@pytest.mark.parametrize("first_workers", ["1", "2"])
def test_a_single_process_and_a_workers_unit_refuse_each_others_port(
    tmp_path: Path, first_workers: str
) -> None:
    second_workers = "2" if first_workers == "1" else "1"
    first = harness.Extauth(
        ROOT / "authconfigs", tmp_path / "first.log", "--workers", first_workers
    )
    try:
        first.wait_ready()
        second = harness.Extauth(
            ROOT / "authconfigs",
            tmp_path / "second.log",
            "--workers",
            second_workers,
            port=first.port,
        )
        assert second.proc.wait(20) == 2
        second.stop()
        assert "already served by another extauth unit" in second.log()
        assert harness.grpc_serving(first.address)
    finally:
        assert first.stop() == 0


def test_a_unit_stopped_while_its_workers_start_exits_cleanly(tmp_path: Path) -> None:
    """SIGTERM forwarded to a worker that has not yet taken the signal over kills it by
    the default action; the unit was asked to stop, so that is a clean stop (exit 0),
    not a failed worker (exit 1, which a supervisor would count as a crash)."""
    unit = harness.Extauth(ROOT / "authconfigs", tmp_path / "unit.log", "--workers", "2")
    try:
        wait_until(
            lambda: True if "started 2 workers" in unit.log() else None,
            20,
            "the parent to fork its workers",
        )
    finally:
        code = unit.stop()
    assert code == 0, unit.log()
