"""The child objects of a ModelDeployment, as plain dicts ready for server-side apply. Pure.

For a ModelDeployment `<md>` placed on pools P1..Pn:

- one Deployment `<md>-<pool>` of Triton replicas per pool (node selector and tolerations from
  the GPUPool),
- a Service `<md>` over all of them (http 8000, grpc 8001, metrics 8002),
- a PodDisruptionBudget `<md>` (one replica at a time may be evicted),
- a NetworkPolicy `<md>` admitting the same namespace, `spec.access` and the monitoring
  namespaces' scrapers (metrics port only),
- a ServiceMonitor `<md>` when the cluster has the Prometheus Operator's CRDs.

Output is deterministic (same input, same dicts, same list order): re-applying an unchanged
ModelDeployment is a server-side-apply no-op and never restarts pods.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dedicap.api.models import API_VERSION, GPUPoolSpec, ModelDeployment
from dedicap.decide.cluster import LABEL_CAPACITY, LABEL_MD, LABEL_POOL, LABEL_RESERVATION
from dedicap.decide.placement import BURST, RESERVED, RESERVED_CLASS, DeploymentPlan, Placement

__all__ = ["LABEL_MD", "LABEL_POOL"]
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "dedicap"
ANNOTATION_MODEL = "dedicap.dev/model"
ANNOTATION_MODEL_VERSION = "dedicap.dev/model-version"
# the metrics profile of a streaming LLM's pods (what they publish; the local data plane picks
# its streaming model by it)
ANNOTATION_METRICS_PROFILE = "dedicap.dev/metrics-profile"

HTTP_PORT, GRPC_PORT, METRICS_PORT = 8000, 8001, 8002
MODEL_MOUNT = "/models"
# Triton runs as this unprivileged user (the NGC image's `triton-server` user).
TRITON_UID = 1000
# A removed replica keeps serving this long after it left the endpoints (its preStop pause):
# longer than endpoint propagation to proxies and clients (about a second), shorter than
# anything that matters for cost.
DRAIN_SECONDS = 5


@dataclass(frozen=True)
class RenderOptions:
    """Cluster-level settings of the operator that shape the children."""

    # Namespaces whose pods (Prometheus) may scrape the metrics port.
    monitoring_namespaces: tuple[str, ...] = ("monitoring",)
    # Whether the monitoring.coreos.com CRDs exist (the controller looks).
    service_monitor: bool = False
    # Capacity management: replicas run at the reserved / burst priority classes.
    priority_classes: bool = False
    scrape_interval: str = "15s"
    probe_period_seconds: int = 10


@dataclass(frozen=True)
class ChildKey:
    """Identity of a child object: what the controller compares to find stale children."""

    api_version: str
    kind: str
    namespace: str
    name: str

    @staticmethod
    def of(obj: Mapping[str, Any]) -> ChildKey:
        meta = obj["metadata"]
        return ChildKey(obj["apiVersion"], obj["kind"], meta.get("namespace", ""), meta["name"])


def deployment_name(md_name: str, pool: str, secondary_burst: bool = False) -> str:
    """`<md>-<pool>`; the burst replicas on the pool of the ModelDeployment's reservation, which
    run beside the reserved ones at a lower priority, are `<md>-<pool>-burst`."""
    return f"{md_name}-{pool}-burst" if secondary_burst else f"{md_name}-{pool}"


def capacity_labels(md: ModelDeployment, plan: DeploymentPlan) -> dict[str, str]:
    """Which capacity a replica runs on, read back to account reservation usage."""
    if plan.priority_class is None:
        return {}
    labels = {LABEL_CAPACITY: RESERVED if plan.priority_class == RESERVED_CLASS else BURST}
    if md.spec.reservation:
        labels[LABEL_RESERVATION] = md.spec.reservation
    return labels


def selector_labels(md_name: str) -> dict[str, str]:
    """Labels selecting every replica of the ModelDeployment, on every pool."""
    return {LABEL_MD: md_name}


def selector_string(md_name: str) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(selector_labels(md_name).items()))


def common_labels(md: ModelDeployment) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "triton",
        "app.kubernetes.io/instance": md.name,
        "app.kubernetes.io/component": "inference-server",
        LABEL_MANAGED_BY: MANAGER,
        LABEL_MD: md.name,
    }


def owner_reference(md: ModelDeployment) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "ModelDeployment",
        "name": md.name,
        "uid": md.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _metadata(md: ModelDeployment, name: str, labels: Mapping[str, str]) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": md.namespace,
        "labels": dict(labels),
        "ownerReferences": [owner_reference(md)],
    }


def model_repository(md: ModelDeployment) -> tuple[str, list[dict[str, Any]],
                                                   list[dict[str, Any]]]:
    """Triton's --model-repository, and the volumes and mounts it needs (`pvc://` repos)."""
    repo = md.spec.model.repository
    if not repo.startswith("pvc://"):
        return repo, [], []
    claim, _, sub_path = repo[len("pvc://"):].partition("/")
    volume = {"name": "model-repository",
              "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
    mount = {"name": "model-repository", "mountPath": MODEL_MOUNT, "readOnly": True}
    path = f"{MODEL_MOUNT}/{sub_path}".rstrip("/")
    return path, [volume], [mount]


def triton_args(md: ModelDeployment, repository: str) -> list[str]:
    model = md.spec.model.name
    return [
        f"--model-repository={repository}",
        "--model-control-mode=explicit",
        f"--load-model={model}",
        f"--http-port={HTTP_PORT}",
        f"--grpc-port={GRPC_PORT}",
        f"--metrics-port={METRICS_PORT}",
        "--allow-metrics=true",
        "--metrics-config=summary_latencies=true",
        # TensorRT-LLM's backend publishes no time to first token: Triton's histogram of the
        # time to a decoupled model's first response is it, for a streaming request
        *(["--metrics-config=histogram_latencies=true"]
          if md.spec.model.metrics_profile == "tensorrtllm" else []),
        # A replica whose model fails to load exits and is restarted, instead of serving
        # nothing while looking alive.
        "--exit-on-error=true",
        *md.spec.triton.args,
    ]


def _probe(path: str, period: int, failures: int, timeout: int = 3) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period,
        "timeoutSeconds": timeout,
        "failureThreshold": failures,
    }


