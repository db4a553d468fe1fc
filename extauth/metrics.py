"""Prometheus metrics and the structured decision log.

What the platform team asks of them: how many requests each AuthConfig allowed and denied
and why, how long Check takes, how much state is loaded, and usage per team. Per-team
counts are labelled by a metadata entry chosen at start-up (`--usage-label x-org`), never
by the key and never by anything the client sent: the value comes from the key's Secret.

Recording a decision is two dict increments and a bisect into the latency buckets, in
plain Python objects (Check runs on one event loop thread, so no locks); a collector turns
them into Prometheus families at scrape time. Gauges that change only on reload are
ordinary prometheus_client gauges.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import logging
import random
import time
from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, ProcessCollector
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric

from extauth.decisions import Allow, Decision, Reason
from extauth.policy import Policy

decision_log = logging.getLogger("extauth.decisions")

# Denies for configs that do not exist share one label: config ids come from whoever
# reaches the gRPC port, and a label per id would grow /metrics without bound.
UNKNOWN_CONFIG_LABEL = "(unknown)"
_UNLOADED = (Reason.UNKNOWN_CONFIG, Reason.NOT_READY)
# Client-chosen values (request ids, paths, config ids) in log lines are cut to these.
REQUEST_ID_LIMIT = 64
PATH_LIMIT = 256
SHOWN_LIMIT = 128


def shown(value: str, limit: int = SHOWN_LIMIT) -> str:
    """A client-chosen value as a log line may hold it: control and non-ASCII characters
    escaped, at most `limit` characters of that, and how long it really was if cut."""
    cut = value[:limit].replace("\\", "\\\\").encode("ascii", "backslashreplace").decode()
    escaped = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in cut)
    if len(escaped) <= limit and len(value) <= limit:
        return escaped
    return f"{escaped[:limit]}... ({len(value)} chars)"


EXPIRY_WARNING = 7 * 24 * 3600.0

# Check latency inside the service: tens of microseconds when healthy.
_LATENCY_BUCKETS = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.1,
)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        # process_resident_memory_bytes, process_open_fds, ...: what a soak watches.
        ProcessCollector(registry=self.registry)
        self.decision_counts: dict[tuple[str, str], int] = {}
        self.usage_counts: dict[tuple[str, str], int] = {}
        self.latency_counts = [0] * (len(_LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0
        self.registry.register(_Collector(self))
        self.tasks = Gauge(
            "extauth_asyncio_tasks", "asyncio tasks alive in the service.", registry=self.registry
        )
        self.keys = Gauge(
            "extauth_api_keys", "API keys admitted by the current policy.", registry=self.registry
        )
        self.configs = Gauge(
            "extauth_authconfigs", "AuthConfigs in the current policy.", registry=self.registry
        )
        self.problems = Gauge(
            "extauth_config_problems",
            "Problems (errors and warnings) in the current policy.",
            registry=self.registry,
        )
        self.reloads = Counter(
            "extauth_policy_reloads", "Policies compiled and swapped in.", registry=self.registry
        )
        self.ready = Gauge(
            "extauth_ready", "1 when serving with a loaded policy.", registry=self.registry
        )
        self.expiring = Gauge(
            "extauth_api_keys_expiring_soon",
            "Admitted keys whose expires-at falls within the next 7 days.",
            registry=self.registry,
        )
        self.expired = Gauge(
            "extauth_api_keys_expired",
            "Loaded keys past their expires-at (denied as expired_api_key).",
            registry=self.registry,
        )

    def record(self, decision: Decision, seconds: float) -> None:
        # Allows are counted once, by (config, usage label); their per-config totals are
        # summed at scrape time. Denies by (config, reason).
        if isinstance(decision, Allow):
            usage = (decision.config_id, decision.usage)
            self.usage_counts[usage] = self.usage_counts.get(usage, 0) + 1
        else:
            config = decision.config_id or ""
            if decision.reason in _UNLOADED:
                config = UNKNOWN_CONFIG_LABEL
            label = (config, decision.reason.value)
            self.decision_counts[label] = self.decision_counts.get(label, 0) + 1
        self.latency_counts[bisect.bisect_left(_LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum += seconds

    def track_tasks(self, loop: asyncio.AbstractEventLoop) -> None:
        self.tasks.set_function(lambda: float(len(asyncio.all_tasks(loop))))

    def track_expiries(self, current: Callable[[], tuple[float, ...]]) -> None:
        """Count expiring and expired keys at scrape time, from the current policy."""

        def within(low: float, high: float) -> float:
            now = time.time()
            return float(sum(1 for t in current() if now + low < t <= now + high))

        self.expiring.set_function(lambda: within(0, EXPIRY_WARNING))
        self.expired.set_function(lambda: within(-float("inf"), 0))

    def policy_loaded(self, policy: Policy) -> None:
        self.reloads.inc()
        self.keys.set(policy.key_count)
        self.configs.set(len(policy.configs))
        self.problems.set(len(policy.problems))


class _Collector:
    """Exports the hot path's plain counters as Prometheus families at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self._m = metrics

    def collect(self) -> Iterator[Metric]:
        decisions = CounterMetricFamily(
            "extauth_decisions",
            "Check decisions by AuthConfig and result (allow, or the deny reason).",
            labels=["config", "result"],
        )
        allowed: dict[str, int] = {}
        usage_counts = list(self._m.usage_counts.items())
        for (config, _), count in usage_counts:
            allowed[config] = allowed.get(config, 0) + count
        for config, count in allowed.items():
            decisions.add_metric([config, "allow"], count)
        for (config, result), count in list(self._m.decision_counts.items()):
            decisions.add_metric([config, result], count)
        yield decisions
        usage = CounterMetricFamily(
            "extauth_usage",
            "Allowed requests by AuthConfig and the --usage-label metadata of the key.",
            labels=["config", "team"],
        )
        for (config, team), count in usage_counts:
            if team:
                usage.add_metric([config, team], count)
        yield usage
        cumulative, buckets = 0, []
        for bound, count in zip(
            (*_LATENCY_BUCKETS, float("inf")), self._m.latency_counts, strict=True
        ):
            cumulative += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
        yield HistogramMetricFamily(
            "extauth_check_duration_seconds",
            "Time spent deciding and encoding one Check, inside the service.",
            buckets=buckets,
            sum_value=self._m.latency_sum,
        )


class DecisionLog:
    """One JSON line per decision on the `extauth.decisions` logger, optionally sampled.

    A line carries the config, the result, the identity and usage label, Envoy's request
    id and the path without its query string (a key may travel in the query). Never a key.
    Request id and path are the client's: cut to 64 and 256 characters (json.dumps
    escapes them), so a caller cannot make a line longer than that.
    """

    def __init__(self, sample: float = 1.0) -> None:
        self.sample = sample

    def write(self, decision: Decision, headers: Mapping[str, str], path: str) -> None:
        if self.sample < 1.0 and random.random() >= self.sample:  # noqa: S311 (sampling)
            return
        entry: dict[str, str | float] = {
            "ts": round(time.time(), 3),
            "config": (decision.config_id or "")[:SHOWN_LIMIT],
            "request_id": headers.get("x-request-id", "")[:REQUEST_ID_LIMIT],
            "path": path.partition("?")[0][:PATH_LIMIT],
        }
        if isinstance(decision, Allow):
            entry.update(result="allow", identity=decision.identity, team=decision.usage)
        else:
            entry.update(result="deny", reason=decision.reason.value)
        decision_log.info(json.dumps(entry, separators=(",", ":")))
