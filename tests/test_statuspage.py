"""The status page's renderer against hostile values and sizes, and `--no-status-page`
(the page in a real browser: tests/e2e/test_status_page.py)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from extauth import inspecting, keys
from extauth.building import compile_policy
from extauth.cli import SourceSettings, sources_for
from extauth.server import Server, Settings
from extauth.sourcehealth import SourceHealth
from extauth.statuspage import PAGE_SIZE, StatusPage, UsageHistory, admitted
from tests.builders import authconfig, merge, secret, snapshot
from tests.harness import request

HOSTILE = '<script>alert("x")</script>'


def _page(policy_size: int, counts: dict[tuple[str, str], int]) -> StatusPage:
    documents = [
        secret(f"s-{i:05}", f"k-{i}", labels={"t": "p"}, x_org=HOSTILE) for i in range(policy_size)
    ]
    configs = [
        authconfig(
            f"c-{i:04}", "headerName: x-key\nk8sSecretApikeyStorage: {labelSelector: {t: p}}"
        )
        for i in range(600)
    ]
    policy = compile_policy(
        merge(snapshot(*documents), snapshot(*configs, path="c.yaml")), usage_label="x-org"
    )
    health = SourceHealth("files")
    health.rejected_list = lambda: [
        ("File", f"/d/{HOSTILE}-{i}.yaml", HOSTILE * 100) for i in range(500)
    ]
    health.rejected_now = lambda: 500
    usage = UsageHistory(lambda: counts)
    usage.sample()
    return StatusPage(lambda: policy, [health], usage)


def test_hostile_values_are_text_and_the_page_stays_bounded() -> None:
    counts = {("ns.c-0000", f"{HOSTILE}{i}"): 10**18 + i for i in range(50)}
    page = _page(250, counts)
    counts.update({k: v * 2 for k, v in counts.items()})  # 10^18 requests this minute
    body = page.render().decode()
    assert "<script" not in body
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in body
    assert "1,000,000,000,000,000,049" in body  # a huge count, written out
    assert len(re.findall(r"<rect ", body)) == 8  # the 8 busiest teams, no more
    assert "… and 100 more not shown." in body  # 600 AuthConfigs: 500 rows
    assert "… and 450 more not shown." in body  # 500 rejected: 50 rows
    assert len(body) < 300_000
    # Every value, however long, is cut: no cell holds the 2,700-character reason.
    assert HOSTILE * 20 not in body

    listing = page.render("config=ns.c-0001&page=3").decode()
    assert "250 identities; page 3 of 3" in listing
    assert listing.count("ns/s-") == 250 - 2 * PAGE_SIZE
    assert "page 3 of 3" in page.render("config=ns.c-0001&page=999999999").decode()
    assert "page 1 of 3" in page.render("config=ns.c-0001&page=99999999999").decode()
    assert "page 1 of 3" in page.render("config=ns.c-0001&page=%D9%A3").decode()  # Arabic 3
    for query in ("config=%3Cscript%3E", "page=abc&config=ns.c-0001", "a=1&" * 5000, "%ff=%fe"):
        body = page.render(query).decode()
        assert "<script" not in body


def test_no_status_page_is_a_404(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(secret("a", "key-a"))

    async def main(enabled: bool) -> tuple[int, int]:
        settings = Settings(
            grpc_address="127.0.0.1:0",
            http_address="127.0.0.1:0",
            status_page=enabled,
        )
        server = Server(settings, sources_for(SourceSettings(config_dir=tmp_path)))
        stop = asyncio.Event()
        task = asyncio.create_task(server.run(stop))
        await asyncio.wait_for(server.ready.wait(), 10)
        assert server.status.port is not None
        page = await asyncio.to_thread(request, server.status.port, "/?config=x")
        metrics = await asyncio.to_thread(request, server.status.port, "/metrics")
        stop.set()
        await asyncio.wait_for(task, 10)
        return page.status, metrics.status

    assert asyncio.run(main(True)) == (200, 200)
    assert asyncio.run(main(False)) == (404, 200)


def test_who_each_authconfig_admits_agrees_with_inspect() -> None:
    """The page's grouped, indexed count against `inspect`'s key-by-key one."""
    documents = [
        secret("a", "k-a", labels={"t": "p", "z": "z1"}),
        secret("b", "k-b", labels={"t": "p"}),
        secret("c", "k-c", namespace="other", labels={"t": "p"}),
        secret("d", "k-d", labels={"t": "q"}),
        secret("e", "k-e").replace("api-key: 'k-e'", f"api-key-hash: '{keys.key_hash('k-e')}'"),
        authconfig(
            "refs",
            "headerName: x\nk8sSecretApikeyStorage: {apiKeySecretRefs: "
            "[{name: a}, {name: c, namespace: other}, {name: e}]}",
        ),
        authconfig("local", "headerName: x\nk8sSecretApikeyStorage: {labelSelector: {t: p}}"),
        authconfig(
            "wide",
            "headerName: x\nallNamespaces: true\nk8sSecretApikeyStorage: {labelSelector: {t: p}}",
        ),
        authconfig(
            "two",
            "headerName: x\nk8sSecretApikeyStorage: {labelSelector: {t: p, z: z1}}",
            "headerName: y\nk8sSecretApikeyStorage: {labelSelector: {t: q}}",
        ),
        authconfig(
            "hashed",
            "headerName: x\nrequireHashedKeys: true\n"
            "k8sSecretApikeyStorage: {apiKeySecretRefs: [{name: a}, {name: e}]}",
        ),
    ]
    policy = compile_policy(snapshot(*documents))
    expected = {
        view.config_id: [f"{i.namespace}/{i.name}" for i in view.identities]
        for view in inspecting.report(policy).authconfigs
    }
    found = {
        config_id: [f"{k.namespace}/{k.name}" for k in found]
        for config_id, found in admitted(policy).items()
    }
    assert found == expected
    assert expected["ns.wide"] == ["ns/a", "ns/b", "other/c"]
    assert expected["ns.hashed"] == ["ns/e"]
