"""docker-compose.yml cannot run here (no Docker engine), so its structure is checked instead:
the broker is Apache Kafka in KRaft mode, the worker is built from our Dockerfile and runs an
app that exists, and Prometheus and Grafana are provisioned from files that exist and agree."""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_kafka_service_is_a_single_node_kraft_apache_kafka_4():
    kafka = compose()["services"]["kafka"]
    assert re.fullmatch(r"apache/kafka:4\.\d+\.\d+", kafka["image"])
    env = kafka["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    for key in (
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR",
    ):
        assert env[key] == "1", key
    internal = re.search(r"INTERNAL://([\w.-]+):(\d+)", env["KAFKA_ADVERTISED_LISTENERS"])
    assert internal and internal.group(1) == "kafka"
    assert compose()["services"]["worker"]["environment"]["KAFKA_BOOTSTRAP_SERVERS"] == f"kafka:{internal.group(2)}"


def test_worker_is_built_from_the_repo_and_runs_an_importable_app():
    worker = compose()["services"]["worker"]
    dockerfile = ROOT / worker["build"]["context"] / worker["build"]["dockerfile"]
    assert dockerfile.is_file()
    for copied in re.findall(r"^COPY (\S+)", dockerfile.read_text(), flags=re.M):
        assert (ROOT / copied).exists(), f"Dockerfile copies {copied}, which is not in the repo"
    command = worker["command"]
    app_ref = command[command.index("--app") + 1]
    module, attr = app_ref.split(":")
    assert hasattr(importlib.import_module(module), attr)
    port = command[command.index("--metrics-port") + 1]
    assert worker["depends_on"]["kafka"]["condition"] == "service_healthy"

    prometheus = yaml.safe_load((ROOT / "ops/prometheus/prometheus.yml").read_text())
    targets = [t for job in prometheus["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
    assert f"worker:{port}" in targets


def test_prometheus_and_grafana_are_provisioned_from_ops():
    services = compose()["services"]
    mounts = {m.split(":")[0]: m.split(":")[1] for svc in ("prometheus", "grafana") for m in services[svc]["volumes"]}
    for host_path in mounts:
        assert (ROOT / host_path).exists(), host_path
    prometheus = yaml.safe_load((ROOT / "ops/prometheus/prometheus.yml").read_text())
    for rule_file in prometheus["rule_files"]:
        local = ROOT / "ops/prometheus" / Path(rule_file).name
        rules = yaml.safe_load(local.read_text())
        assert all(rule["expr"] for group in rules["groups"] for rule in group["rules"])
    datasource = yaml.safe_load((ROOT / "ops/grafana/provisioning/datasources/prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    dashboard = json.loads((ROOT / "ops/grafana/dashboards/choreo-streams.json").read_text())
    assert dashboard["panels"]


def test_alerts_and_dashboards_only_use_metrics_the_engine_exports():
    from prometheus_client.metrics import MetricWrapperBase

    from processors.runtime import metrics

    exported = {
        family.name
        for value in vars(metrics).values()
        if isinstance(value, MetricWrapperBase)
        for family in value.describe()
    }
    assert exported, "the engine exports no metrics"
    texts = (ROOT / "ops/prometheus/alerts.yml").read_text() + (
        ROOT / "ops/grafana/dashboards/choreo-streams.json"
    ).read_text()
    used = set(re.findall(r"\b(choreo_[a-z_]+?)(?:_bucket|_total)?\b", texts))
    unknown = {name for name in used if name not in exported and name.removesuffix("_total") not in exported}
    assert not unknown, f"alerts/dashboards use metrics the engine does not export: {sorted(unknown)}"
