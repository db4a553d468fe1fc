"""`extauth serve --workers N` as a unit: its workers die with it, and a second unit cannot
share its port. Real processes; the "kill -9 the parent" case from issue 11.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from extauth import workers
from tests import harness
from tests.harness import ROOT, request, wait_until

pytestmark = pytest.mark.e2e


def _children(pid: int) -> list[int]:
    found = subprocess.run(
        ["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True, check=False
    )
    return [int(p) for p in found.stdout.split()]


def _state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return None


def _alive(pid: int) -> bool:
    return _state(pid) not in (None, "Z")


def test_kill_9_of_the_parent_takes_the_workers_and_frees_the_port(tmp_path: Path) -> None:
    unit = harness.Extauth(ROOT / "authconfigs", tmp_path / "unit.log", "--workers", "2")
    try:
        unit.wait_ready()
        workers = _children(unit.proc.pid)
        assert len(workers) == 2
        assert not harness.bindable(unit.port)
        unit.proc.kill()
        killed = time.monotonic()
        wait_until(lambda: True if harness.bindable(unit.port) else None, 5, "the port to be free")
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


def test_a_worker_whose_own_port_is_taken_stops_the_unit_with_a_clear_error(
    tmp_path: Path,
) -> None:
    port = harness.free_ports(3)
    own = workers.worker_grpc_port(port, 1)
    with socket.socket() as squatter:  # no SO_REUSEPORT: nothing may share it
        squatter.bind(("127.0.0.1", own))
        squatter.listen()
        unit = harness.Extauth(
            ROOT / "authconfigs", tmp_path / "unit.log", "--workers", "2", port=port
        )
        try:
            assert unit.proc.wait(30) == 2
        finally:
            unit.stop()
    log = unit.log()
    assert f"[worker 1] extauth: cannot listen on 127.0.0.1:{port} or on this worker's own " in log
    assert f"Failed to bind to address 127.0.0.1:{own}" in log
    assert "worker 1 could not start (exit 2); stopping the others" in log
    assert harness.bindable(port)


def test_a_unit_refuses_a_port_another_units_worker_serves_alone(tmp_path: Path) -> None:
    first = harness.Extauth(ROOT / "authconfigs", tmp_path / "first.log", "--workers", "2")
    try:
        first.wait_ready()
        own = workers.worker_grpc_port(first.port, 0)
        second = harness.Extauth(ROOT / "authconfigs", tmp_path / "second.log", port=own)
        assert second.proc.wait(20) == 2
        second.stop()
        assert f"port {own} is already served by another extauth unit" in second.log()
    finally:
        assert first.stop() == 0


class _Cluster:
    """Envoy's view of its extauth endpoints (admin /clusters), per endpoint."""

    def __init__(self, admin: int) -> None:
        self.admin = admin

    def stats(self) -> dict[str, dict[str, str]]:
        found: dict[str, dict[str, str]] = {}
        for line in request(self.admin, "/clusters").body.decode().splitlines():
            parts = line.split("::")
            if len(parts) == 4 and parts[0] == "extauth":
                found.setdefault(parts[1], {})[parts[2]] = parts[3]
        # Endpoints are the entries with a health state (the rest: the cluster's own).
        return {name: stats for name, stats in found.items() if "health_flags" in stats}

    def served(self) -> dict[str, int]:
        return {address: int(s["rq_success"]) for address, s in self.stats().items()}

    def unhealthy(self) -> list[str]:
        return [a for a, s in self.stats().items() if s["health_flags"] != "healthy"]


VALID = {"vanity-auth": "team1-key"}
INVALID = {"vanity-auth": "not-a-key"}


def _decisions(listen: int, count: int) -> Counter[tuple[str, int]]:
    """`count` requests through Envoy, valid and invalid keys in turn: what each got."""
    got: Counter[tuple[str, int]] = Counter()
    for i in range(count):
        kind, headers = ("valid", VALID) if i % 2 == 0 else ("invalid", INVALID)
        got[kind, request(listen, "/v1/chat/completions", headers).status] += 1
    return got


def _right(got: Counter[tuple[str, int]]) -> bool:
    """Every answer a decision: 200 or 401 as the key says, or Envoy's fail-closed 503
    (told apart by `_lost`); never a 200 for a key that is not one."""
    return set(got) <= {("valid", 200), ("invalid", 401), ("valid", 503), ("invalid", 503)}


