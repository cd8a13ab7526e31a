"""Observe: read the cluster state the planners need and turn it into their plain inputs.

The parsing functions are pure (raw API dicts in, dataclasses out) so they are unit-tested
without a cluster; `ClusterObserver` does the reading, with a short cache so that a burst of
reconciles (a rollout touching many objects) does not list every pod of the cluster each time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from dedicap.api.models import GPUPool, GPUPoolStatus
from dedicap.controller.kube import Kube
from dedicap.decide.placement import NodeCapacity, PoolView
from dedicap.decide.render import LABEL_MD

GPU_RESOURCE = "nvidia.com/gpu"
ZONE_LABEL = "topology.kubernetes.io/zone"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NodeInfo:
    name: str
    labels: Mapping[str, str]
    capacity_gpus: int
    allocatable_gpus: int
    ready: bool
    unschedulable: bool

    @property
    def schedulable(self) -> bool:
        return self.ready and not self.unschedulable


@dataclass(frozen=True)
class PodInfo:
    """A non-terminated pod that is bound to a node and requests GPUs."""

    namespace: str
    name: str
    node: str
    gpus: int
    modeldeployment: str | None


@dataclass(frozen=True)
class ClusterState:
    pools: Mapping[str, GPUPool]
    invalid_pools: Mapping[str, str]
    nodes: tuple[NodeInfo, ...]
    pods: tuple[PodInfo, ...]
    observed_at: float = 0.0

    def pool_nodes(self, pool: GPUPool) -> list[NodeInfo]:
        return [n for n in self.nodes if selects(pool.spec.node_selector, n.labels)]


def _quantity_int(value: Any) -> int:
    """Whole-number extended resources (GPUs are never fractional)."""
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return 0


def selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def parse_node(raw: Mapping[str, Any]) -> NodeInfo:
    status = raw.get("status") or {}
    ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                for c in status.get("conditions") or [])
    return NodeInfo(
        name=raw["metadata"]["name"],
        labels=dict(raw["metadata"].get("labels") or {}),
        capacity_gpus=_quantity_int((status.get("capacity") or {}).get(GPU_RESOURCE, 0)),
        allocatable_gpus=_quantity_int((status.get("allocatable") or {}).get(GPU_RESOURCE, 0)),
        ready=ready,
        unschedulable=bool((raw.get("spec") or {}).get("unschedulable", False)),
    )


def pod_gpus(pod_spec: Mapping[str, Any]) -> int:
    """GPUs a pod holds, as the scheduler counts them: the larger of the sum over containers
    and the largest init container."""
    def request(container: Mapping[str, Any]) -> int:
        resources = container.get("resources") or {}
        value = (resources.get("requests") or {}).get(GPU_RESOURCE)
        if value is None:
            value = (resources.get("limits") or {}).get(GPU_RESOURCE, 0)
        return _quantity_int(value)
    main = sum(request(c) for c in pod_spec.get("containers") or [])
    init = max((request(c) for c in pod_spec.get("initContainers") or []), default=0)
    return max(main, init)


def parse_pod(raw: Mapping[str, Any]) -> PodInfo | None:
    """The pod, if it holds GPUs on a node now."""
    spec = raw.get("spec") or {}
    node = spec.get("nodeName")
    phase = (raw.get("status") or {}).get("phase")
    if not node or phase in ("Succeeded", "Failed"):
        return None
    gpus = pod_gpus(spec)
    if gpus == 0:
        return None
    meta = raw["metadata"]
    return PodInfo(meta.get("namespace", ""), meta["name"], node, gpus,
                   (meta.get("labels") or {}).get(LABEL_MD))


def parse_pools(raw: Iterable[Mapping[str, Any]]) -> tuple[dict[str, GPUPool], dict[str, str]]:
    """Valid pools by name, and the error of each pool the model cannot read."""
    pools: dict[str, GPUPool] = {}
    invalid: dict[str, str] = {}
    for item in raw:
        name = item["metadata"]["name"]
        try:
            pools[name] = GPUPool.model_validate(item)
        except ValidationError as err:
            invalid[name] = str(err)
    return pools, invalid


def pool_status(pool: GPUPool, state: ClusterState, reserved_gpus: int = 0) -> GPUPoolStatus:
    """GPU accounting of one pool from the nodes matching its selector and the pods on them."""
    nodes = state.pool_nodes(pool)
    names = {n.name for n in nodes}
    used: dict[str, int] = {}
    for pod in state.pods:
        if pod.node in names:
            used[pod.node] = used.get(pod.node, 0) + pod.gpus
    usable = [n for n in nodes if n.schedulable]
    allocatable = sum(n.allocatable_gpus for n in usable)
    free = sum(max(0, n.allocatable_gpus - used.get(n.name, 0)) for n in usable)
    return GPUPoolStatus.model_validate({
        "observedGeneration": pool.metadata.get("generation"),
        "nodes": len(nodes),
        "readyNodes": len(usable),
        "totalGPUs": sum(n.capacity_gpus for n in nodes),
        "allocatableGPUs": allocatable,
        "allocatedGPUs": sum(used.values()),
        "reservedGPUs": reserved_gpus,
        "freeGPUs": free,
    })


def pool_views(state: ClusterState, namespace: str, md_name: str) -> dict[str, PoolView]:
    """Every pool as the placement of one ModelDeployment sees it: its own pods do not count
    against the free GPUs, so the placement it already has stays feasible."""
    views: dict[str, PoolView] = {}
    for name, pool in state.pools.items():
        nodes = state.pool_nodes(pool)
        others: dict[str, int] = {}
        for pod in state.pods:
            if pod.namespace == namespace and pod.modeldeployment == md_name:
                continue
            others[pod.node] = others.get(pod.node, 0) + pod.gpus
        views[name] = PoolView(name, pool.spec, tuple(
            NodeCapacity(n.name, n.allocatable_gpus, others.get(n.name, 0), n.schedulable,
                         n.labels.get(ZONE_LABEL))
            for n in sorted(nodes, key=lambda n: n.name)))
    return views


@dataclass
class ClusterObserver:
    """Reads pools, nodes and GPU pods; caches the result for `ttl` seconds."""

    kube: Kube
    ttl: float = 2.0
    clock: Callable[[], float] = time.monotonic
    _cached: ClusterState | None = field(default=None, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def invalidate(self) -> None:
        with self._lock:
            self._cached = None

    def state(self) -> ClusterState:
        with self._lock:
            now = self.clock()
            if self._cached is not None and now - self._cached.observed_at < self.ttl:
                return self._cached
            pools, invalid = parse_pools(self.kube.iter("GPUPool"))
            nodes = tuple(parse_node(n) for n in self.kube.iter("Node"))
            pods = tuple(p for p in (parse_pod(raw) for raw in self.kube.iter(
                "Pod", fields="status.phase!=Succeeded,status.phase!=Failed")) if p is not None)
            self._cached = ClusterState(pools, invalid, nodes, pods, now)
            return self._cached

    def has_service_monitors(self) -> bool:
        return self.kube.get("CustomResourceDefinition",
                             "servicemonitors.monitoring.coreos.com") is not None
