"""The status page at `/` of `--http-address`: what an operator asks first, on one page.

AuthConfigs with their state and reason, how many identities each admits (and their names,
a page at a time: `/?config=NS.NAME&page=N`), keys expiring within 7 days, requests per
team over the last hour (a small inline SVG), each source's health, and what is rejected.
Names only, never a key: the page is built from the compiled policy, which holds digests.

Plain server-rendered HTML with no script and no external asset, served with a CSP that
allows neither. Everything shown passes through `_text` (HTML-escaped, cut to a bound):
team names come from Secret metadata and file names from whoever writes the directory,
so `<script>` in either is text. Every list is cut to a bound and says how many it left
out, so the page stays small whatever the policy holds (at most a few hundred KB).

Cost: which identities each AuthConfig admits is worked out once per policy (keys grouped
by namespace and label set, each group tested once per rule) and kept until the policy
changes; the rest is a pass over the keys for expiry. Nothing here runs on the Check path.
"""

from __future__ import annotations

import html
import itertools
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import parse_qs, urlencode

from extauth import __version__
from extauth.apikeys import ApiKey
from extauth.deciding import admits
from extauth.policy import CompiledConfig, KeyRule, Policy
from extauth.sourcehealth import HealthView, SourceHealth

PAGE_SIZE = 100  # identities per page
LIST_LIMIT = 50  # rows of the other lists
CONFIG_ROWS = 500  # AuthConfigs on the overview
TEXT_LIMIT = 200  # characters of any one value shown
TEAMS = 8  # series in the usage chart
EXPIRY_WINDOW = 7 * 24 * 3600.0
STEP = 60.0  # seconds per point of the usage chart
POINTS = 60  # an hour of them
_QUERY_LIMIT = 1024
_COLORS = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777")


def _text(value: object, limit: int = TEXT_LIMIT) -> str:
    """A value as HTML text: cut to `limit` characters (saying so), then escaped."""
    shown = str(value)
    if len(shown) > limit:
        shown = f"{shown[:limit]}… ({len(shown)} chars)"
    return html.escape(shown, quote=True)


def _when(at: float | None) -> str:
    if at is None:
        return "never"
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


class UsageHistory:
    """Allowed requests per team, sampled once a `step`: the chart's last hour.

    `counts` is the metrics' (config, team) -> total; a sample keeps the totals per team
    (over every config), so a point is the difference of two samples."""

    def __init__(
        self, counts: Callable[[], Mapping[tuple[str, str], int]], step: float = STEP
    ) -> None:
        self._counts = counts
        self.step = step
        self._samples: deque[tuple[float, dict[str, int]]] = deque(maxlen=POINTS + 1)

    def totals(self) -> dict[str, int]:
        found: dict[str, int] = {}
        for (_, team), count in list(self._counts().items()):
            if team:  # "": usage is not counted per team (no --usage-label)
                found[team] = found.get(team, 0) + count
        return found

    def sample(self, now: float | None = None) -> None:
        self._samples.append((time.time() if now is None else now, self.totals()))

    def series(self) -> tuple[list[float], dict[str, list[int]]]:
        """Times of the points (the last is now) and requests per team in each step."""
        points = [*self._samples, (time.time(), self.totals())]
        teams: set[str] = set()
        for _, totals in points:
            teams.update(totals)
        series: dict[str, list[int]] = {team: [] for team in teams}
        for (_, before), (_, after) in itertools.pairwise(points):
            for team in teams:
                series[team].append(max(0, after.get(team, 0) - before.get(team, 0)))
        return [at for at, _ in points[1:]], series


@dataclass(frozen=True, slots=True)
class _Admitted:
    """Per AuthConfig, the identities it admits, by namespace and name (one policy's)."""

    policy: Policy
    by_config: dict[str, list[ApiKey]]


Group = tuple[str, dict[str, str], list[ApiKey]]  # namespace, labels, its keys


def admitted(policy: Policy) -> dict[str, list[ApiKey]]:
    """Which key holders each AuthConfig admits (as `inspect` says, cheaper): keys are
    grouped by namespace and label set, and a selector looks only at the groups that
    carry its rarest label (an index of label -> groups), so a rule costs about what it
    admits, not the number of keys."""
    holders = {id(k): k for k in policy.keys.values()}
    by_owner = {k.owner: k for k in holders.values()}
    grouped: dict[tuple[str, tuple[tuple[str, str], ...]], list[ApiKey]] = {}
    for key in holders.values():
        grouped.setdefault((key.namespace, tuple(sorted(key.labels.items()))), []).append(key)
    groups: list[Group] = [(ns, dict(labels), keys) for (ns, labels), keys in grouped.items()]
    index: dict[tuple[str, str], list[int]] = {}
    for number, (_, labels, _) in enumerate(groups):
        for pair in labels.items():
            index.setdefault(pair, []).append(number)
    found: dict[str, list[ApiKey]] = {}
    for config_id, config in policy.configs.items():
        chosen: dict[int, ApiKey] = {}
        for rule in config.rules:
            _admit_rule(rule, by_owner, groups, index, chosen)
        found[config_id] = sorted(chosen.values(), key=lambda k: (k.namespace, k.name))
    return found


