"""The config directory through the real watcher: `extauth serve` as a child process,
files written, broken, hidden from it and deleted under it, decisions asked over gRPC.

Some tests run the service as `nobody` (setpriv): the tests run as root, and root reads
every file and directory whatever its mode, so permission errors only exist for another
user.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import harness
from tests.builders import authconfig, secret

CONFIG = authconfig(
    "cfg",
    "headerName: x-api-key\nk8sSecretApikeyStorage: {labelSelector: {tier: t}}",
)
AS_NOBODY = ("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups")


def allowed(address: str, key: str) -> bool:
    message = external_auth_pb2.CheckRequest()
    message.attributes.context_extensions["config_id"] = "ns.cfg"
    message.attributes.request.http.path = "/"
    message.attributes.request.http.headers["x-api-key"] = key
    with grpc.insecure_channel(address) as channel:
        stub = external_auth_pb2_grpc.AuthorizationStub(channel)
        reply: external_auth_pb2.CheckResponse = stub.Check(message, timeout=5)
    return bool(reply.status.code == 0)


def becomes(address: str, key: str, expect: bool, timeout: float) -> None:
    harness.wait_until(
        lambda: True if allowed(address, key) == expect else None,
        timeout,
        f"{key} to be {'allowed' if expect else 'denied'}",
    )


def labelled(name: str, key: str) -> str:
    return secret(name, key, labels={"tier": "t"})


def write(path: Path, text: str) -> None:
    """Write-then-rename, as the README recommends."""
    tmp = path.parent / f".{path.name}.tmp"
    tmp.write_text(text)
    tmp.replace(path)


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory `nobody` can reach (pytest's own tmp_path is root's alone)."""
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is needed to run the service as another user")
    top = Path(tempfile.mkdtemp(prefix="extauth-watch-"))
    top.chmod(0o755)
    try:
        yield top
    finally:
        for path in (top, *top.rglob("*")):
            if not path.is_symlink():
                path.chmod(0o755 if path.is_dir() else 0o644)
        shutil.rmtree(top)


def unreadable_gauge(port: int) -> float | None:
    body = harness.request(port, "/metrics").body.decode()
    for line in body.splitlines():
        if line.startswith("extauth_config_unreadable_paths "):
            return float(line.split()[1])
    return None


