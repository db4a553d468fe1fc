"""Where one Check's CPU goes, natively: the no-op floor against extauth, under h2load.

For each server (bench/noop.py, then extauth with the bench's production settings: 10,000
keys, 100 AuthConfigs, metrics on), in alternating rounds: h2load sends --requests Checks
(the bench's 522-byte request) while `perf record` samples the server process (every
thread: grpc's pollers too) by CPU clock. Reported per server:

- CPU per Check: the process's user + system time (/proc/PID/stat) over the requests
  (the figure the floor ratio is made of, less sensitive to the neighbours than req/s);
- where the samples fall: grpc core (C-core and its Cython glue, in cygrpc), upb (the
  protobuf parse and field access, in `google._upb`), the interpreter (libpython: the
  handler, the coroutine, grpc.aio's own Python), the event loop (uvloop/libuv), the
  kernel (sockets, epoll, scheduling), libc and libcrypto (SHA-256), the rest;
- the top native symbols.

Needs `perf` (Debian `linux-perf`); profiles are written to a temporary directory and
summarised, not kept. Usage: python bench/profile.py [--requests N] [--rounds R]
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.loadtools import ensure_tool  # noqa: E402
from bench.run import (  # noqa: E402
    check_request,
    extauth_server,
    grpc_frame,
    h2load,
    key_of,
    write_config,
)
from tests import harness  # noqa: E402

# What each shared object is, by a pattern of its name (perf's "dso" column).
BUCKETS = (
    ("grpc core + Cython glue", re.compile(r"cygrpc")),
    ("upb (protobuf parse, fields)", re.compile(r"_upb|_message")),
    ("interpreter (libpython)", re.compile(r"libpython|python3")),
    ("event loop (uvloop, libuv)", re.compile(r"uvloop|loop\.cpython|libuv")),
    ("kernel", re.compile(r"kernel|vmlinux|\[k")),
    ("libc", re.compile(r"libc[.-]|libm[.-]|ld-linux")),
    ("libcrypto (SHA-256)", re.compile(r"libcrypto|_hashlib")),
)
TICKS = os.sysconf("SC_CLK_TCK")


def switches(pid: int) -> int:
    """Context switches of every thread of the process so far: each is a handoff between
    grpc's threads and the event loop's, or a wait for the CPU."""
    total = 0
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        try:
            text = status.read_text()
        except OSError:  # a thread that ended meanwhile
            continue
        total += sum(int(n) for n in re.findall(r"ctxt_switches:\s+(\d+)", text))
    return total


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


@contextmanager
def noop(port: int) -> Iterator[int]:
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "noop.py"), str(port)], stdout=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        proc.stdout.readline()
        yield proc.pid
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stdout:
            proc.stdout.close()


def bucket(dso: str) -> str:
    for name, pattern in BUCKETS:
        if pattern.search(dso):
            return name
    return "other"


def profile_run(
    h2: str, pid: int, port: int, frame: Path, requests: int, data: Path
) -> tuple[float, float, float]:
    """(req/s, CPU microseconds, context switches) per Check of one h2load run under
    perf record."""
    recorder = subprocess.Popen(
        ["perf", "record", "-q", "-F", "1999", "-g", "-p", str(pid), "-o", str(data)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(0.5)
    before, switched = cpu_seconds(pid), switches(pid)
    rps = h2load(h2, port, frame, requests, 4, 32)
    used, switched = cpu_seconds(pid) - before, switches(pid) - switched
    recorder.send_signal(2)
    recorder.wait(60)
    return rps, used / requests * 1e6, switched / requests


def summarise(data: Path) -> tuple[dict[str, float], list[tuple[float, str, str]]]:
    report = subprocess.run(
        [
            *("perf", "report", "-i", str(data), "--stdio", "--no-children", "-g", "none"),
            *("--sort", "dso,sym", "--percent-limit", "0"),
        ],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    buckets: dict[str, float] = collections.defaultdict(float)
    symbols: list[tuple[float, str, str]] = []
    for line in report.splitlines():
        found = re.match(r"\s+([\d.]+)%\s+(\S+)\s+\[(.)\]\s+(.*)", line)
        if not found:
            continue
        share, dso, kind, symbol = float(found[1]), found[2], found[3], found[4].strip()
        buckets[bucket("[kernel]" if kind == "k" else dso)] += share
        symbols.append((share, dso, symbol))
    return buckets, sorted(symbols, reverse=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=40_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--top", type=int, default=12, help="native symbols shown per server")
    args = parser.parse_args()
    h2 = ensure_tool("h2load", "nghttp2-client")
    ensure_tool("perf", "linux-perf")
    work = Path(tempfile.mkdtemp(prefix="extauth-profile-"))
    config_dir = work / "config"
    write_config(config_dir, 10_000, 100)
    frame = work / "check.bin"
    frame.write_bytes(grpc_frame(check_request(key_of(0), "bench.cfg-0")))
    cpu: dict[str, list[float]] = {"noop": [], "extauth": []}
    handoffs: dict[str, list[float]] = {"noop": [], "extauth": []}
    rates: dict[str, list[float]] = {"noop": [], "extauth": []}
    shares: dict[str, dict[str, list[float]]] = {"noop": {}, "extauth": {}}
    tops: dict[str, list[tuple[float, str, str]]] = {}
    noop_port = harness.free_port()
    with noop(noop_port) as noop_pid, extauth_server(config_dir, work) as extauth:
        servers = {
            "noop": (noop_pid, noop_port),
            "extauth": (extauth.proc.pid, extauth.port),
        }
        for _, port in servers.values():
            h2load(h2, port, frame, args.requests // 4, 4, 32)  # warm-up
        for round_ in range(args.rounds):
            for name, (pid, port) in servers.items():
                data = work / f"{name}-{round_}.data"
                rps, us, switched = profile_run(h2, pid, port, frame, args.requests, data)
                rates[name].append(rps)
                cpu[name].append(us)
                handoffs[name].append(switched)
                buckets, symbols = summarise(data)
                for key, share in buckets.items():
                    shares[name].setdefault(key, []).append(share)
                tops[name] = symbols
                data.unlink()
                print(
                    f"{name}: {rps:.0f} req/s, {us:.1f} us CPU and {switched:.2f} context "
                    "switches per Check",
                    flush=True,
                )
    print(f"\nload average {os.getloadavg()[0]:.2f}; {args.rounds} rounds of {args.requests}")
    for name in ("noop", "extauth"):
        per_check = sorted(cpu[name])[len(cpu[name]) // 2]
        runs = ", ".join(f"{us:.0f}" for us in cpu[name])
        print(f"\n{name}: CPU per Check {per_check:.1f} us (runs: {runs}); context switches")
        print(f"  per Check {sorted(handoffs[name])[len(handoffs[name]) // 2]:.2f}")
        for key, values in sorted(shares[name].items(), key=lambda kv: -sum(kv[1])):
            share = sum(values) / args.rounds
            print(f"  {key:<30} {share:5.1f} %  ~{share / 100 * per_check:5.1f} us")
        print("  top native symbols (last round):")
        for share, dso, symbol in tops[name][: args.top]:
            print(f"    {share:5.1f} %  {dso[:28]:<28} {symbol[:70]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