def _admit_rule(
    rule: KeyRule,
    by_owner: Mapping[tuple[str, str], ApiKey],
    groups: list[Group],
    index: Mapping[tuple[str, str], list[int]],
    chosen: dict[int, ApiKey],
) -> None:
    for owner in rule.refs:
        key = by_owner.get(owner)
        if key is not None and admits(rule, key):
            chosen[id(key)] = key
    for selector in rule.selectors:
        candidates: Sequence[int] = range(len(groups))
        if selector:
            candidates = min((index.get(pair, []) for pair in selector), key=len)
        for number in candidates:
            namespace, labels, keys = groups[number]
            if rule.selector_namespace is not None and namespace != rule.selector_namespace:
                continue
            if all(labels.get(k) == v for k, v in selector):
                for key in keys:
                    if not rule.require_hashed or key.hashed:
                        chosen[id(key)] = key


class StatusPage:
    def __init__(
        self,
        policy: Callable[[], Policy],
        sources: Sequence[SourceHealth],
        usage: UsageHistory,
        serving: Callable[[], list[str]] = list,
    ) -> None:
        """`serving`: problems found while answering Checks (an Envoy config that does not
        send a header an AuthConfig reads), listed with the policy's own."""
        self._policy = policy
        self._sources = sources
        self.usage = usage
        self._serving = serving
        self._admitted: _Admitted | None = None

    def _admissions(self, policy: Policy) -> dict[str, list[ApiKey]]:
        cached = self._admitted
        if cached is None or cached.policy is not policy:
            cached = self._admitted = _Admitted(policy, admitted(policy))
        return cached.by_config

    def render(self, query: str = "") -> bytes:
        config, page = _parse(query)
        policy = self._policy()
        views = [s.view(items=True) for s in self._sources]
        admissions = self._admissions(policy)
        parts = [_HEAD, _summary(policy, views)]
        if config is not None:
            parts.append(_identities(policy, config, admissions.get(config), page))
        parts += [
            _sources(views),
            _configs(policy, admissions, views),
            _rejected(views),
            _expiring(policy),
            _usage(self.usage, policy.usage_label),
            _problems(policy, self._serving()),
            "</main></body></html>\n",
        ]
        return "".join(parts).encode("utf-8")


def _parse(query: str) -> tuple[str | None, int]:
    try:
        fields = parse_qs(query[:_QUERY_LIMIT], max_num_fields=4)
    except ValueError:
        return None, 1
    config = (fields.get("config") or [""])[0]
    raw = (fields.get("page") or ["1"])[0]
    page = int(raw) if raw.isascii() and raw.isdigit() and len(raw) <= 9 else 1
    return (config[:TEXT_LIMIT] if config else None), max(page, 1)


