"""The Grafana dashboard and the alert rules against a real Prometheus (Debian's), scraping
a real extauth and a real Envoy under scripted traffic.

Prometheus runs deploy/prometheus/prometheus.yml with its targets moved to local ports and
a 1 s scrape interval; it scrapes the way it does by default (OpenMetrics when the target
offers it). The traffic: allowed requests for two teams (one key expiring in 3 days),
denies for a wrong, a missing and an expired key, a route naming an AuthConfig that does
not exist, a file rejected in the config directory, a path below it that cannot be read
for a while (a symlink loop), and a Check that times out (extauth stopped with SIGSTOP for
longer than Envoy's 0.5 s). Then every query of every panel of
deploy/grafana/dashboards/extauth.json is evaluated through Prometheus's HTTP API and must
return data that moved (a value other than 0; watch restarts excepted, which need an
inotify queue overflow), and every alert rule must evaluate without error, the ones this
traffic should trip among the pending or firing alerts.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import harness
from tests.harness import ROOT, request, wait_until

pytestmark = pytest.mark.e2e

DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "extauth.json"
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
# Grafana's interval variables, as Grafana would set them at a 1 s scrape interval.
GRAFANA_VARIABLES = {"$__rate_interval": "30s", "$__interval": "1s", "$__range": "1m"}
# Alerts the scripted traffic must trip (pending: their `for` has not passed yet).
TRIPPED = {"ExtauthResourcesRejected", "ExtauthKeysExpiringSoon", "EnvoyExtAuthzTimeouts"}
# Queries whose data may stay 0 here, and why.
MAY_STAY_ZERO = {
    "extauth_source_restarts_total": "a files source restarts only on an inotify overflow",
}


def key(name: str, team: str, expires_in: datetime.timedelta) -> str:
    """A Secret the example AuthConfig admits (by its label), expiring `expires_in` from now."""
    expires = datetime.datetime.now(datetime.UTC) + expires_in
    return f"""
apiVersion: v1
kind: Secret
type: extauth.solo.io/apikey
metadata:
  name: {name}-apikey
  namespace: agentgateway-system
  labels: {{llm-provider: openai}}
stringData:
  api-key: {name}-key
  x-org: {team}
  expires-at: "{expires.strftime("%Y-%m-%dT%H:%M:%SZ")}"