def test_serve_exits_2_when_the_config_dir_cannot_be_read(shared_dir: Path) -> None:
    config = shared_dir / "config"
    config.mkdir()
    (config / "a.yaml").write_text(labelled("a", "key-a") + "---\n" + CONFIG)
    config.chmod(0o000)
    # Port 0: the default port's lock is not this test's to depend on (a demo may hold it).
    serve = ["serve", "--config-dir", str(config), "--grpc-address", "127.0.0.1:0"]
    result = subprocess.run(
        [*AS_NOBODY, sys.executable, "-m", "extauth.cli", *serve],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert f"cannot start: {config}: cannot be listed: Permission denied" in result.stderr


def test_what_cannot_be_read_keeps_serving_and_is_counted(shared_dir: Path) -> None:
    config = shared_dir / "config"
    (config / "team").mkdir(parents=True)
    (config / "cfg.yaml").write_text(CONFIG)
    (config / "a.yaml").write_text(labelled("a", "key-a"))
    (config / "team" / "b.yaml").write_text(labelled("b", "key-b"))
    (config / "c.yaml").write_text(labelled("c", "key-c"))
    for path in (shared_dir, config, *config.rglob("*")):
        path.chmod(0o755 if path.is_dir() else 0o644)
    http = harness.free_port()
    server = harness.Extauth(
        config,
        shared_dir / "serve.log",
        "--http-address",
        f"127.0.0.1:{http}",
        wrap=AS_NOBODY,
    )
    try:
        server.wait_ready()
        for key in ("key-a", "key-b", "key-c"):
            assert allowed(server.address, key)
        assert unreadable_gauge(http) == 0
        # A subdirectory and a file it may no longer read: both keep their last state.
        (config / "team").chmod(0o000)
        (config / "a.yaml").chmod(0o000)
        (config / "a.yaml").touch()  # a new version, which it cannot open
        harness.wait_until(
            lambda: True if unreadable_gauge(http) == 2 else None, 10, "2 unreadable paths"
        )
        assert allowed(server.address, "key-a")
        assert allowed(server.address, "key-b")
        log = server.log()
        assert f"{config / 'team'} cannot be listed: Permission denied" in log
        assert f"cannot read {config / 'a.yaml'} (Permission denied)" in log
        # A revocation elsewhere still applies at once.
        (config / "c.yaml").unlink()
        becomes(server.address, "key-c", False, timeout=1)
        # Readable again: counted no more, and still there.
        (config / "team").chmod(0o755)
        (config / "a.yaml").chmod(0o644)  # no new signature: it is tried again anyway
        harness.wait_until(
            lambda: True if unreadable_gauge(http) == 0 else None, 10, "no unreadable paths"
        )
        assert allowed(server.address, "key-a")
        assert allowed(server.address, "key-b")
    finally:
        assert server.stop() == 0


# Whatever lands in the directory, a revocation still applies --------------------------------

HOSTILE_KEY = "hostile-key-0123456789"


def _nested(depth: int) -> str:
    return "x: " + "[" * depth + "]" * depth + "\n"


def _tagged(tag: str, text: str) -> str:
    return (
        "apiVersion: v1\nkind: Secret\ntype: extauth.solo.io/apikey\n"
        "metadata: {name: tagged, namespace: ns, labels: {tier: t}}\n"
        f"stringData: {{api-key: {tag} {HOSTILE_KEY}{text}, x-org: o}}\n"
    )


def _expr(bangs: int) -> str:
    return authconfig("bangs", "k8sSecretApikeyStorage: {labelSelector: {tier: t}}").replace(
        "spec:\n", f'spec:\n  booleanExpr: "{"!" * bangs}a"\n'
    )


hostile = st.one_of(
    st.binary(max_size=3000),
    st.integers(min_value=100, max_value=3000).map(_nested).map(str.encode),
    st.builds(
        _tagged,
        st.sampled_from(["!!bool", "!!int", "!!float", "!!timestamp", "!!binary", "!unknown"]),
        st.text(alphabet="0123456789_.:-bx", max_size=8),
    ).map(str.encode),
    st.integers(min_value=10, max_value=2000).map(_expr).map(str.encode),
    st.just(CONFIG.replace("- apiKeyAuth:", "- ? [1, 2]\n      : x\n      apiKeyAuth:").encode()),
    st.just(b"a: 0b_\nb: !!int 0b_\n"),
)


@pytest.fixture(scope="module")
def watched(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[harness.Extauth, Path]]:
    config = tmp_path_factory.mktemp("watched")
    (config / "cfg.yaml").write_text(CONFIG)
    server = harness.Extauth(config, config.parent / "watched.log")
    try:
        server.wait_ready()
        yield server, config
    finally:
        server.stop()


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(content=hostile, name=st.sampled_from(["0-first.yaml", "m.yml", "z-last.YAML"]))
def test_nothing_dropped_in_the_directory_stops_a_revocation(
    watched: tuple[harness.Extauth, Path], content: bytes, name: str
) -> None:
    server, config = watched
    victim = config / "victim.yaml"
    write(victim, labelled("victim", "victim-key"))
    becomes(server.address, "victim-key", True, timeout=10)
    (config / name).write_bytes(content)
    time.sleep(0.05)  # let the watcher see it first
    victim.unlink()
    becomes(server.address, "victim-key", False, timeout=1)
    (config / name).unlink()
    assert server.proc.poll() is None, server.log()
    assert HOSTILE_KEY not in server.log()


# Only complete files, and the same winner whatever the history ------------------------------


def test_a_file_written_in_place_applies_when_closed(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.mkdir()
    (config / "cfg.yaml").write_text(CONFIG)
    server = harness.Extauth(config, tmp_path / "serve.log")
    try:
        server.wait_ready()
        with (config / "team.yaml").open("w") as handle:
            handle.write(labelled("b", "key-b") + "---\n")  # valid alone: must not apply
            handle.flush()
            time.sleep(1.5)
            assert not allowed(server.address, "key-b")
            handle.write(labelled("c", "key-c"))
        becomes(server.address, "key-b", True, timeout=2)
        assert allowed(server.address, "key-c")
    finally:
        assert server.stop() == 0


def test_the_first_path_wins_a_conflict_whatever_came_first_and_after_a_restart(
    tmp_path: Path,
) -> None:
    config = tmp_path / "config"
    config.mkdir()
    (config / "cfg.yaml").write_text(CONFIG)
    write(config / "z.yaml", secret("dup", "key-z", labels={"tier": "t"}))
    server = harness.Extauth(config, tmp_path / "serve.log")
    try:
        server.wait_ready()
        assert allowed(server.address, "key-z")
        # The same Secret arrives later in a file that sorts first: it takes over.
        write(config / "a.yaml", secret("dup", "key-a", labels={"tier": "t"}))
        becomes(server.address, "key-a", True, timeout=2)
        assert not allowed(server.address, "key-z")
        message = (
            f"{config / 'z.yaml'}:1: Secret ns/dup is already defined at "
            f"{config / 'a.yaml'}:1, which comes first; this definition is refused"
        )
        harness.wait_until(lambda: True if message in server.log() else None, 2, "the refusal")
    finally:
        assert server.stop() == 0
    restarted = harness.Extauth(config, tmp_path / "restarted.log")
    try:
        restarted.wait_ready()
        assert allowed(restarted.address, "key-a")
        assert not allowed(restarted.address, "key-z")
    finally:
        assert restarted.stop() == 0


def test_a_revocation_does_not_wait_for_thousands_of_files_landing_at_once(
    tmp_path: Path,
) -> None:
    """Each changed file is read in a worker thread; the directory listing that finds
    removals ran on the same thread pool, so it queued behind every pending read: with
    20,000 files landing at once, a deleted Secret stayed valid for seconds."""
    config = tmp_path / "config"
    config.mkdir()
    (config / "cfg.yaml").write_text(CONFIG)
    victim = config / "victim.yaml"
    victim.write_text(labelled("victim", "victim-key"))
    server = harness.Extauth(config, tmp_path / "serve.log")
    try:
        server.wait_ready()
        assert allowed(server.address, "victim-key")
        staged = []
        for i in range(3000):
            hidden = config / f".t{i}.yaml"
            hidden.write_text(labelled(f"t{i}", f"key-{i}"))
            staged.append(hidden)
        for hidden in staged:
            hidden.rename(config / hidden.name[1:])
        time.sleep(0.3)  # the watcher has seen them and queued their reads
        victim.unlink()
        becomes(server.address, "victim-key", False, timeout=1)
        becomes(server.address, "key-2999", True, timeout=60)
        assert server.proc.poll() is None
    finally:
        assert server.stop() == 0


def test_a_file_written_in_place_is_not_applied_when_touched_mid_write(tmp_path: Path) -> None:
    """inotify's IN_ATTRIB (chmod, touch, chown) says nothing about the writer being done;
    it cleared the 'being written' mark like IN_CLOSE_WRITE, so a half-written file that
    was touched mid-write was applied."""
    config = tmp_path / "config"
    config.mkdir()
    (config / "cfg.yaml").write_text(CONFIG)
    server = harness.Extauth(config, tmp_path / "serve.log")
    try:
        server.wait_ready()
        with (config / "team.yaml").open("w") as handle:
            handle.write(labelled("b", "key-b") + "---\n")  # valid alone: must not apply
            handle.flush()
            time.sleep(0.3)
            (config / "team.yaml").chmod(0o640)
            os.utime(config / "team.yaml")
            time.sleep(1.5)
            assert not allowed(server.address, "key-b")
            handle.write(labelled("c", "key-c"))
        becomes(server.address, "key-b", True, timeout=2)
        assert allowed(server.address, "key-c")
    finally:
        assert server.stop() == 0


def test_a_config_dir_symlink_retargeted_is_watched_where_it_now_leads(tmp_path: Path) -> None:
    """`--config-dir current`, with `current` a symlink swapped from one release to the
    next (a common deploy). inotify watches the directory the path led to when the
    watch was added; the path did not change, so the watch stayed on the old release:
    in the new one, a half-written file counted as complete (no IN_MODIFY seen) and a
    deletion waited for the next resync."""
    v1, v2 = tmp_path / "v1", tmp_path / "v2"
    for release in (v1, v2):
        release.mkdir()
        (release / "cfg.yaml").write_text(CONFIG)
    (v1 / "a.yaml").write_text(labelled("a", "key-a"))
    (v2 / "b.yaml").write_text(labelled("b", "key-b"))
    current = tmp_path / "current"
    current.symlink_to(v1)
    server = harness.Extauth(current, tmp_path / "serve.log")
    try:
        server.wait_ready()
        assert allowed(server.address, "key-a")
        (tmp_path / "next").symlink_to(v2)
        (tmp_path / "next").replace(current)
        becomes(server.address, "key-b", True, timeout=5)
        assert not allowed(server.address, "key-a")
        time.sleep(2.5)  # past the period in which a newly watched directory is not trusted
        with (v2 / "team.yaml").open("w") as handle:
            handle.write(labelled("c", "key-c") + "---\n")  # valid alone: must not apply
            handle.flush()
            time.sleep(3)
            assert not allowed(server.address, "key-c")
            handle.write(labelled("d", "key-d"))
        becomes(server.address, "key-c", True, timeout=2)
        (v2 / "b.yaml").unlink()
        becomes(server.address, "key-b", False, timeout=1)
    finally:
        assert server.stop() == 0