_HEAD = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>extauth status</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#111;background:#f8fafc}
main{max-width:1100px;margin:0 auto;padding:16px 24px}
h1{font-size:22px;margin:8px 0}h2{font-size:17px;margin:22px 0 6px}
table{border-collapse:collapse;width:100%;background:#fff}
th,td{border:1px solid #e2e8f0;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f1f5f9}td.n{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#166534;font-weight:600}.bad{color:#b91c1c;font-weight:600}
.muted{color:#64748b}code{font-size:13px}
.legend span{display:inline-block;margin-right:14px}
.legend i{display:inline-block;width:10px;height:10px;margin-right:4px}
</style></head><body><main>
"""


def _summary(policy: Policy, views: list[HealthView]) -> str:
    down = [v.source for v in views if not v.up]
    rejected = sum(v.rejected_now for v in views)
    health = (
        f'<span class="bad">source down: {_text(", ".join(down))}</span>'
        if down
        else '<span class="ok">all sources syncing</span>'
    )
    return (
        f"<h1>extauth {_text(__version__)}</h1>"
        f'<p id="summary">{len(policy.configs)} AuthConfig(s), {policy.key_count} '
        f"API key holder(s), {rejected} rejected resource(s), {len(policy.problems)} "
        f"policy problem(s); {health}. "
        f'<span class="muted">Generated {_when(time.time())}.</span></p>\n'
    )


def _sources(views: list[HealthView]) -> str:
    rows = []
    for view in views:
        state = '<span class="ok">up</span>' if view.up else '<span class="bad">down</span>'
        errors = sum(view.errors.values())
        restarts = sum(view.restarts.values())
        rows.append(
            f'<tr data-source="{_text(view.source)}"><td>{_text(view.source)}</td>'
            f"<td>{state}</td><td>{_when(view.last_sync)}</td>"
            f'<td class="n">{errors}</td><td class="n">{restarts}</td>'
            f'<td class="n">{view.rejected_now}</td><td>{_text(view.problem or "")}</td></tr>'
        )
    return (
        '<h2>Sources</h2><table id="sources"><tr><th>source</th><th>state</th>'
        "<th>last sync</th><th>errors</th><th>watch restarts</th><th>rejected now</th>"
        "<th>problem</th></tr>" + "".join(rows) + "</table>\n"
    )


def _rejected_configs(views: list[HealthView]) -> dict[str, str]:
    """config id -> reason, for the AuthConfigs a source rejects now."""
    found: dict[str, str] = {}
    for view in views:
        for kind, name, reason in view.rejected_items:
            if kind == "AuthConfig":
                found[name.replace("/", ".", 1)] = reason
    return found


def _configs(
    policy: Policy, admissions: Mapping[str, list[ApiKey]], views: list[HealthView]
) -> str:
    rejected = _rejected_configs(views)
    ids = sorted(set(policy.configs) | set(rejected))
    rows = []
    for config_id in ids[:CONFIG_ROWS]:
        config = policy.configs.get(config_id)
        reason = rejected.get(config_id)
        if reason is None:
            state, why = '<span class="ok">Accepted</span>', ""
        else:
            serving = " (its last good version serves)" if config is not None else ""
            state, why = '<span class="bad">Rejected</span>', _text(reason + serving, 400)
        count = len(admissions.get(config_id, ()))
        link = (
            f'<a href="/?{_text(urlencode({"config": config_id}))}#identities">{count}</a>'
            if config is not None
            else "0"
        )
        rows.append(
            f'<tr data-config="{_text(config_id)}"><td><code>{_text(config_id)}</code></td>'
            f"<td>{state}</td><td>{_describe(config)}</td>"
            f'<td class="n">{link}</td><td>{why}</td></tr>'
        )
    more = _more(len(ids), CONFIG_ROWS)
    return (
        '<h2>AuthConfigs</h2><table id="authconfigs"><tr><th>AuthConfig</th><th>state</th>'
        "<th>keys from</th><th>identities</th><th>reason</th></tr>"
        + "".join(rows)
        + "</table>"
        + more
        + "\n"
    )


def _describe(config: CompiledConfig | None) -> str:
    if config is None:
        return ""
    sources = {str(source) for rule in config.rules for source in rule.sources}
    return _text(", ".join(sorted(sources)))


def _more(total: int, shown: int) -> str:
    if total <= shown:
        return ""
    return f'<p class="muted">… and {total - shown} more not shown.</p>'


def _identities(policy: Policy, config_id: str, keys: list[ApiKey] | None, page: int) -> str:
    title = f"<h2>Identities admitted by <code>{_text(config_id)}</code></h2>"
    if keys is None:
        return title + '<p id="identities" class="bad">No such AuthConfig is loaded.</p>\n'
    pages = max(1, -(-len(keys) // PAGE_SIZE))
    page = min(page, pages)
    shown = keys[(page - 1) * PAGE_SIZE : page * PAGE_SIZE]
    label = policy.usage_label
    rows = "".join(
        f"<tr><td>{_text(k.namespace)}/{_text(k.name)}</td>"
        + (f"<td>{_text(k.metadata.get(label, '-'))}</td>" if label else "")
        + f"<td>{_when(k.expires_at) if k.expires_at is not None else ''}</td></tr>"
        for k in shown
    )
    team = f"<th>{_text(label)}</th>" if label else ""
    nav = []
    for target, word in ((page - 1, "previous"), (page + 1, "next")):
        if 1 <= target <= pages:
            query = _text(urlencode({"config": config_id, "page": target}))
            nav.append(f'<a href="/?{query}#identities">{word}</a>')
    return (
        f'{title}<p id="identities-count">{len(keys)} identities; page {page} of {pages}. '
        f"{' '.join(nav)}</p>"
        f'<table id="identities"><tr><th>Secret</th>{team}<th>expires</th></tr>{rows}</table>\n'
    )


def _rejected(views: list[HealthView]) -> str:
    items = [(v.source, *item) for v in views for item in v.rejected_items]
    total = max(len(items), sum(v.rejected_now for v in views))
    if not items:
        return '<h2>Rejected resources</h2><p id="rejected">None.</p>\n'
    rows = "".join(
        f"<tr><td>{_text(source)}</td><td>{_text(kind)}</td><td><code>{_text(name)}</code>"
        f"</td><td>{_text(reason, 400)}</td></tr>"
        for source, kind, name, reason in items[:LIST_LIMIT]
    )
    return (
        '<h2>Rejected resources</h2><table id="rejected"><tr><th>source</th><th>kind</th>'
        f"<th>name</th><th>reason</th></tr>{rows}</table>{_more(total, LIST_LIMIT)}\n"
    )


def _expiring(policy: Policy) -> str:
    now = time.time()
    soon = sorted(
        (
            k
            for k in {id(k): k for k in policy.keys.values()}.values()
            if k.expires_at is not None and now < k.expires_at <= now + EXPIRY_WINDOW
        ),
        key=lambda k: (k.expires_at or 0.0, k.namespace, k.name),
    )
    if not soon:
        return '<h2>Keys expiring within 7 days</h2><p id="expiring">None.</p>\n'
    rows = "".join(
        f"<tr><td>{_text(k.namespace)}/{_text(k.name)}</td><td>{_when(k.expires_at)}</td>"
        f'<td class="n">{((k.expires_at or now) - now) / 3600:.0f} h</td></tr>'
        for k in soon[:LIST_LIMIT]
    )
    return (
        f'<h2>Keys expiring within 7 days ({len(soon)})</h2><table id="expiring">'
        f"<tr><th>Secret</th><th>expires</th><th>in</th></tr>{rows}</table>"
        f"{_more(len(soon), LIST_LIMIT)}\n"
    )


def _usage(history: UsageHistory, label: str | None) -> str:
    title = "<h2>Requests per team, last hour</h2>"
    if not label:
        return title + '<p id="usage">Not counted: start with <code>--usage-label</code>.</p>\n'
    times, series = history.series()
    totals = sorted(((sum(v), team) for team, v in series.items()), reverse=True)
    top = [team for total, team in totals if total > 0][:TEAMS]
    if not top:
        return title + '<p id="usage">No allowed requests in the last hour.</p>\n'
    return title + _chart(times, {team: series[team] for team in top}, history.step) + "\n"


def _chart(times: list[float], series: dict[str, list[int]], step: float) -> str:
    """Stacked bars, one per step of the last hour (the last: the step so far), a colour
    per team; each bar part's title says the team and its count."""
    width, height, left, bottom, top = 640, 180, 64, 20, 8
    teams = list(series.items())
    steps = len(times)
    stacks = [sum(values[i] for _, values in teams) for i in range(steps)]
    peak = max(stacks, default=0) or 1
    plot = height - bottom - top
    slot = (width - left - 8) / POINTS
    bars = []
    for i in range(steps):
        x = left + slot * (POINTS - steps + i)
        base = float(height - bottom)
        for color, (team, values) in zip(_COLORS, teams, strict=False):
            value = values[i]
            if value <= 0:
                continue
            tall = plot * value / peak
            base -= tall
            bars.append(
                f'<rect x="{x + 1:.1f}" y="{base:.1f}" width="{max(slot - 2, 1):.1f}" '
                f'height="{tall:.1f}" fill="{color}"><title>{_text(team, 64)}: {value:,} '
                f"requests</title></rect>"
            )
    legend = "".join(
        f'<span data-team="{_text(team, 64)}"><i style="background:{color}"></i>'
        f"{_text(team, 64)}: {sum(values):,}</span>"
        for color, (team, values) in zip(_COLORS, teams, strict=False)
    )
    base_y = height - bottom
    axes = (
        f'<line x1="{left}" y1="{base_y}" x2="{width - 8}" y2="{base_y}" stroke="#94a3b8"/>'
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{base_y}" stroke="#94a3b8"/>'
        f'<text x="{left - 4}" y="{top + 6}" text-anchor="end" font-size="11">{peak:,}</text>'
        f'<text x="{left - 4}" y="{base_y}" text-anchor="end" font-size="11">0</text>'
        f'<text x="{left}" y="{height - 4}" font-size="11">-{POINTS * step / 60:.0f} min</text>'
        f'<text x="{width - 8}" y="{height - 4}" text-anchor="end" font-size="11">now</text>'
    )
    return (
        f'<svg id="usage" role="img" aria-label="requests per team per {step:.0f} s" '
        f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'xmlns="http://www.w3.org/2000/svg" style="background:#fff">'
        f"{axes}{''.join(bars)}</svg>"
        f'<p id="usage-legend" class="legend muted">per {step:.0f} s: {legend}</p>'
    )


def _problems(policy: Policy, serving: list[str]) -> str:
    problems: Iterable[object] = policy.problems
    listed = serving + [str(p) for p in problems]
    if not listed:
        return '<h2>Policy problems</h2><p id="problems">None.</p>\n'
    rows = "".join(f"<li>{_text(p, 400)}</li>" for p in listed[:LIST_LIMIT])
    return (
        f'<h2>Policy problems ({len(listed)})</h2><ul id="problems">{rows}</ul>'
        f"{_more(len(listed), LIST_LIMIT)}\n"
    )