def pod_template(md: ModelDeployment, plan: DeploymentPlan, pool: GPUPoolSpec,
                 options: RenderOptions) -> dict[str, Any]:
    spec = md.spec
    model = spec.model.name
    repository, volumes, mounts = model_repository(md)
    labels = {**common_labels(md), LABEL_POOL: plan.pool, **capacity_labels(md, plan)}
    annotations = {ANNOTATION_MODEL: model}
    if spec.model.version is not None:
        annotations[ANNOTATION_MODEL_VERSION] = spec.model.version
    if spec.llm:
        annotations[ANNOTATION_METRICS_PROFILE] = spec.model.metrics_profile
    gpus = str(spec.resources.gpus_per_replica)
    ready_path = f"/v2/models/{model}/ready"
    period = options.probe_period_seconds
    container: dict[str, Any] = {
        "name": "triton",
        "image": spec.triton.image,
        "imagePullPolicy": spec.triton.image_pull_policy,
        "command": ["tritonserver"],
        "args": triton_args(md, repository),
        "ports": [
            {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"},
            {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
        ],
        "resources": {
            "requests": {"nvidia.com/gpu": gpus, "cpu": spec.resources.cpu,
                         "memory": spec.resources.memory},
            # Extended resources need limit == request; memory is limited so a leak kills one
            # replica rather than the node; CPU is not, to avoid throttling latency.
            "limits": {"nvidia.com/gpu": gpus, "memory": spec.resources.memory},
        },
        # The startup probe gates the others until the model is loaded, however long that takes.
        "startupProbe": _probe(ready_path, period,
                               max(1, math.ceil(spec.triton.startup_timeout_seconds / period))),
        "readinessProbe": _probe(ready_path, 5, 3),
        "livenessProbe": _probe("/v2/health/live", 15, 4, timeout=5),
        # A replica being removed leaves the Service's endpoints while its kubelet stops it, in
        # parallel: without a pause, the requests that clients and proxies still send it in
        # the second or two before they notice fail. Triton then finishes the requests in
        # flight on SIGTERM; the grace period covers both.
        "lifecycle": {"preStop": {"sleep": {"seconds": DRAIN_SECONDS}}},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": "tmp", "mountPath": "/tmp"},
            # The Python backend exchanges tensors through shared memory.
            {"name": "dshm", "mountPath": "/dev/shm"},
            *mounts,
        ],
    }
    if spec.triton.env:
        container["env"] = [{"name": e.name, "value": e.value} for e in spec.triton.env]
    if spec.triton.env_from_secret:
        container["envFrom"] = [{"secretRef": {"name": spec.triton.env_from_secret}}]
    spread = spec.placement.spread
    pod_spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        # the drain, then Triton's wait for the requests in flight (its --exit-timeout-secs, 30)
        "terminationGracePeriodSeconds": 60,
        "nodeSelector": dict(sorted(pool.node_selector.items())),
        "tolerations": [t.k8s() for t in pool.tolerations],
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": TRITON_UID,
            "runAsGroup": TRITON_UID,
            "fsGroup": TRITON_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "topologySpreadConstraints": [
            {
                "maxSkew": spread.max_skew,
                "topologyKey": key,
                "whenUnsatisfiable": spread.when_unsatisfiable,
                "labelSelector": {"matchLabels": selector_labels(md.name)},
                # Spread each rollout's ReplicaSet on its own, or old pods skew the new ones.
                "matchLabelKeys": ["pod-template-hash"],
            }
            for key in ("kubernetes.io/hostname", "topology.kubernetes.io/zone")
        ],
        "containers": [container],
        "volumes": [
            {"name": "tmp", "emptyDir": {}},
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}},
            *volumes,
        ],
    }
    if plan.priority_class:
        pod_spec["priorityClassName"] = plan.priority_class
    return {"metadata": {"labels": labels, "annotations": annotations}, "spec": pod_spec}


