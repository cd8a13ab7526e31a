"""The one observed cluster: a watch-backed cache of every object the operator reads, shared by
the reconcile, the capacity loop and the autoscaler.

Every loop reads through this view, so a reconcile, an evaluation or a capacity round makes no
API read at all; only changes make API writes. Each kind has one informer (informer.py) and one
parser:

| kind | kept as | selected |
|---|---|---|
| ModelDeployment, GPUPool, CapacityReservation | the object (no managedFields) | all |
| Node | `NodeInfo` | all |
| Pod | `PodInfo` | not finished; only those with GPUs or a ModelDeployment label are kept |
| its children: Deployment, Service, PDB, NetworkPolicy, ServiceMonitor | the object | ours |
| Namespace | its name | all |
| ClusterKopfPeering | its status (the peers) | all |
| ResourceQuota, RoleBinding | the object | written by dedicap's capacity management |

ServiceMonitors are watched only while their CRD exists (a CRD informer looks). An operator
that serves named namespaces (`--namespace a -n b`, the chart's `watchNamespaces`) lists and
watches what it writes there — children, quotas, RoleBindings — per namespace, as its namespaced
RBAC allows; what placement must see across tenants (ModelDeployments, pods, nodes) it reads
cluster-wide.

`state()` assembles the planners' `ClusterState` from the caches; it is rebuilt only after one of
its kinds changed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from dedicap.api.models import CapacityReservation, GPUPool
from dedicap.controller.informer import ChangeHandler, Informer, InformerSet, Key, strip
from dedicap.controller.kube import KINDS, Kind, Kube
from dedicap.decide.capacity_objects import COMPONENT_LABEL
from dedicap.decide.cluster import ClusterState, NodeInfo, PodInfo, parse_all, parse_node, parse_pod
from dedicap.decide.render import LABEL_MANAGED_BY, LABEL_MD, MANAGER, ChildKey

log = logging.getLogger(__name__)

CHILD_KINDS = ("Deployment", "Service", "PodDisruptionBudget", "NetworkPolicy", "ServiceMonitor")
SERVICE_MONITOR_CRD = "servicemonitors.monitoring.coreos.com"
CHILD_SELECTOR = f"{LABEL_MANAGED_BY}={MANAGER},{LABEL_MD}"
CAPACITY_SELECTOR = f"{LABEL_MANAGED_BY}={MANAGER},{COMPONENT_LABEL}=capacity"


def _md_index(raw: Mapping[str, Any]) -> tuple[str, str] | None:
    meta = raw.get("metadata") or {}
    md = (meta.get("labels") or {}).get(LABEL_MD)
    return (meta.get("namespace") or "", md) if md else None


def _pod_index(pod: PodInfo) -> tuple[str, str] | None:
    return (pod.namespace, pod.modeldeployment) if pod.modeldeployment else None


def _peers(raw: Mapping[str, Any]) -> dict[str, Any]:
    status = raw.get("status")
    return dict(status) if isinstance(status, Mapping) else {}


def _name(raw: Mapping[str, Any]) -> str:
    return str((raw.get("metadata") or {}).get("name") or "")


@dataclass
class ClusterView:
    kube: Kube
    # Which informers to run: the operator's loops need all of them; a capacity-less operator
    # skips the capacity kinds.
    capacity: bool = True
    # The namespaces served (glob patterns; none: all). Plain names: the kinds the operator
    # writes are watched in those namespaces only.
    namespaces: tuple[str, ...] = ()
    informers: dict[str, Informer[Any] | InformerSet[Any]] = field(default_factory=dict,
                                                                    init=False)
    _state: tuple[tuple[int, ...], ClusterState] | None = field(default=None, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def __post_init__(self) -> None:
        k = self.kube

        named = bool(self.namespaces) and not any(set(n) & set("*?[") for n in self.namespaces)

        def add(name: str, kind: Kind, parse: Callable[[Mapping[str, Any]], Any],
                written: bool = False, **kw: Any) -> None:
            if written and named:
                self.informers[name] = InformerSet([Informer(k, kind, parse, namespace=ns, **kw)
                                                    for ns in sorted(self.namespaces)])
            else:
                self.informers[name] = Informer(k, kind, parse, **kw)

        add("ModelDeployment", KINDS["ModelDeployment"], strip)
        add("GPUPool", KINDS["GPUPool"], strip)
        add("CapacityReservation", KINDS["CapacityReservation"], strip)
        add("Node", KINDS["Node"], parse_node)
        add("Pod", KINDS["Pod"], parse_pod, fields="status.phase!=Succeeded,status.phase!=Failed",
            index=_pod_index)
        add("Namespace", KINDS["Namespace"], _name)
        for kind in CHILD_KINDS:
            add(kind, KINDS[kind], strip, written=True, labels=CHILD_SELECTOR, index=_md_index)
        add("CustomResourceDefinition", KINDS["CustomResourceDefinition"], _name,
            fields=f"metadata.name={SERVICE_MONITOR_CRD}")
        add("ClusterKopfPeering", KINDS["ClusterKopfPeering"], _peers)
        if self.capacity:
            for kind in ("ResourceQuota", "RoleBinding"):
                add(kind, KINDS[kind], strip, written=True, labels=CAPACITY_SELECTOR)
        self.informers["CustomResourceDefinition"].on_change.append(self._crd_changed)

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> None:
        for name, informer in self.informers.items():
            if name != "ServiceMonitor":  # started when its CRD exists
                informer.start()

    def stop(self) -> None:
        for informer in self.informers.values():
            informer.stop()

    def load(self) -> None:
        """List every kind once, without watching: a one-shot read for tools and tests."""
        for name, informer in self.informers.items():
            if name != "ServiceMonitor" or self.has_service_monitors():
                informer.list_once()

    def wait_synced(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        for name, informer in self.informers.items():
            if name == "ServiceMonitor" and not self.has_service_monitors():
                continue
            if not informer.wait_synced(max(deadline - time.monotonic(), 0.0)):
                return False
        return True

    @property
    def synced(self) -> bool:
        return all(i.synced for n, i in self.informers.items()
                   if n != "ServiceMonitor" or self.has_service_monitors())

    def count_restarts(self, count: Callable[[str, str], None]) -> None:
        """Have every informer report its relists and reconnects as `count(kind, cause)`."""
        for name, informer in self.informers.items():
            informer.on_restart = lambda cause, n=name: count(n, cause)

    def peering_status(self, name: str) -> dict[str, Any] | None:
        """A ClusterKopfPeering's status (the peers announced in it), from the cache."""
        return self.informers["ClusterKopfPeering"].get(("", name))

    def on_change(self, kind: str, handler: ChangeHandler) -> None:
        self.informers[kind].on_change.append(handler)

    def _crd_changed(self, old: Any, new: Any) -> None:
        monitors = self.informers["ServiceMonitor"]
        if new is not None and not monitors.started:
            log.info("ServiceMonitor CRD found: watching ServiceMonitors")
            monitors.start()

    def observe_write(self, kind: str, raw: Mapping[str, Any]) -> None:
        """Write-through of the operator's own write (informer.py)."""
        informer = self.informers.get(kind)
        if informer is not None:
            informer.observe_write(raw)

    # ----------------------------------------------------------------- reading

    def has_service_monitors(self) -> bool:
        return len(self.informers["CustomResourceDefinition"]) > 0

    def modeldeployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        value = self.informers["ModelDeployment"].get((namespace, name))
        return dict(value) if value is not None else None

    def modeldeployments(self) -> list[dict[str, Any]]:
        return self.informers["ModelDeployment"].values()

    def modeldeployments_version(self) -> int:
        """Moves whenever a ModelDeployment is added, removed or changed: the loops that look
        at every one of them each second do so only then (or when one of them is due)."""
        return self.informers["ModelDeployment"].generation

    def pods_of(self, namespace: str, md: str) -> list[PodInfo]:
        return self.informers["Pod"].by_index((namespace, md))

    def children(self, namespace: str, md: str) -> dict[ChildKey, dict[str, Any]]:
        out: dict[ChildKey, dict[str, Any]] = {}
        for kind in CHILD_KINDS:
            if kind == "ServiceMonitor" and not self.has_service_monitors():
                continue
            for obj in self.informers[kind].by_index((namespace, md)):
                out[ChildKey.of(obj)] = obj
        return out

    def pool(self, name: str) -> dict[str, Any] | None:
        return self.informers["GPUPool"].get(("", name))

    def pools_raw(self) -> list[dict[str, Any]]:
        return self.informers["GPUPool"].values()

    def reservations_raw(self) -> list[dict[str, Any]]:
        return self.informers["CapacityReservation"].values()

    def capacity_objects(self, kind: str) -> list[dict[str, Any]]:
        """The ResourceQuotas or RoleBindings dedicap's capacity management wrote."""
        informer = self.informers.get(kind)
        return informer.values() if informer is not None else []

    def capacity_object(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        informer = self.informers.get(kind)
        return informer.get((namespace, name)) if informer is not None else None

    def state(self) -> ClusterState:
        """The planners' input, rebuilt only when pools, reservations, nodes, pods or
        namespaces changed."""
        kinds = ("GPUPool", "CapacityReservation", "Node", "Pod", "Namespace")
        version = tuple(self.informers[k].generation for k in kinds)
        with self._lock:
            if self._state is not None and self._state[0] == version:
                return self._state[1]
        pools, invalid_pools = parse_all(GPUPool, self.pools_raw())
        reservations, invalid = parse_all(CapacityReservation, self.reservations_raw())
        nodes: Iterable[NodeInfo] = self.informers["Node"].values()
        pods = tuple(p for p in self.informers["Pod"].values() if p.holds_gpus)
        state = ClusterState(
            pools=pools, nodes=tuple(sorted(nodes, key=lambda n: n.name)),
            pods=tuple(sorted(pods, key=lambda p: (p.namespace, p.name))),
            reservations=reservations, invalid_pools=invalid_pools,
            invalid_reservations=invalid,
            namespaces=frozenset(self.informers["Namespace"].values()))
        with self._lock:
            self._state = (version, state)
        return state

    def relists(self) -> int:
        return sum(i.relists for i in self.informers.values())

    def reconnects(self) -> int:
        return sum(i.reconnects for i in self.informers.values())


def md_key_of(raw: Mapping[str, Any]) -> Key | None:
    """The ModelDeployment a child or pod belongs to, from its label."""
    return _md_index(raw)
