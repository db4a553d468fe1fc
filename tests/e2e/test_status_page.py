"""The status page in a real browser: `extauth serve` on a config directory that holds
hostile names, loaded by headless Chromium (Debian's `chromium`), its content asserted
through the DOM Chromium built, and a screenshot taken (EXTAUTH_STATUS_SCREENSHOT=PATH
keeps it: that is how docs/status-page.png is made)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path

import grpc
import pytest
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc

from tests.builders import authconfig, secret
from tests.harness import Extauth, free_port, request, wait_until

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium (apt-get install chromium; .ci/run does)"
)

SCRIPT_TEAM = "<script>alert(1)</script>"
QUOTED_TEAM = '"quoted" & <b>bold</b>'
HOSTILE_FILE = "<img src=x onerror=alert(1)>.yaml"
PARTNERS = 130  # more than a page of identities (100)


class Dom(HTMLParser):
    """The elements Chromium built, and the text under each id."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.ids: dict[str, list[str]] = {}
        self._open: list[str | None] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag in ("meta", "br", "hr", "img", "input", "link"):
            return
        found = dict(attrs).get("id")
        if found:
            self.ids[found] = []
        self._open.append(found)

    def handle_endtag(self, tag: str) -> None:
        if self._open and tag not in ("meta", "br", "hr", "img", "input", "link"):
            self._open.pop()

    def handle_data(self, data: str) -> None:
        for name in self._open:
            if name:
                self.ids[name].append(data)

    def text(self, name: str) -> str:
        return " ".join(" ".join(self.ids[name]).split())


def _chromium(tmp_path: Path, *args: str) -> str:
    assert CHROMIUM is not None
    result = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",  # root in CI
            "--disable-gpu",
            "--disable-dev-shm-usage",
            f"--user-data-dir={tmp_path / 'profile'}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def _allow(address: str, config_id: str, key: str) -> None:
    message = external_auth_pb2.CheckRequest()
    message.attributes.context_extensions["config_id"] = config_id
    message.attributes.request.http.headers["x-key"] = key
    with grpc.insecure_channel(address) as channel:
        reply = external_auth_pb2_grpc.AuthorizationStub(channel).Check(message, timeout=5)
    assert reply.status.code == 0


def _config_dir(root: Path) -> Path:
    config = root / "config"
    config.mkdir()
    soon = (datetime.now(UTC) + timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    later = (datetime.now(UTC) + timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
    refs = "{apiKeySecretRefs: [{name: red}, {name: evil}, {name: quoted}, {name: ending}]}"
    (config / "teams.yaml").write_text(
        "---\n".join(
            [
                secret("red", "key-red-SECRET", x_org="red"),
                secret("evil", "key-evil-SECRET", x_org=SCRIPT_TEAM),
                secret("quoted", "key-quoted-SECRET", x_org=QUOTED_TEAM),
                secret("ending", "key-ending-SECRET", x_org="red", expires_at=soon),
                authconfig("teams", f"headerName: x-key\nk8sSecretApikeyStorage: {refs}"),
            ]
        )
    )
    (config / "partners.yaml").write_text(
        "---\n".join(
            [
                *(
                    secret(
                        f"partner-{i:03}",
                        f"key-partner-{i}-SECRET",
                        labels={"tier": "partner"},
                        x_org="partners",
                        expires_at=later,
                    )
                    for i in range(PARTNERS)
                ),
                authconfig(
                    "partners",
                    "headerName: x-key\nk8sSecretApikeyStorage: {labelSelector: {tier: partner}}",
                ),
            ]
        )
    )
    (config / HOSTILE_FILE).write_text("kind: Secret\nmetadata: [\n")
    return config


def test_the_status_page_in_headless_chromium(tmp_path: Path) -> None:
    http = free_port()
    service = Extauth(
        _config_dir(tmp_path),
        tmp_path / "extauth.log",
        "--http-address",
        f"127.0.0.1:{http}",
        "--usage-label",
        "x-org",
    )
    try:
        service.wait_ready()
        for key, times in (("red", 5), ("evil", 3), ("quoted", 2)):
            for _ in range(times):
                _allow(service.address, "ns.teams", f"key-{key}-SECRET")
        for i in range(4):
            _allow(service.address, "ns.partners", f"key-partner-{i}-SECRET")
        url = f"http://127.0.0.1:{http}/"
        started = time.monotonic()
        dom = Dom(_chromium(tmp_path, "--dump-dom", url))
        loaded = time.monotonic() - started
        page2 = Dom(_chromium(tmp_path, "--dump-dom", f"{url}?config=ns.partners&page=2"))
        shot = Path(os.environ.get("EXTAUTH_STATUS_SCREENSHOT") or tmp_path / "status.png")
        shot.parent.mkdir(parents=True, exist_ok=True)
        _chromium(tmp_path, f"--screenshot={shot.resolve()}", "--window-size=1100,1250", url)
        served = request(http, "/")
        wait_until(lambda: True if "rejected" in service.log() else None, 10, "the log")
    finally:
        service.stop()

    # Escaped everywhere: the hostile names are text, no element came of them.
    assert "script" not in dom.tags
    assert "img" not in dom.tags
    assert "b" not in dom.tags
    assert set(dom.tags) <= {
        *("html", "head", "meta", "title", "style", "body", "main", "h1", "h2", "p", "span"),
        *("table", "tbody", "tr", "th", "td", "code", "a", "ul", "li", "i"),
        *("svg", "line", "text", "rect", "title"),
    }
    assert "2 AuthConfig(s)" in dom.text("summary")
    assert f"{PARTNERS + 4} API key holder(s)" in dom.text("summary")
    assert "files up" in dom.text("sources")
    configs = dom.text("authconfigs")
    assert "ns.partners Accepted header x-key 130" in configs
    assert "ns.teams Accepted header x-key 4" in configs
    assert HOSTILE_FILE in dom.text("rejected")
    assert "YAML syntax error" in dom.text("rejected")
    assert "ns/ending" in dom.text("expiring")
    assert "partner-" not in dom.text("expiring")  # 30 days away: not within 7
    # The chart: a series per team (its title says the team), and the legend.
    legend = dom.text("usage-legend")
    assert f"{SCRIPT_TEAM}: 3" in legend
    assert f"{QUOTED_TEAM}: 2" in legend
    assert "red: 5" in legend
    assert "partners: 4" in legend
    assert f"{SCRIPT_TEAM}: 3 requests" in dom.text("usage")
    assert dom.tags.count("rect") == 4  # this minute's bar: a part per team

    # A page at a time: 130 identities, page 2 holds the last 30.
    assert "130 identities; page 2 of 2" in page2.text("identities-count")
    rows = page2.text("identities")
    assert "ns/partner-100" in rows
    assert "ns/partner-129" in rows
    assert "ns/partner-099" not in rows

    for body in (served.body.decode(), " ".join(dom.tags)):
        assert "SECRET" not in body  # names only, never a key
    assert served.headers["content-security-policy"].startswith("default-src 'none'")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    print(f"\nstatus page: {len(served.body)} bytes; chromium loaded it in {loaded:.2f}s")
