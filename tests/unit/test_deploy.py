"""The production stack's files: docker-compose.yml, Prometheus, Grafana.

No Docker engine runs here, so the compose file is checked for structure and for
what it refers to; the Prometheus files with ``promtool`` (Debian's prometheus);
and every metric the dashboard and the alerts query must be one eddy exports.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from eddy.streams import metrics
from eddy.streams.settings import env_var, setting_names

REPO = Path(__file__).resolve().parents[2]
PROMTOOL = shutil.which("promtool")


def compose() -> dict[str, Any]:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def exported_metric_names() -> set[str]:
    """Every sample name eddy's processes can expose (counters with _total, etc.)."""
    registry = CollectorRegistry()
    for kind in (
        metrics.EngineMetrics, metrics.ConsumerMetrics, metrics.ControlMetrics,
        metrics.ModelEventMetrics,
    ):  # fmt: skip
        kind.create(registry)
    metrics.process_metrics(registry)
    names = set()
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "gauge": ("",),
    }
    for family in registry.collect():
        for suffix in suffixes.get(family.type, ("",)):
            names.add(family.name + suffix)
    return names


def queried_metrics(text: str) -> set[str]:
    return set(re.findall(r"\beddy_[a-z0-9_]+", text))


def test_compose_runs_kafka_eddy_prometheus_and_grafana() -> None:
    services = compose()["services"]
    assert {"kafka", "topics", "worker", "retrainer", "exporter", "prometheus", "grafana"} <= set(
        services
    )
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert services["kafka"]["image"].startswith("apache/kafka:3.")  # 4.x breaks faust


def test_compose_mounts_files_that_exist() -> None:
    for name, service in compose()["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("./"):
                assert (REPO / source).exists(), f"{name} mounts missing {source}"
    assert (REPO / "Dockerfile").is_file()


def test_compose_sets_only_real_settings_and_prometheus_scrapes_their_ports() -> None:
    known = {env_var(name) for name in setting_names()}
    ports = {}
    for name, service in compose()["services"].items():
        env = service.get("environment") or {}
        for key in env:
            if key.startswith("EDDY_"):
                assert key in known, f"{name} sets {key}, which is no eddy setting"
        if "EDDY_METRICS_PORT" in env:
            ports[name] = int(env["EDDY_METRICS_PORT"])
    assert set(ports) == {"worker", "retrainer", "exporter"}
    config = yaml.safe_load((REPO / "deploy/prometheus/prometheus.yml").read_text())
    targets = {t for job in config["scrape_configs"] for s in job["static_configs"]
               for t in s["targets"]}  # fmt: skip
    assert targets == {f"{name}:{port}" for name, port in ports.items()}


@pytest.mark.skipif(PROMTOOL is None, reason="no promtool: install Debian's `prometheus`")
def test_promtool_accepts_the_config_and_the_rules() -> None:
    for args in (
        ["check", "config", "deploy/prometheus/prometheus.yml"],
        ["check", "rules", "deploy/prometheus/alerts.yml"],
    ):
        done = subprocess.run([PROMTOOL, *args], cwd=REPO, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "SUCCESS" in done.stdout + done.stderr


def test_grafana_is_provisioned_with_a_datasource_and_the_dashboard() -> None:
    grafana = REPO / "deploy/grafana"
    sources = yaml.safe_load((grafana / "provisioning/datasources/prometheus.yml").read_text())
    uid = sources["datasources"][0]["uid"]
    assert sources["datasources"][0]["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((grafana / "provisioning/dashboards/eddy.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    dashboard = json.loads((grafana / "dashboards/eddy.json").read_text())
    assert len(dashboard["panels"]) >= 10
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == uid
        assert panel["targets"], panel["title"]


def test_every_metric_the_dashboard_and_alerts_query_is_exported() -> None:
    exported = exported_metric_names()
    for path in ("deploy/grafana/dashboards/eddy.json", "deploy/prometheus/alerts.yml"):
        queried = queried_metrics((REPO / path).read_text())
        assert queried, path
        missing = queried - exported
        assert not missing, f"{path} queries metrics eddy does not export: {sorted(missing)}"


def test_the_check_would_catch_a_misspelt_metric() -> None:
    """The check above is not vacuous."""
    assert "eddy_examples_learnt_total" not in exported_metric_names()
    assert "eddy_examples_learned_total" in exported_metric_names()
