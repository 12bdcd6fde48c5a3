"""The production stack's files: docker-compose.yml, the Dockerfile, Prometheus, Grafana.

No Docker engine runs here, so the compose file is checked for structure, for what it
refers to and for its hardening (ports on 127.0.0.1, healthchecks, secrets from the
environment, named volumes, a non-root image); the Prometheus files and the alerts'
unit tests with ``promtool`` (Debian's prometheus); and every metric the dashboard and
the alerts query must be one eddy exports.
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

from eddy.streams.observe import metrics
from eddy.streams.settings import env_var, setting_names

REPO = Path(__file__).resolve().parents[2]
PROMTOOL = shutil.which("promtool")


def compose() -> dict[str, Any]:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def eddy_services() -> dict[str, dict[str, Any]]:
    return {name: s for name, s in compose()["services"].items() if s.get("image") == "eddy:local"}


def long_running(services: dict[str, Any]) -> dict[str, Any]:
    """The services that stay up (all but one-shot jobs such as topic creation)."""
    return {name: s for name, s in services.items() if s.get("restart") != "no"}


def promtool(*args: str | Path) -> str:
    done = subprocess.run([PROMTOOL, *args], cwd=REPO, capture_output=True, text=True)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "SUCCESS" in output
    return output


needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="no promtool: install Debian's `prometheus`"
)


def exported_metric_names() -> set[str]:
    """Every sample name eddy's processes can expose (counters with _total, etc.)."""
    registry = CollectorRegistry()
    for kind in (
        metrics.EngineMetrics,
        metrics.ConsumerMetrics,
        metrics.ControlMetrics,
        metrics.ModelEventMetrics,
    ):
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
    assert services["kafka"]["image"].startswith("apache/kafka:4.")


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
    targets = {
        t for job in config["scrape_configs"] for s in job["static_configs"] for t in s["targets"]
    }
    assert targets == {f"{name}:{port}" for name, port in ports.items()}


def test_compose_publishes_ports_on_localhost_only() -> None:
    published = []
    for name, service in compose()["services"].items():
        for port in service.get("ports", []):
            assert isinstance(port, str) and port.startswith("127.0.0.1:"), f"{name}: {port}"
            published.append(name)
    assert {"kafka", "worker", "prometheus", "grafana"} <= set(published)


def test_every_long_running_service_has_a_healthcheck() -> None:
    services = compose()["services"]
    assert services["topics"]["restart"] == "no"  # a one-shot job: it exits
    running = long_running(services)
    assert {"kafka", "worker", "retrainer", "exporter", "prometheus", "grafana"} <= set(running)
    for name, service in running.items():
        assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    endpoints = {"prometheus": "/-/healthy", "grafana": "/api/health"}
    endpoints.update(dict.fromkeys(long_running(eddy_services()), "/healthz"))
    for name, path in endpoints.items():
        assert path in " ".join(services[name]["healthcheck"]["test"]), name


def test_eddy_services_share_a_required_signing_key_and_can_be_scraped() -> None:
    services = eddy_services()
    assert {"topics", "worker", "retrainer", "exporter"} <= set(services)
    for name, service in services.items():
        key = service["environment"]["EDDY_SIGNING_KEY"]
        assert re.fullmatch(r"\$\{EDDY_SIGNING_KEY:\?[^}]+\}", key), f"{name}: {key}"
        if "EDDY_METRICS_PORT" in service["environment"]:
            # Bound inside the container; the host publishes on 127.0.0.1 only.
            assert service["environment"]["EDDY_METRICS_HOST"] == "0.0.0.0", name


def test_grafana_admin_password_comes_from_the_environment() -> None:
    env = compose()["services"]["grafana"]["environment"]
    password = env["GF_SECURITY_ADMIN_PASSWORD"]
    assert re.fullmatch(r"\$\{GRAFANA_ADMIN_PASSWORD:\?[^}]+\}", password), password
    if env.get("GF_AUTH_ANONYMOUS_ENABLED") == "true":
        assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"


