"""The kustomize overlays in k8s/ (issue #7): rendered by kustomize, every object valid against the
Kubernetes schemas (kubernetes-validate), and the properties a partition-scaled worker relies on:
probes, non-root with a read-only root, state on a volume claim, stable pod DNS as the address
peers use, settings as a ConfigMap of real `LEDGERFLOW_*` names, credentials from Secrets, a PDB,
an HPA never above the partition count, a grace period longer than Faust's shutdown."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from faust.web.drivers.aiohttp import Web as AiohttpWeb
from mode import Service
from pydantic import SecretStr

from streams.cli.local_kafka import cache_root
from streams.settings import Settings
from tests.support import REPO

K8S = REPO / "k8s"
OVERLAYS = ("dev", "prod")
OLDEST_KUBERNETES = "1.29"
"""The oldest Kubernetes the manifests are checked against (besides the newest schemas shipped)."""
WORKER_LABELS = {"app.kubernetes.io/name": "ledgerflow", "app.kubernetes.io/component": "worker"}


def setting_names() -> dict[str, str]:
    """`LEDGERFLOW_*` variable → settings field."""
    return {f"LEDGERFLOW_{name.upper()}": name for name in Settings.model_fields}


def secret_settings() -> set[str]:
    """The variables of the settings that hold credentials (SecretStr fields)."""
    out = set()
    for name, field in Settings.model_fields.items():
        if SecretStr in (field.annotation, *getattr(field.annotation, "__args__", ())):
            out.add(f"LEDGERFLOW_{name.upper()}")
    return out


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", path.parent.name))


def find_kustomize() -> str | None:
    """LEDGERFLOW_KUSTOMIZE, else the newest `make kustomize` put in the cache, else PATH's."""
    if named := os.environ.get("LEDGERFLOW_KUSTOMIZE"):
        return named
    cached = sorted(cache_root().glob("kustomize-v*/kustomize"), key=_version_key)
    if cached:
        return str(cached[-1])
    return shutil.which("kustomize")


KUSTOMIZE = find_kustomize()
pytestmark = pytest.mark.skipif(
    KUSTOMIZE is None,
    reason="kustomize not found: `make kustomize` installs it from the Go module proxy into "
    "~/.cache/ledgerflow (or set LEDGERFLOW_KUSTOMIZE)",
)