"""


@dataclass
class Stack:
    listen: int
    prometheus: int
    config_dir: Path
    extauth: harness.Extauth

    def query(self, expr: str) -> list[dict[str, Any]]:
        url = f"http://127.0.0.1:{self.prometheus}/api/v1/query?" + urllib.parse.urlencode(
            {"query": expr}
        )
        with urllib.request.urlopen(url, timeout=5) as answer:
            body = json.load(answer)
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def api(self, path: str) -> Any:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{self.prometheus}{path}", timeout=5
        ) as answer:
            return json.load(answer)["data"]


def prometheus_config(extauth_http: int, envoy_admin: int, work: Path) -> Path:
    """deploy/prometheus/prometheus.yml on local ports, scraping every second."""
    config: dict[str, Any] = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    targets = {"extauth": extauth_http, "envoy": envoy_admin}
    for job in config["scrape_configs"]:
        job["static_configs"] = [{"targets": [f"127.0.0.1:{targets[job['job_name']]}"]}]
    config["rule_files"] = [str(PROMETHEUS_CONFIG.parent / f) for f in config["rule_files"]]
    path = work / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def with_unknown_route(config: dict[str, Any]) -> None:
    """A route naming an AuthConfig that is not loaded (denied 403, `(unknown)`)."""
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    vhost = hcm["typed_config"]["route_config"]["virtual_hosts"][0]
    per_route = {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute",
        "check_settings": {"context_extensions": {"config_id": "tests.does-not-exist"}},
    }
    route = {
        "match": {"prefix": "/unknown"},
        "route": {"cluster": "upstream"},
        "typed_per_filter_config": {"envoy.filters.http.ext_authz": per_route},
    }
    vhost["routes"].insert(0, route)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    binary = harness.debian_tool("prometheus", "prometheus")
    work = tmp_path_factory.mktemp("prometheus")
    config_dir = harness.config_dir(
        work,
        {
            "team2.yaml": key("team2", "platform", datetime.timedelta(days=3)),
            "team3.yaml": key("team3", "late", -datetime.timedelta(days=1)),
        },
        authconfigs=True,
    )
    http = harness.free_port()
    with harness.echo_upstream() as upstream:
        extauth = harness.Extauth(
            config_dir,
            work / "extauth.log",
            "--http-address",
            f"127.0.0.1:{http}",
            "--usage-label",
            "x-org",
            "--default-config",
            "agentgateway-system.apikey-auth",
        )

        def flushing_soon() -> tuple[dict[str, Any], int]:
            config, listen = harness.envoy_config(
                extauth=extauth.port, upstream=upstream, work=work
            )
            with_unknown_route(config)
            config["stats_flush_interval"] = "1s"  # histograms reach the admin sooner
            return config, listen

        prometheus: subprocess.Popen[bytes] | None = None
        with (
            harness.serving(extauth, flushing_soon, work) as (envoy, listen),
            (work / "prometheus.log").open("wb") as log,
        ):
            try:
                port = harness.free_port()
                prometheus = subprocess.Popen(
                    [
                        binary,
                        f"--config.file={prometheus_config(http, envoy.admin_port, work)}",
                        f"--storage.tsdb.path={work / 'data'}",
                        f"--web.listen-address=127.0.0.1:{port}",
                        "--log.level=warn",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )

                def ready() -> bool | None:
                    if prometheus is not None and prometheus.poll() is not None:
                        raise AssertionError(
                            f"prometheus exited:\n{(work / 'prometheus.log').read_text()}"
                        )
                    try:
                        return True if request(port, "/-/ready").status == 200 else None
                    except OSError:
                        return None

                wait_until(ready, 20, "prometheus to be ready")
                yield Stack(listen, port, config_dir, extauth)
            finally:
                if prometheus is not None:
                    prometheus.terminate()
                    prometheus.wait(10)


def traffic(stack: Stack) -> None:
    """One round: allowed for two teams, denied three ways."""
    post = "POST"
    for sent, status in [("team1-key", 200), ("team2-key", 200), ("guessed", 401)]:
        for _ in range(3):
            assert request(stack.listen, "/openai", {"vanity-auth": sent}, post).status == status
    assert request(stack.listen, "/openai", {"vanity-auth": "team3-key"}, post).status == 401
    assert request(stack.listen, "/openai", {}, post).status == 401
    assert request(stack.listen, "/unknown", {"vanity-auth": "team1-key"}).status == 403


def scraped_after(stack: Stack, moment: float, scrapes: int = 2) -> None:
    """Wait until both targets have been scraped `scrapes` times since `moment`."""

    def done() -> bool | None:
        targets = stack.api("/api/v1/targets")["activeTargets"]
        fresh = [
            t
            for t in targets
            if t["health"] == "up"
            and datetime.datetime.fromisoformat(t["lastScrape"]).timestamp() > moment + scrapes - 1
        ]
        return True if len(fresh) == len(targets) == 2 else None

    wait_until(done, 20, f"{scrapes} scrapes of extauth and Envoy")


def queries() -> list[tuple[str, str]]:
    """(panel title, query) for every query of every panel, Grafana's variables set."""
    dashboard = json.loads(DASHBOARD.read_text())
    found = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for name, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(name, value)
            assert "$" not in expr, f"{panel['title']}: a variable the test does not set"
            found.append((f"{panel['title']} [{target['refId']}]", expr))
    return found