def render_deployment(md: ModelDeployment, plan: DeploymentPlan, pool: GPUPoolSpec,
                      options: RenderOptions) -> dict[str, Any]:
    labels = {**common_labels(md), LABEL_POOL: plan.pool}
    selector = {**selector_labels(md.name), LABEL_POOL: plan.pool}
    if plan.secondary:
        # Beside `<md>-<pool>` on the same pool: its selector must not take the other's pods.
        selector[LABEL_CAPACITY] = BURST
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(md, deployment_name(md.name, plan.pool, plan.secondary), labels),
        "spec": {
            "replicas": plan.replicas,
            "selector": {"matchLabels": selector},
            # GPUs are scarce: surge one replica at a time and never drop below the count.
            "strategy": {"type": "RollingUpdate",
                         "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "revisionHistoryLimit": 3,
            "progressDeadlineSeconds": md.spec.triton.startup_timeout_seconds + 300,
            "template": pod_template(md, plan, pool, options),
        },
    }


def render_service(md: ModelDeployment) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(md, md.name, common_labels(md)),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(md.name),
            "ports": [
                {"name": "http", "port": HTTP_PORT, "targetPort": "http", "protocol": "TCP"},
                {"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc", "protocol": "TCP"},
                {"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics",
                 "protocol": "TCP"},
            ],
        },
    }


def render_pdb(md: ModelDeployment) -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(md, md.name, common_labels(md)),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": selector_labels(md.name)},
            # A replica that never got ready must not block a node drain.
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }


def _namespace_peer(namespace: str) -> dict[str, Any]:
    return {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}}


def render_network_policy(md: ModelDeployment, options: RenderOptions) -> dict[str, Any]:
    serving = [{"port": HTTP_PORT, "protocol": "TCP"}, {"port": GRPC_PORT, "protocol": "TCP"}]
    metrics = [{"port": METRICS_PORT, "protocol": "TCP"}]
    callers: list[dict[str, Any]] = [_namespace_peer(ns) for ns in md.spec.access.namespaces]
    if md.spec.access.namespace_selector is not None:
        callers.append({"namespaceSelector": {"matchLabels": dict(sorted(
            md.spec.access.namespace_selector.match_labels.items()))}})
    ingress: list[dict[str, Any]] = [
        # Every pod of the tenant's own namespace: serving and metrics.
        {"from": [{"podSelector": {}}], "ports": serving + metrics},
    ]
    if callers:
        ingress.append({"from": callers, "ports": serving})
    if options.monitoring_namespaces:
        ingress.append({"from": [_namespace_peer(ns) for ns in options.monitoring_namespaces],
                        "ports": metrics})
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(md, md.name, common_labels(md)),
        "spec": {
            "podSelector": {"matchLabels": selector_labels(md.name)},
            "policyTypes": ["Ingress"],
            "ingress": ingress,
        },
    }


def render_service_monitor(md: ModelDeployment, options: RenderOptions) -> dict[str, Any]:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": _metadata(md, md.name, common_labels(md)),
        "spec": {
            "selector": {"matchLabels": {LABEL_MD: md.name, LABEL_MANAGED_BY: MANAGER}},
            "namespaceSelector": {"matchNames": [md.namespace]},
            "endpoints": [{
                "port": "metrics",
                "path": "/metrics",
                "interval": options.scrape_interval,
                # The autoscaler's queries group by these labels.
                "relabelings": [
                    {"sourceLabels": ["__meta_kubernetes_pod_label_dedicap_dev_modeldeployment"],
                     "targetLabel": "modeldeployment"},
                    {"sourceLabels": ["__meta_kubernetes_pod_label_dedicap_dev_pool"],
                     "targetLabel": "pool"},
                ],
            }],
        },
    }


def render(md: ModelDeployment, placement: Placement, pools: Mapping[str, GPUPoolSpec],
           options: RenderOptions | None = None) -> list[dict[str, Any]]:
    """Every child the ModelDeployment should have, Deployments first (in placement order)."""
    if not md.name or not md.namespace or not md.uid:
        raise ValueError("render needs metadata.name, metadata.namespace and metadata.uid")
    options = options or RenderOptions()
    plans = placement.deployments(options.priority_classes)
    missing = [p.pool for p in plans if p.pool not in pools]
    if missing:
        raise ValueError(f"placement names pools without a spec: {missing}")
    children = [render_deployment(md, p, pools[p.pool], options) for p in plans]
    children += [render_service(md), render_pdb(md), render_network_policy(md, options)]
    if options.service_monitor:
        children.append(render_service_monitor(md, options))
    return children
