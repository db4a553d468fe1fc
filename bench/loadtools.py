"""The load tools both bench scripts use: installed on demand, run, and their output read."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass


def ensure_tool(name: str, package: str) -> str:
    """The tool's path, installing its Debian package with apt if it is missing."""
    found = shutil.which(name)
    if found:
        return found
    print(f"installing {package} (apt) ...", flush=True)
    subprocess.run(["apt-get", "update", "-qq"], check=False, capture_output=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", package], check=True, capture_output=True)
    found = shutil.which(name)
    if not found:
        raise SystemExit(f"{name} not available after installing {package}")
    return found


@dataclass(frozen=True)
class HeyResult:
    statuses: dict[int, int]
    requests_per_second: float
    latency_ms: dict[str, float]  # percentile ("50", "99", ...) -> milliseconds
    errors: str


def hey(
    tool: str,
    url: str,
    *,
    seconds: float,
    concurrency: int,
    headers: dict[str, str],
    rate: float | None = None,
    body: str | None = None,
) -> HeyResult:
    """Run `hey` for `seconds`; with `rate`, at that many requests per second in total."""
    argv = [tool, "-z", f"{seconds}s", "-c", str(concurrency)]
    if rate is not None:
        argv += ["-q", f"{rate / concurrency:.2f}"]
    if body is not None:
        argv += ["-m", "POST", "-T", "application/json", "-d", body]
    for name, value in headers.items():
        argv += ["-H", f"{name}: {value}"]
    output = subprocess.run([*argv, url], capture_output=True, text=True, check=False).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    errors = re.search(r"Error distribution:(.*)", output, re.S)
    return HeyResult(
        statuses={int(c): int(n) for c, n in re.findall(r"\[(\d{3})\]\s+(\d+) responses", output)},
        requests_per_second=float(rps.group(1)) if rps else 0.0,
        latency_ms={
            p: float(v) * 1000 for p, v in re.findall(r"\s(\d+)% in ([\d.]+) secs", output)
        },
        errors=errors.group(1).strip() if errors else "",
    )
