"""ops/kubernetes/: every manifest is valid against the Kubernetes API schemas (kubernetes-validate,
which ships them: checked here with the network cut off) in strict mode (an unknown field is an
error, as a typo would be silently dropped by a cluster), the KEDA ScaledObject against the JSON
schema vendored beside the manifests, and the pieces agree with each other and with the engine:
probe paths and port, the settings the ConfigMap sets, the consumer groups the autoscaler watches."""

from __future__ import annotations

import copy
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from processors.agents.app import app as commerce_app
from processors.settings import Settings

K8S = Path(__file__).resolve().parents[2] / "ops" / "kubernetes"
KUBERNETES_VERSION = "1.30"  # the oldest Kubernetes release the manifests are meant for
KEDA_SCHEMA = K8S / "schemas" / "keda-scaledobject-v1alpha1.json"


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """The validators must work offline (CI, air-gapped machines): any connection attempt fails."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("network access in an offline validation")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def documents(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def all_documents() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in documents(path.name):
            yield path.name, doc


def one(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for _, d in all_documents() if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def validate_kubernetes(doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def validate_keda(doc: dict[str, Any]) -> None:
    jsonschema.Draft202012Validator(json.loads(KEDA_SCHEMA.read_text())).validate(doc)
    behavior = doc["spec"].get("advanced", {}).get("horizontalPodAutoscalerConfig", {}).get("behavior")
    if behavior is not None:  # KEDA hands it to the HPA it creates: the Kubernetes schema judges it
        validate_kubernetes(
            {
                "apiVersion": "autoscaling/v2",
                "kind": "HorizontalPodAutoscaler",
                "metadata": {"name": "check"},
                "spec": {
                    "scaleTargetRef": {"kind": "StatefulSet", "name": "x"},
                    "maxReplicas": 2,
                    "behavior": behavior,
                },
            }
        )


def test_every_manifest_is_valid_against_its_schema() -> None:
    kinds = []
    for _name, doc in all_documents():
        kinds.append(doc["kind"])
        if doc["apiVersion"].startswith("keda.sh/"):
            validate_keda(doc)
        else:
            validate_kubernetes(doc)
    assert sorted(kinds) == sorted(
        ["ConfigMap", "Secret", "Service", "Service", "StatefulSet", "PodDisruptionBudget", "ScaledObject"]
    )


def test_the_validators_refuse_a_typo() -> None:
    """Not a vacuous pass: a misspelt field and a trigger without its consumer group fail."""
    statefulset = copy.deepcopy(one("StatefulSet"))
    statefulset["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_kubernetes(statefulset)
    scaled = copy.deepcopy(one("ScaledObject"))
    del scaled["spec"]["triggers"][0]["metadata"]["consumerGroup"]
    with pytest.raises(jsonschema.ValidationError):
        validate_keda(scaled)
    scaled = copy.deepcopy(one("ScaledObject"))
    scaled["spec"]["maxReplicas"] = 3  # the HPA's name for it, not KEDA's
    with pytest.raises(jsonschema.ValidationError):
        validate_keda(scaled)


def test_the_pieces_agree_with_each_other_and_the_engine() -> None:
    config = one("ConfigMap")["data"]
    settings = Settings.load(env=config)  # every key a real setting, every value well-formed
    fields = {f"CHOREO_{name.upper()}" for name in Settings.__dataclass_fields__}
    assert set(config) <= fields, f"unknown settings: {sorted(set(config) - fields)}"
    assert settings.processes >= 1 and settings.metrics_port is not None

    sts = one("StatefulSet")
    pod = sts["spec"]["template"]
    container = pod["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["metrics"] == settings.metrics_port
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["command"][:2] == ["choreo", "worker"]
    env = {e["name"]: e for e in container["env"]}
    assert env["CHOREO_WORKER_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    claims = [t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]]
    assert mounts[claims[0]] == str(settings.state_dir)
    sources = {next(iter(s)): s[next(iter(s))] for s in container["envFrom"]}
    assert sources["configMapRef"]["name"] == one("ConfigMap")["metadata"]["name"]
    secret = one("Secret")
    assert sources["secretRef"] == {"name": secret["metadata"]["name"], "optional": True}
    assert all(k.startswith("CHOREO_KAFKA_") for k in secret["stringData"])

    labels = pod["metadata"]["labels"]
    assert sts["spec"]["selector"]["matchLabels"].items() <= labels.items()
    headless = one("Service", sts["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    metrics = one("Service", "choreo-worker-metrics")
    for service in (headless, metrics):
        assert service["spec"]["selector"].items() <= labels.items()
        assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    assert one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= labels.items()

    scaled = one("ScaledObject")["spec"]
    assert scaled["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": sts["metadata"]["name"]}
    groups = {t["metadata"]["consumerGroup"] for t in scaled["triggers"] if t["type"] == "kafka"}
    assert groups == {commerce_app.group_id(agent) for agent in commerce_app.agents}
    partitions = min(commerce_app.registry.get(et).partitions for et in commerce_app.registry.event_types())
    assert scaled["maxReplicaCount"] <= partitions  # a worker beyond the partitions would idle
    assert all(t["metadata"]["bootstrapServers"] == settings.bootstrap_servers for t in scaled["triggers"])


def test_kustomization_lists_every_manifest_but_the_secret_example() -> None:
    kustomization = documents("kustomization.yaml")[0]
    expected = sorted(p.name for p in K8S.glob("*.yaml") if p.name not in ("kustomization.yaml", "secret.example.yaml"))
    assert sorted(kustomization["resources"]) == expected
