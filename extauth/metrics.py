"""Prometheus metrics and the structured decision log.

What the platform team asks of them: how many requests each AuthConfig allowed and denied
and why, how long Check takes, how much state is loaded, and usage per team. Per-team
counts are labelled by a metadata entry chosen at start-up (`--usage-label x-org`), never
by the key and never by anything the client sent: the value comes from the key's Secret.

Recording a decision is two dict increments and a bisect into the latency buckets, in
plain Python objects (Check runs on one event loop thread, so no locks); a collector turns
them into Prometheus families at scrape time. Gauges that change only on reload are
ordinary prometheus_client gauges. The sources' health (`sourcehealth.py`) is read at
scrape time too, as `extauth_source_*`: every name here is in the README's metrics table,
which the Grafana dashboard and the alert rules follow.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import logging
import platform
import random
import time
from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from extauth import __version__
from extauth.decisions import Allow, Decision, Reason
from extauth.expiries import Expiries
from extauth.policy import Policy
from extauth.sourcehealth import HealthView, SourceHealth

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

# Check latency inside the service: tens of microseconds when healthy; the last buckets
# reach past Envoy's 0.5 s ext_authz timeout, so a Check Envoy gave up on is visible.
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
    0.25,
    0.5,
    1.0,
    2.5,
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
        self.sources: list[SourceHealth] = []
        self._policy_problems = 0
        self.problems = Gauge(
            "extauth_config_problems",
            "Problems now: the policy's (conflicts, duplicates, missing references) plus "
            "every resource a source rejects (a file, a Secret, an AuthConfig).",
            registry=self.registry,
        )
        self.problems.set_function(self._problems_now)
        build = Gauge(
            "extauth_build_info",
            "1, labelled with the extauth version and the Python version it runs on.",
            ["version", "python"],
            registry=self.registry,
        )
        build.labels(__version__, platform.python_version()).set(1)
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

    def track_sources(self, sources: list[SourceHealth]) -> None:
        """Export these sources' health (`extauth_source_*`) at scrape time."""
        self.sources = list(sources)

    def _problems_now(self) -> float:
        return float(self._policy_problems + sum(s.view().rejected_now for s in self.sources))

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

    def track_expiries(self, current: Callable[[], Expiries]) -> None:
        """Count expiring and expired keys at scrape time, from the current policy."""

        def within(low: float, high: float) -> float:
            now = time.time()
            return float(current().count(now + low, now + high))

        self.expiring.set_function(lambda: within(0, EXPIRY_WARNING))
        self.expired.set_function(lambda: within(-float("inf"), 0))

    def policy_loaded(self, policy: Policy) -> None:
        self.reloads.inc()
        self.keys.set(policy.key_count)
        self.configs.set(len(policy.configs))
        self._policy_problems = len(policy.problems)


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
        yield from _source_families([s.view() for s in self._m.sources])


def _source_families(views: list[HealthView]) -> Iterator[Metric]:
    up = GaugeMetricFamily(
        "extauth_source_up",
        "1 while the source syncs normally, 0 while it fails (API server not answering, "
        "a watch failing, the config directory unreadable); its last good state serves.",
        labels=["source"],
    )
    synced = GaugeMetricFamily(
        "extauth_source_last_sync_timestamp_seconds",
        "When the source was last known current (POSIX seconds): files, the last complete "
        "rescan; kubernetes, the last complete list or heartbeat answer with every watch open.",
        labels=["source"],
    )
    errors = CounterMetricFamily(
        "extauth_source_errors",
        "Source failures by reason (unlistable, unreadable, connection, timeout, "
        "unanswered, http_<code>, ...).",
        labels=["source", "reason"],
    )
    restarts = CounterMetricFamily(
        "extauth_source_restarts",
        "Watch restarts by reason (ended: the server's watch timeout; expired: 410 Gone, "
        "a relist; connection, timeout, http_<code>; inotify_overflow: a rescan).",
        labels=["source", "reason"],
    )
    rejected = CounterMetricFamily(
        "extauth_rejected_resources",
        "Resources rejected where they are read, by kind (File, Secret, AuthConfig); "
        "each one's last good version keeps serving.",
        labels=["source", "kind"],
    )
    for view in views:
        up.add_metric([view.source], 1 if view.up else 0)
        if view.last_sync is not None:
            synced.add_metric([view.source], view.last_sync)
        for reason, count in sorted(view.errors.items()):
            errors.add_metric([view.source, reason], count)
        for reason, count in sorted(view.restarts.items()):
            restarts.add_metric([view.source, reason], count)
        for kind, count in sorted(view.rejected.items()):
            rejected.add_metric([view.source, kind], count)
    yield from (up, synced, errors, restarts, rejected)


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
        entry = _Entry(
            ts=round(time.time(), 3),
            config=(decision.config_id or "")[:SHOWN_LIMIT],
            request_id=headers.get("x-request-id", "")[:REQUEST_ID_LIMIT],
            path=path.partition("?")[0][:PATH_LIMIT],
        )
        if isinstance(decision, Allow):
            entry.update(result="allow", identity=decision.identity, team=decision.usage)
        else:
            entry.update(result="deny", reason=decision.reason.value)
        # The entry is the record's fields: keys of the line with --log-format json, the
        # message (as JSON, made only if a text line is written) otherwise.
        decision_log.info(entry, extra={"fields": entry, "brief": "decision"})


class _Entry(dict[str, str | float]):
    """A decision as a text log message: compact JSON, which escapes what the client sent."""

    def __str__(self) -> str:
        return json.dumps(self, separators=(",", ":"))
