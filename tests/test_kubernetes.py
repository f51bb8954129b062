"""deploy/kubernetes/: every manifest valid against Kubernetes' own schemas (kubernetes-validate,
strict: an unknown field fails), and consistent with the image and the service it deploys."""

from __future__ import annotations

import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from loadtests.servers import REPO

MANIFESTS = REPO / "deploy" / "kubernetes"
FILES = sorted(MANIFESTS.rglob("*.yaml"))
DEPLOYMENTS = [MANIFESTS / "deployment.yaml", MANIFESTS / "gpu" / "deployment.yaml"]
# Kinds from CRDs, which kubernetes-validate has no schema for: checked by the tests below instead.
CUSTOM_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}


def load(path: Path) -> list[dict]:
    return [document for document in yaml.safe_load_all(path.read_text()) if document]


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(MANIFESTS)) for p in FILES])
def test_manifest_validates_strictly(path):
    for resource in load(path):
        if (resource["apiVersion"], resource["kind"]) in CUSTOM_KINDS:
            continue
        kubernetes_validate.validate(resource, kubernetes_validate.latest_version(), strict=True)


def test_strict_validation_refuses_an_unknown_field():
    """The check above can fail: a misspelt field is an error, not ignored."""
    (deployment,) = load(DEPLOYMENTS[0])
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["periodSecond"] = 5
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, kubernetes_validate.latest_version(), strict=True)


def grace_s(container: dict) -> int:
    return int(next(e["value"] for e in container["env"] if e["name"] == "SERVICE_SHUTDOWN_GRACE_S"))


@pytest.mark.parametrize("path", DEPLOYMENTS, ids=["cpu", "gpu"])
def test_deployment_probes_drains_and_runs_locked_down(path):
    (deployment,) = load(path)
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["startupProbe"]["httpGet"]["path"] == "/readyz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    # SIGTERM comes after preStop; the drain must end before the kubelet's SIGKILL.
    assert pod["terminationGracePeriodSeconds"] > container["lifecycle"]["preStop"]["sleep"]["seconds"] + grace_s(container)
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    user = re.search(r"useradd .*--uid (\d+)", (REPO / "Dockerfile").read_text()).group(1)
    assert pod["securityContext"]["runAsNonRoot"] and str(pod["securityContext"]["runAsUser"]) == user
    assert container["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                            "capabilities": {"drop": ["ALL"]}}
    # The one writable place is /tmp, where the image puts BentoML's home.
    assert [m["mountPath"] for m in container["volumeMounts"]] == ["/tmp"]
    assert "ENV" in (REPO / "Dockerfile").read_text() and "BENTOML_HOME=/tmp/bentoml" in (REPO / "Dockerfile").read_text()
    assert container["resources"]["requests"] and container["resources"]["limits"]
    assert container["ports"][0]["containerPort"] == 3000


def test_the_gpu_variant_asks_for_a_gpu_and_refuses_to_serve_without_one():
    (deployment,) = load(DEPLOYMENTS[1])
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"].endswith(":gpu")
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert {"name": "REQUIRE_GPU", "value": "1"} in container["env"]


def test_service_monitor_and_service_select_the_deployments_pods():
    (deployment,) = load(DEPLOYMENTS[0])
    (service,) = load(MANIFESTS / "service.yaml")
    (monitor,) = load(MANIFESTS / "servicemonitor.yaml")
    (budget,) = load(MANIFESTS / "pdb.yaml")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert budget["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in [p["name"] for p in service["spec"]["ports"]] and endpoint["path"] == "/metrics"


def test_autoscaler_scales_the_deployment_on_the_metric_the_adapter_serves():
    (hpa,) = load(MANIFESTS / "hpa.yaml")
    (adapter,) = load(MANIFESTS / "prometheus-adapter-rules.yaml")
    (metric,) = hpa["spec"]["metrics"]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "convnet-serving"}
    assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] == "imgcls_requests_in_flight"
    (rule,) = yaml.safe_load(adapter["data"]["config.yaml"])["rules"]
    assert rule["name"]["as"] == metric["pods"]["metric"]["name"]
    assert rule["seriesQuery"].startswith("imgcls_requests_in_flight{")
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}