@cache
def render(path: str) -> tuple[dict[str, Any], ...]:
    assert KUSTOMIZE is not None
    done = subprocess.run(
        [KUSTOMIZE, "build", str(K8S / path)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    return tuple(obj for obj in yaml.safe_load_all(done.stdout) if obj)


@dataclass(frozen=True)
class Rendered:
    """One overlay's objects, and the parts the tests look at."""

    overlay: str
    objects: tuple[dict[str, Any], ...]

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> dict[str, Any]:
        found = [o for o in self.all(kind) if name is None or o["metadata"]["name"] == name]
        assert len(found) == 1, f"{self.overlay}: {len(found)} {kind} named {name}"
        return found[0]

    @property
    def statefulset(self) -> dict[str, Any]:
        return self.one("StatefulSet", "ledgerflow")

    @property
    def pod(self) -> dict[str, Any]:
        spec: dict[str, Any] = self.statefulset["spec"]["template"]["spec"]
        return spec

    @property
    def worker(self) -> dict[str, Any]:
        [container] = [c for c in self.pod["containers"] if c["name"] == "worker"]
        return container

    @property
    def env(self) -> dict[str, dict[str, Any]]:
        return {e["name"]: e for e in self.worker.get("env", ())}

    @property
    def configmap(self) -> dict[str, Any]:
        [ref] = [e["configMapRef"]["name"] for e in self.worker["envFrom"] if "configMapRef" in e]
        return self.one("ConfigMap", ref)

    @property
    def config(self) -> dict[str, str]:
        data: dict[str, str] = self.configmap["data"]
        return data

    @property
    def pod_labels(self) -> dict[str, str]:
        labels: dict[str, str] = self.statefulset["spec"]["template"]["metadata"]["labels"]
        return labels


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> Rendered:
    return Rendered(request.param, render(f"overlays/{request.param}"))


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


CPU = re.compile(r"^(\d+(?:\.\d+)?)(m?)$")
MEMORY_UNITS = {"": 1, "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40, "k": 10**3, "M": 10**6}


def cpu(quantity: str | int) -> float:
    found = CPU.match(str(quantity))
    assert found, quantity
    return float(found.group(1)) / (1000 if found.group(2) else 1)


def memory(quantity: str | int) -> int:
    found = re.match(r"^(\d+)([A-Za-z]*)$", str(quantity))
    assert found and found.group(2) in MEMORY_UNITS, quantity
    return int(found.group(1)) * MEMORY_UNITS[found.group(2)]


# --- the Kubernetes schemas ------------------------------------------------------------------


@pytest.mark.parametrize("version", [OLDEST_KUBERNETES, kubernetes_validate.latest_version()])
@pytest.mark.parametrize("path", ["base", *(f"overlays/{o}" for o in OVERLAYS)])
def test_every_rendered_object_validates_against_the_kubernetes_schemas(path: str, version: str) -> None:
    objects = render(path)
    assert objects
    for obj in objects:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = "/".join(str(p) for p in exc.path)
            pytest.fail(f"{path}: {obj['kind']}/{obj['metadata']['name']} at {where}: {exc.message}")


def test_the_overlays_hold_the_whole_deployment(rendered: Rendered) -> None:
    kinds = {o["kind"] for o in rendered.objects}
    assert {
        "Namespace",
        "ServiceAccount",
        "ConfigMap",
        "Service",
        "StatefulSet",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "NetworkPolicy",
    } <= kinds
    namespace = rendered.one("Namespace")["metadata"]
    assert namespace["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    namespaced = [o for o in rendered.objects if o["kind"] != "Namespace"]
    assert {o["metadata"].get("namespace") for o in namespaced} == {namespace["name"]}


# --- the worker pods -------------------------------------------------------------------------


def test_readiness_on_ready_and_liveness_on_health(rendered: Rendered) -> None:
    worker = rendered.worker
    [web] = [p for p in worker["ports"] if p["name"] == "web"]
    assert web["containerPort"] == int(rendered.config["LEDGERFLOW_WEB_PORT"])
    for probe, path in (
        ("readinessProbe", "/ready"),
        ("livenessProbe", "/health"),
        ("startupProbe", "/health"),
    ):
        assert worker[probe]["httpGet"] == {"path": path, "port": "web"}, probe
    # A liveness probe must not restart a worker that is merely recovering its tables: the
    # startup probe gives it minutes, the liveness probe a minute of silence.
    live = worker["livenessProbe"]
    assert live["periodSeconds"] * live["failureThreshold"] >= 60


def test_pods_run_as_non_root_on_a_read_only_root(rendered: Rendered) -> None:
    workloads = rendered.all("StatefulSet") + rendered.all("Deployment")
    for workload in workloads:
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] > 0
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        assert pod["automountServiceAccountToken"] is False
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, container["name"]
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"]["drop"] == ["ALL"]
            # Writable only where a volume is mounted: /tmp at least.
            mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
            assert "/tmp" in mounts and not mounts["/tmp"].get("readOnly")


def test_state_lives_on_a_volume_claim_and_tmp_on_an_empty_dir(rendered: Rendered) -> None:
    sts = rendered.statefulset
    [claim] = sts["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    mounts = {m["name"]: m["mountPath"] for m in rendered.worker["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == rendered.config["LEDGERFLOW_DATA_DIR"]
    volumes = {v["name"]: v for v in rendered.pod["volumes"]}
    assert "emptyDir" in volumes[next(n for n, p in mounts.items() if p == "/tmp")]
    assert claim["metadata"]["name"] not in volumes  # the claim, not a pod-local volume
    assert rendered.pod["securityContext"]["fsGroup"] == rendered.pod["securityContext"]["runAsGroup"]


def test_peers_reach_each_worker_by_its_stable_pod_name(rendered: Rendered) -> None:
    sts = rendered.statefulset
    headless = rendered.one("Service", sts["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    # A rebalancing worker is briefly unready; table_route must still reach it.
    assert headless["spec"]["publishNotReadyAddresses"] is True
    assert selects(headless["spec"]["selector"], rendered.pod_labels)
    env_names = [e["name"] for e in rendered.worker["env"]]
    env = rendered.env
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    host = env["LEDGERFLOW_WEB_HOST"]["value"]
    assert host == f"$(POD_NAME).{headless['metadata']['name']}.$(POD_NAMESPACE).svc"
    # Kubernetes expands $(VAR) only from variables defined earlier in the list.
    assert env_names.index("POD_NAME") < env_names.index("LEDGERFLOW_WEB_HOST")
    assert env_names.index("POD_NAMESPACE") < env_names.index("LEDGERFLOW_WEB_HOST")
    assert rendered.config["LEDGERFLOW_WEB_BIND"] == "0.0.0.0"
    assert "LEDGERFLOW_WEB_HOST" not in rendered.config


def test_a_service_serves_the_views_and_metrics(rendered: Rendered) -> None:
    views = rendered.one("Service", "ledgerflow")
    assert views["spec"].get("clusterIP") != "None"
    assert selects(views["spec"]["selector"], rendered.pod_labels)
    assert [p["targetPort"] for p in views["spec"]["ports"]] == ["web"]
    annotations = rendered.statefulset["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == rendered.config["LEDGERFLOW_WEB_PORT"]
    assert annotations["prometheus.io/path"] == "/metrics"


def test_grace_period_outlasts_fausts_shutdown(rendered: Rendered) -> None:
    faust_shutdown = max(Service.shutdown_timeout, AiohttpWeb.handler_shutdown_timeout)
    assert rendered.pod["terminationGracePeriodSeconds"] > faust_shutdown


def test_every_container_has_requests_and_limits(rendered: Rendered) -> None:
    for workload in rendered.all("StatefulSet") + rendered.all("Deployment"):
        for container in workload["spec"]["template"]["spec"]["containers"]:
            resources = container["resources"]
            assert cpu(resources["requests"]["cpu"]) <= cpu(resources["limits"]["cpu"])
            assert memory(resources["requests"]["memory"]) <= memory(resources["limits"]["memory"])


# --- settings and credentials ----------------------------------------------------------------


def test_configmap_keys_are_settings_fields(rendered: Rendered) -> None:
    names = setting_names()
    assert set(rendered.config) <= set(names), set(rendered.config) - set(names)
    explicit = {name for name in rendered.env if name.startswith("LEDGERFLOW_")}
    assert explicit <= set(names), explicit - set(names)
    assert "LEDGERFLOW_KAFKA_BOOTSTRAP" in rendered.config


def test_configmap_values_are_valid_settings(rendered: Rendered, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("LEDGERFLOW_")]:
        monkeypatch.delenv(name)
    for name, value in rendered.config.items():
        monkeypatch.setenv(name, value)
    s = Settings()
    assert s.partitions == int(rendered.config["LEDGERFLOW_PARTITIONS"])
    assert s.web_bind == "0.0.0.0"
    assert str(s.data_dir) == rendered.config["LEDGERFLOW_DATA_DIR"]


def test_credentials_come_from_secrets(rendered: Rendered) -> None:
    secrets = secret_settings()
    assert {
        "LEDGERFLOW_ERP_TOKEN",
        "LEDGERFLOW_STRIPE_WEBHOOK_SECRET",
        "LEDGERFLOW_RELAY_SECRET",
        "LEDGERFLOW_API_TOKEN",
        "LEDGERFLOW_KAFKA_SASL_PASSWORD",
        "LEDGERFLOW_CRM_TOKEN",
    } <= secrets
    assert not secrets & set(rendered.config), "a credential in the ConfigMap"
    for name in secrets:
        ref = rendered.env[name]["valueFrom"]["secretKeyRef"]
        assert ref["name"] and ref["key"], name
    assert "secretKeyRef" in rendered.env["LEDGERFLOW_KAFKA_SASL_USERNAME"]["valueFrom"]
    assert not rendered.all("Secret"), "secrets are created in the cluster, never kept in the repository"


# --- disruption and scaling ------------------------------------------------------------------


def test_disruptions_take_one_worker_at_a_time(rendered: Rendered) -> None:
    pdb = rendered.one("PodDisruptionBudget")
    assert selects(pdb["spec"]["selector"]["matchLabels"], rendered.pod_labels)
    assert pdb["spec"]["maxUnavailable"] == 1


def test_autoscaling_never_exceeds_the_partitions(rendered: Rendered) -> None:
    hpa = rendered.one("HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("StatefulSet", rendered.statefulset["metadata"]["name"])
    partitions = int(rendered.config["LEDGERFLOW_PARTITIONS"])
    low, high = hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]
    assert 1 <= low <= rendered.statefulset["spec"]["replicas"] <= high <= partitions
    # Every change of the replica count is a rebalance: scale down slowly.
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 300


def test_network_policy_lets_peers_and_scrapers_in(rendered: Rendered) -> None:
    policy = rendered.one("NetworkPolicy", "ledgerflow")
    assert selects(policy["spec"]["podSelector"]["matchLabels"], rendered.pod_labels)
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    peers_in = [
        rule
        for rule in policy["spec"]["ingress"]
        if any(
            selects(src.get("podSelector", {}).get("matchLabels", {}), rendered.pod_labels)
            for src in rule["from"]
        )
    ]
    assert peers_in and all({"port": "web", "protocol": "TCP"} in rule["ports"] for rule in peers_in)
    web_port = int(rendered.config["LEDGERFLOW_WEB_PORT"])
    egress_ports = {(p["port"], p.get("endPort")) for rule in policy["spec"]["egress"] for p in rule["ports"]}
    assert {(53, None), (web_port, None), (443, None)} <= egress_ports
    assert any(low <= 9092 <= (high or low) for low, high in egress_ports)


def test_prod_runs_standbys_on_three_workers_and_24_partitions() -> None:
    prod = Rendered("prod", render("overlays/prod"))
    dev = Rendered("dev", render("overlays/dev"))
    assert prod.statefulset["spec"]["replicas"] == 3
    assert prod.config["LEDGERFLOW_STANDBY_REPLICAS"] == "1"
    assert prod.config["LEDGERFLOW_PARTITIONS"] == "24"
    assert prod.config["LEDGERFLOW_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert int(prod.config["LEDGERFLOW_REPLICATION_FACTOR"]) >= 3
    for name in ("LEDGERFLOW_KAFKA_SASL_USERNAME", "LEDGERFLOW_KAFKA_SASL_PASSWORD"):
        assert prod.env[name]["valueFrom"]["secretKeyRef"]["optional"] is False
    assert dev.config["LEDGERFLOW_STANDBY_REPLICAS"] == "0"
    big, small = prod.worker["resources"], dev.worker["resources"]
    for kind in ("requests", "limits"):
        assert cpu(big[kind]["cpu"]) > cpu(small[kind]["cpu"])
        assert memory(big[kind]["memory"]) > memory(small[kind]["memory"])
    storage = [
        r.statefulset["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]
        for r in (prod, dev)
    ]
    assert memory(storage[0]) > memory(storage[1])


def test_dev_posts_to_the_sandbox_erp_it_deploys() -> None:
    dev = Rendered("dev", render("overlays/dev"))
    sandbox = dev.one("Service", "ledgerflow-erp-sandbox")
    port = sandbox["spec"]["ports"][0]["port"]
    assert dev.config["LEDGERFLOW_ERP_BASE_URL"] == f"http://ledgerflow-erp-sandbox:{port}"
    deployment = dev.one("Deployment", "ledgerflow-erp-sandbox")
    assert selects(sandbox["spec"]["selector"], deployment["spec"]["template"]["metadata"]["labels"])
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == dev.worker["image"]
    # The workers may call it through their network policy.
    egress = dev.one("NetworkPolicy", "ledgerflow")["spec"]["egress"]
    assert any({"port": port, "protocol": "TCP"} in rule["ports"] for rule in egress)


def test_one_salesforce_subscriber_per_org_replaced_not_rolled(rendered: Rendered) -> None:
    subscriber = rendered.one("Deployment", "ledgerflow-salesforce-subscriber")
    spec = subscriber["spec"]
    assert spec["replicas"] in (0, 1) and spec["strategy"]["type"] == "Recreate"
    [container] = spec["template"]["spec"]["containers"]
    assert container["args"] == ["salesforce-subscribe"] and container["image"] == rendered.worker["image"]
    names = setting_names()
    assert {e["name"] for e in container["env"] if e["name"].startswith("LEDGERFLOW_")} <= set(names)
    assert all("secretKeyRef" in e["valueFrom"] for e in container["env"] if "SECRET" in e["name"])
    labels = spec["template"]["metadata"]["labels"]
    assert not selects(rendered.statefulset["spec"]["selector"]["matchLabels"], labels)  # not a worker
    policy = rendered.one("NetworkPolicy", "ledgerflow-salesforce-subscriber")
    assert selects(policy["spec"]["podSelector"]["matchLabels"], labels)
    egress_ports = {p["port"] for rule in policy["spec"]["egress"] for p in rule["ports"]}
    assert {53, 443, 7443, 9092} <= egress_ports and not policy["spec"].get("ingress")


def test_worker_runs_the_images_worker_command(rendered: Rendered) -> None:
    assert rendered.worker["args"][0] == "worker"
    assert ":" in rendered.worker["image"]  # an explicit tag, never an implicit :latest
    assert not rendered.worker["image"].endswith(":latest")