def test_kafka_prometheus_and_eddy_keep_their_data_in_named_volumes() -> None:
    spec = compose()
    services = spec["services"]
    wanted = {
        "kafka": f"kafka-data:{services['kafka']['environment']['KAFKA_LOG_DIRS']}",
        "prometheus": "prometheus-data:/prometheus",
        "worker": "eddy-data:/data",
    }
    for name, volume in wanted.items():
        assert volume in services[name]["volumes"], name
    assert {"kafka-data", "prometheus-data", "eddy-data"} <= set(spec["volumes"])


def test_the_image_installs_every_package_and_runs_as_a_user() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    for folder in ("eddy", "models", "streams", "consumers", "schemas"):
        assert f"COPY {folder} {folder}" in dockerfile, folder
    users = re.findall(r"^USER\s+(\S+)", dockerfile, re.MULTILINE)
    assert users, "the image runs as root"
    assert users[-1].split(":")[0] not in ("root", "0"), users[-1]


@needs_promtool
def test_promtool_accepts_the_config_and_the_rules() -> None:
    promtool("check", "config", "deploy/prometheus/prometheus.yml")
    promtool("check", "rules", "deploy/prometheus/alerts.yml")


@needs_promtool
def test_the_alerts_pass_their_promtool_unit_tests() -> None:
    """EddyNotLearning fires with no learned series at all, not while learning, etc."""
    promtool("test", "rules", "deploy/prometheus/alerts_test.yml")
    tests = yaml.safe_load((REPO / "deploy/prometheus/alerts_test.yml").read_text())
    tested = {case["alertname"] for group in tests["tests"] for case in group["alert_rule_test"]}
    assert "EddyNotLearning" in tested


@needs_promtool
def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    dashboard = json.loads((REPO / "deploy/grafana/dashboards/eddy.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    exprs += [a["expr"] for a in dashboard["annotations"]["list"] if "expr" in a]
    rules = [
        {"record": f"dashboard:query_{i}", "expr": expr.replace("$stream", ".*")}
        for i, expr in enumerate(exprs)
    ]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    promtool("check", "rules", path)


def test_grafana_is_provisioned_with_a_datasource_and_the_dashboard() -> None:
    grafana = REPO / "deploy/grafana"
    sources = yaml.safe_load((grafana / "provisioning/datasources/prometheus.yml").read_text())
    uid = sources["datasources"][0]["uid"]
    assert sources["datasources"][0]["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((grafana / "provisioning/dashboards/eddy.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    dashboard = json.loads((grafana / "dashboards/eddy.json").read_text())
    assert len(dashboard["panels"]) >= 20
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == uid
        assert panel["targets"], panel["title"]


def test_every_metric_the_dashboard_and_alerts_query_is_exported() -> None:
    exported = exported_metric_names()
    for path in (
        "deploy/grafana/dashboards/eddy.json",
        "deploy/prometheus/alerts.yml",
        "deploy/prometheus/alerts_test.yml",  # its series are eddy's, not made-up ones
    ):
        queried = queried_metrics((REPO / path).read_text())
        assert queried, path
        missing = queried - exported
        assert not missing, f"{path} queries metrics eddy does not export: {sorted(missing)}"


def test_the_dashboard_shows_serving_the_champion_and_drift() -> None:
    text = (REPO / "deploy/grafana/dashboards/eddy.json").read_text()
    assert {
        "eddy_predictions_total",
        "eddy_examples_learned_total",
        "eddy_prediction_staleness_seconds_bucket",
        "eddy_prequential_metric",
        "eddy_champion_metric",
        "eddy_feature_drift_signals_total",
        "eddy_feature_drift_p_value",
    } <= queried_metrics(text)
    annotations = json.loads(text)["annotations"]["list"]
    assert {"eddy_drift_signals_total", "eddy_feature_drift_signals_total"} <= queried_metrics(
        json.dumps(annotations)
    )


def test_queries_name_only_agents_that_exist() -> None:
    """The worker's consumer group agent is "worker" (no more "join" or "learner")."""
    for path in ("deploy/grafana/dashboards/eddy.json", "deploy/prometheus/alerts.yml"):
        agents = set(re.findall(r'agent=\\?"([^"\\]+)', (REPO / path).read_text()))
        assert agents == {"worker"}, path


def test_the_check_would_catch_a_misspelt_metric() -> None:
    """The check above is not vacuous."""
    assert "eddy_examples_learnt_total" not in exported_metric_names()
    assert "eddy_examples_learned_total" in exported_metric_names()
