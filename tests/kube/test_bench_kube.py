"""`make bench-kube`'s code path, small: it fills kube-lite, waits for ready, checks every
key, revokes, and relists after 410 Gone, and its figures say so."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import kube
from tests.kube.kubelite import unavailable_reason

pytestmark = pytest.mark.kube


def test_bench_kube_runs_small(tmp_path: Path) -> None:
    reason = unavailable_reason()
    if reason:
        pytest.skip(f"needs kube-lite: {reason}")
    results = kube.run(
        count=120, threads=8, sample=50, work=tmp_path, compaction=1, watch_timeout=1
    )
    assert results["keys_when_ready"] == 120
    assert results["sample_denied"] == 0
    assert results["keys_after_relist"] == 120 - 5  # five revoked before the relist
    assert results["relist_seconds"] >= 0
    assert results["revoke_after_relist_seconds"] < 30