def _lost(envoy: harness.Envoy) -> tuple[list[dict[str, object]], int, int]:
    """Envoy's access log: the requests that failed for any reason but the 0.5 s Check
    timeout (which a loaded shared machine can hit with no worker dying), and how many
    did time out, of how many logged."""
    entries = [
        json.loads(line) for line in envoy.log_path.read_text().splitlines() if line.startswith("{")
    ]
    failed = [e for e in entries if e["status"] not in (200, 401)]
    lost = [e for e in failed if not (e["flags"] == "UAEX" and e["duration_ms"] >= 450)]
    return lost, len(failed) - len(lost), len(entries)


def test_envoy_balances_checks_over_every_worker_and_leaves_a_dead_one_out(
    tmp_path: Path,
) -> None:
    """`--workers 2` behind `envoyconf` for two workers: Envoy's per-endpoint stats show
    each worker's own port serving its share of round-robin Checks (in half of the runs
    over the shared port, one worker took them all: BENCHMARKS.md, "Workers"). A killed
    worker's endpoint fails its health check and Envoy sends it nothing; every request
    gets its decision from the other, and a Check that met the dead connection is retried
    there. The parent is held stopped meanwhile, so that the worker stays dead long
    enough to watch; resumed, it starts the worker again and Envoy sends to it again."""
    port = harness.free_ports(3)
    unit = harness.Extauth(ROOT / "authconfigs", tmp_path / "unit.log", "--workers", "2", port=port)
    envoy: harness.Envoy | None = None
    with harness.echo_upstream() as upstream:
        try:
            unit.wait_ready()
            config, listen = harness.local_envoy_config(
                extauth=port, upstream=f"http://127.0.0.1:{upstream}", work=tmp_path, workers=2
            )
            envoy = harness.Envoy(config, tmp_path)
            envoy.wait_ready()
            cluster = _Cluster(envoy.admin_port)
            own = [f"127.0.0.1:{workers.worker_grpc_port(port, i)}" for i in (0, 1)]
            wait_until(
                lambda: (
                    True if sorted(cluster.stats()) == own and not cluster.unhealthy() else None
                ),
                15,
                "Envoy to see both workers healthy",
            )

            # Round robin over the two workers: each serves about half.
            total = 400
            got = _decisions(listen, total)
            served = cluster.served()
            print(f"\n{total} requests: {dict(got)}; Checks per worker endpoint: {served}")
            assert _right(got), got
            assert sum(served.values()) >= total
            assert all(n >= total // 4 for n in served.values()), served

            # One worker dies (its parent held stopped: it stays dead).
            parent = unit.proc.pid
            children = _children(parent)
            os.kill(parent, signal.SIGSTOP)
            try:
                # Stopped before the worker dies: else it may reap and restart it first.
                wait_until(lambda: True if _state(parent) == "T" else None, 5, "parent stopped")
                os.kill(children[0], signal.SIGKILL)
                meanwhile: Counter[tuple[str, int]] = Counter()

                def ejected() -> list[str] | None:
                    meanwhile.update(_decisions(listen, 2))
                    return cluster.unhealthy() or None

                (dead,) = wait_until(ejected, 15, "Envoy to fail the dead worker's health check")
                (alive,) = set(own) - {dead}
                before = cluster.served()
                got = _decisions(listen, 200)
                after = cluster.served()
                print(
                    f"until Envoy saw {dead} fail: {dict(meanwhile)}; then 200 requests: "
                    f"{dict(got)}, Checks {before} -> {after}; retries "
                    f"{cluster_stat(envoy, 'upstream_rq_retry')}"
                )
                assert _right(meanwhile), meanwhile
                assert _right(got), got
                assert after[dead] == before[dead]
                assert after[alive] - before[alive] >= 200
            finally:
                os.kill(parent, signal.SIGCONT)

            # Started again by the parent, on the same port: healthy again (which also
            # lifts the outlier ejection that the refused connections caused), and back
            # in Envoy's rotation within a health-check interval or so.
            back = cluster.served()[dead]
            later: Counter[tuple[str, int]] = Counter()

            def serving_again() -> bool | None:
                later.update(_decisions(listen, 2))
                return True if cluster.served()[dead] > back else None

            wait_until(serving_again, 20, "Envoy to send Checks to the worker started again")
            assert _right(later), later
            assert not cluster.unhealthy()
            lost, timed_out, logged = _lost(envoy)
            print(f"of {logged}: {len(lost)} lost to the dead worker, {timed_out} timed out")
            assert logged >= total + 200
            assert lost == []
        finally:
            if envoy is not None:
                envoy.stop()
            assert unit.stop() == 0
    assert "exited (-9)" in unit.log()


def cluster_stat(envoy: harness.Envoy, name: str) -> int:
    body = request(envoy.admin_port, f"/stats?filter=^cluster.extauth.{name}$").body.decode()
    return int(body.split(":")[1]) if ":" in body else 0