def moved(expr: str, result: list[dict[str, Any]]) -> bool:
    if any(name in expr for name in MAY_STAY_ZERO):
        return bool(result)
    return any(float(sample["value"][1]) != 0 for sample in result)


def test_every_panel_and_alert_sees_the_traffic(stack: Stack) -> None:
    started = time.time()
    scraped_after(stack, started, 1)
    traffic(stack)
    (stack.config_dir / "broken.yaml").write_text("apiVersion: v1\nkind: Secret\nmetadata: [\n")
    # A path that cannot be examined (ELOOP, even for root): a source error, the source
    # down until it is gone.
    loop = stack.config_dir / "loop.yaml"
    loop.symlink_to(loop.name)
    wait_until(
        lambda: stack.query("extauth_source_errors_total > 0") or None,
        20,
        "the unreadable path counted",
    )
    loop.unlink()
    # A Check that times out: Envoy gives up after 0.5 s and answers 503.
    os.kill(stack.extauth.proc.pid, signal.SIGSTOP)
    try:
        timed_out = request(stack.listen, "/openai", {"vanity-auth": "team1-key"}, "POST")
    finally:
        os.kill(stack.extauth.proc.pid, signal.SIGCONT)
    assert timed_out.status == 503
    scraped_after(stack, time.time())
    # A second round, so that series born in the first one have moved since.
    traffic(stack)

    panels = queries()
    assert len(panels) >= 15

    def all_moved() -> list[tuple[str, str, list[dict[str, Any]]]] | None:
        results = [(title, expr, stack.query(expr)) for title, expr in panels]
        return results if all(moved(expr, result) for _, expr, result in results) else None

    try:
        wait_until(all_moved, 20, "every panel's query to return data")
    except AssertionError:
        empty = [
            f"{title}: {expr} -> {stack.query(expr)}"
            for title, expr in panels
            if not moved(expr, stack.query(expr))
        ]
        raise AssertionError("queries without data:\n" + "\n".join(empty)) from None

    # What the panels show is what happened.
    teams = {r["metric"]["team"] for r in stack.query("extauth_usage_total")}
    assert teams == {"developers", "platform"}
    results = {r["metric"]["result"] for r in stack.query("extauth_decisions_total")}
    assert {
        "allow",
        "invalid_api_key",
        "missing_api_key",
        "expired_api_key",
        "unknown_auth_config",
    } <= results
    timeouts = 'envoy_cluster_upstream_rq_timeout{envoy_cluster_name="extauth"}'
    assert moved(timeouts, stack.query(timeouts))

    # Every rule evaluates (no error, no missing function), and this traffic trips some.
    def tripped() -> set[str] | None:
        alerts = {a["labels"]["alertname"] for a in stack.api("/api/v1/alerts")["alerts"]}
        return alerts if alerts >= TRIPPED else None

    alerts = wait_until(tripped, 20, f"alerts {sorted(TRIPPED)} pending or firing")
    assert "ExtauthAllDown" not in alerts
    rules = [r for group in stack.api("/api/v1/rules")["groups"] for r in group["rules"]]
    groups = yaml.safe_load((PROMETHEUS_CONFIG.parent / "alerts.yml").read_text())["groups"]
    assert len(rules) == sum(len(group["rules"]) for group in groups)
    # A misspelt metric evaluates cleanly to nothing, forever: every name the rules
    # read is one that extauth or Envoy really serves.
    served = set(stack.api("/api/v1/label/__name__/values"))
    for group in groups:
        for rule in group["rules"]:
            # Metric names only: label matchers and groupings set aside.
            expr = re.sub(r"\{[^}]*\}|\b(?:by|without|on|ignoring)\s*\([^)]*\)", "", rule["expr"])
            for name in re.findall(r"\b(?:extauth|envoy)_[a-z0-9_]+", expr):
                assert name in served, f"{rule['alert']}: {name} is not served"
    for rule in rules:
        assert rule["health"] == "ok", rule
