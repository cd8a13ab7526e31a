"""The cluster as every planner sees it: nodes, GPU pods, pools, reservations, namespaces. Pure.

One parser per kind turns the API's objects into small frozen records, and one definition of
"a GPU in use" holds for every consumer (placement, capacity admission and usage, GPUPool
status, accounting):

- a pod holds GPUs when it is not finished (phase Succeeded/Failed) and requests
  `nvidia.com/gpu` (the larger of the sum over its containers and its largest init container,
  as the scheduler counts them);
- it is *allocated* on its node once bound (`spec.nodeName`): that is what GPUPool status counts;
- a Pending pod that the scheduler *nominated* to a node after preempting others
  (`status.nominatedNodeName`) already has those GPUs spoken for: placement and reservation
  usage count it on that node, pool status does not (its victims may still be leaving).

`ClusterState` is the one read of the cluster that the reconcile, the capacity planner and the
autoscaler share; the controller's watch-backed view builds it without any API request.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

from pydantic import ValidationError

from dedicap.api.models import CapacityReservation, GPUPool
from dedicap.decide.placement import NodeState, PoolState

GPU_RESOURCE = "nvidia.com/gpu"
ZONE_LABEL = "topology.kubernetes.io/zone"
# Set on every replica by the renderer (render.py imports these names too).
LABEL_MD = "dedicap.dev/modeldeployment"
LABEL_RESERVATION = "dedicap.dev/reservation"
LABEL_CAPACITY = "dedicap.dev/capacity"  # "reserved" or "burst"
LABEL_POOL = "dedicap.dev/pool"


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

    @property
    def zone(self) -> str:
        return self.labels.get(ZONE_LABEL, "")


# Container waiting reasons that mean "this will not get better by itself".
STUCK_REASONS = ("CrashLoopBackOff", "ImagePullBackOff", "ErrImagePull", "CreateContainerError",
                 "CreateContainerConfigError", "InvalidImageName")


@dataclass(frozen=True)
class PodInfo:
    """What dedicap keeps of a pod that requests GPUs or is a ModelDeployment's replica."""

    namespace: str
    name: str
    node: str  # bound node, else the nominated one, else ""
    gpus: int
    bound: bool = True
    priority: int = 0
    modeldeployment: str = ""  # the dedicap replica's ModelDeployment, "" for other pods
    reservation: str = ""
    capacity: str = ""  # "reserved", "burst" or "" (not a dedicap replica)
    pool: str = ""  # the replica's pool label
    phase: str = "Running"
    ready: bool = True  # the Ready condition
    terminating: bool = False
    unschedulable: str = ""  # the scheduler's message while it cannot place the pod
    stuck: tuple[str, ...] = ()  # "pod: reason: message" of containers that will not recover

    @property
    def owner(self) -> str:
        """`<namespace>/<modeldeployment>` for a dedicap replica, else ""."""
        return f"{self.namespace}/{self.modeldeployment}" if self.modeldeployment else ""

    @property
    def finished(self) -> bool:
        return self.phase in ("Succeeded", "Failed")

    @property
    def holds_gpus(self) -> bool:
        """The one definition of GPUs in use (module docstring): not finished, requesting
        GPUs, on a node by binding or nomination."""
        return self.gpus > 0 and bool(self.node) and not self.finished

    @property
    def serving(self) -> bool:
        """A replica that answers requests: Running and Ready, not on its way out."""
        return self.phase == "Running" and self.ready and not self.terminating


def quantity_int(value: Any) -> int:
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
        capacity_gpus=quantity_int((status.get("capacity") or {}).get(GPU_RESOURCE, 0)),
        allocatable_gpus=quantity_int((status.get("allocatable") or {}).get(GPU_RESOURCE, 0)),
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
        return quantity_int(value)
    main = sum(request(c) for c in pod_spec.get("containers") or [])
    init = max((request(c) for c in pod_spec.get("initContainers") or []), default=0)
    return max(main, init)


def parse_pod(raw: Mapping[str, Any]) -> PodInfo | None:
    """The one pod parser. None for a pod that neither requests GPUs nor is a replica of a
    ModelDeployment: nothing of dedicap looks at it."""
    spec = raw.get("spec") or {}
    status = raw.get("status") or {}
    meta = raw.get("metadata") or {}
    labels = meta.get("labels") or {}
    gpus = pod_gpus(spec)
    md = labels.get(LABEL_MD, "")
    if gpus == 0 and not md:
        return None
    name = meta.get("name", "")
    unschedulable = ""
    ready = False
    for cond in status.get("conditions") or []:
        if (cond.get("type") == "PodScheduled" and cond.get("status") == "False"
                and cond.get("reason") == "Unschedulable"):
            unschedulable = cond.get("message") or "unschedulable"
        elif cond.get("type") == "Ready":
            ready = cond.get("status") == "True"
    stuck = []
    for cs in status.get("containerStatuses") or []:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in STUCK_REASONS:
            stuck.append(f"{name}: {waiting['reason']}: {waiting.get('message', '')}"
                         .rstrip(": "))
    return PodInfo(
        namespace=meta.get("namespace", ""), name=name,
        node=spec.get("nodeName") or status.get("nominatedNodeName") or "", gpus=gpus,
        bound=bool(spec.get("nodeName")), priority=int(spec.get("priority") or 0),
        modeldeployment=md, reservation=labels.get(LABEL_RESERVATION, ""),
        capacity=labels.get(LABEL_CAPACITY, ""), pool=labels.get(LABEL_POOL, ""),
        phase=status.get("phase") or "Pending", ready=ready,
        terminating=bool(meta.get("deletionTimestamp")), unschedulable=unschedulable,
        stuck=tuple(stuck))


def parse_all(model: type[Any], items: Iterable[Mapping[str, Any]]
              ) -> tuple[dict[str, Any], dict[str, str]]:
    """Valid objects of a cluster-scoped kind by name, and why each invalid one is refused."""
    ok: dict[str, Any] = {}
    bad: dict[str, str] = {}
    for item in items:
        name = item["metadata"]["name"]
        try:
            ok[name] = model.model_validate(item)
        except ValidationError as err:
            bad[name] = str(err)
    return ok, bad


@dataclass(frozen=True)
class PoolFigures:
    """A GPUPool's GPUs by state, as its status and the operator's metrics report them."""

    nodes: int
    ready_nodes: int
    total: int  # node capacity, Ready or not
    allocatable: int  # of Ready, schedulable nodes
    allocated: int  # requested by bound pods
    free: int


@dataclass(frozen=True)
class ClusterState:
    """One consistent read of everything placement and capacity depend on."""

    pools: Mapping[str, GPUPool]
    nodes: tuple[NodeInfo, ...]
    pods: tuple[PodInfo, ...]  # those that hold GPUs (`PodInfo.holds_gpus`)
    reservations: Mapping[str, CapacityReservation] = field(default_factory=dict)
    invalid_pools: Mapping[str, str] = field(default_factory=dict)
    invalid_reservations: Mapping[str, str] = field(default_factory=dict)
    namespaces: frozenset[str] = frozenset()

    def pool_nodes(self, pool: GPUPool) -> list[NodeInfo]:
        name = pool.metadata.get("name")
        if isinstance(name, str) and self.pools.get(name) is pool:
            return self._members[name]
        return [n for n in self.nodes if selects(pool.spec.node_selector, n.labels)]

    # A state is read by every reconcile until the next change: what every placement needs is
    # worked out once per state (frozen dataclass: cached_property writes the instance dict).
    @cached_property
    def _members(self) -> dict[str, list[NodeInfo]]:
        return {name: [n for n in self.nodes if selects(p.spec.node_selector, n.labels)]
                for name, p in self.pools.items()}

    def _usage(self, protected_priority: int | None) -> _Usage:
        cache: dict[int | None, _Usage] = self.__dict__.setdefault("_usage_cache", {})
        if protected_priority not in cache:
            cache[protected_priority] = _Usage.of(self.pods, protected_priority)
        return cache[protected_priority]

    def pool_capacity(self) -> dict[str, int]:
        """GPUs of each pool for admission: the capacity of every node in it, Ready or not, so
        a node that flaps does not flap admissions; a deleted node does shrink the pool."""
        return {name: sum(n.capacity_gpus for n in self.pool_nodes(p))
                for name, p in self.pools.items()}

    def pool_figures(self, name: str) -> PoolFigures:
        cache: dict[str, PoolFigures] = self.__dict__.setdefault("_figures_cache", {})
        if name not in cache:
            cache[name] = self._pool_figures(name)
        return cache[name]

    def _pool_figures(self, name: str) -> PoolFigures:
        nodes = self.pool_nodes(self.pools[name])
        names = {n.name for n in nodes}
        used: dict[str, int] = {}
        for p in self.pods:
            if p.holds_gpus and p.bound and p.node in names:
                used[p.node] = used.get(p.node, 0) + p.gpus
        usable = [n for n in nodes if n.schedulable]
        return PoolFigures(
            nodes=len(nodes), ready_nodes=len(usable),
            total=sum(n.capacity_gpus for n in nodes),
            allocatable=sum(n.allocatable_gpus for n in usable),
            allocated=sum(used.values()),
            free=sum(max(n.allocatable_gpus - used.get(n.name, 0), 0) for n in usable))

    def pool_states(self, exclude_owner: str = "", protected_priority: int | None = None
                    ) -> dict[str, PoolState]:
        """Every pool as placement sees it for the ModelDeployment `exclude_owner`
        (`<namespace>/<name>`): its own replicas do not count against the free GPUs, so the
        placement it already has stays feasible. Pods at or above `protected_priority` cannot
        be preempted (None: none can)."""
        usage = self._usage(protected_priority)
        shared = self._shared_pool_states(protected_priority)
        mine = usage.by_owner.get(exclude_owner, {}) if exclude_owner else {}
        if not mine:
            return dict(shared)
        # Only the nodes holding the owner's own replicas differ from the shared view.
        out = {}
        for name, state in shared.items():
            where = self._node_index[name]
            held = [(where[node], gpus) for node, gpus in mine.items() if node in where]
            if not held:
                out[name] = state
                continue
            nodes = list(state.nodes)
            for i, (own_used, own_protected) in held:
                n = nodes[i]
                nodes[i] = replace(n, used=n.used - own_used,
                                   used_protected=n.used_protected - own_protected)
            out[name] = replace(state, nodes=tuple(nodes))
        return out

    @cached_property
    def _node_index(self) -> dict[str, dict[str, int]]:
        """Per pool, each member node's position in its PoolState (sorted by name)."""
        return {name: {n.name: i for i, n in enumerate(sorted(members, key=lambda n: n.name))}
                for name, members in self._members.items()}

    def _shared_pool_states(self, protected_priority: int | None) -> dict[str, PoolState]:
        """The pools with every pod counted: what a ModelDeployment with no replica yet sees,
        and what the others' views are patched from (a thousand placements of one state
        share it)."""
        cache: dict[int | None, dict[str, PoolState]] = self.__dict__.setdefault(
            "_pool_states_cache", {})
        if protected_priority in cache:
            return cache[protected_priority]
        usage = self._usage(protected_priority)
        out = {}
        for name, pool in self.pools.items():
            nodes = []
            for n in sorted(self._members[name], key=lambda n: n.name):
                used, protected = usage.by_node.get(n.name, (0, 0))
                nodes.append(NodeState(n.name, n.zone, n.allocatable_gpus if n.schedulable else 0,
                                       used, protected))
            out[name] = PoolState(
                name, pool.spec.gpu.memory_gib, tuple(nodes), pool.spec.price_per_gpu_hour,
                pool.spec.currency,
                ready_nodes=sum(1 for n in self._members[name] if n.schedulable))
        cache[protected_priority] = out
        return out


@dataclass(frozen=True)
class _Usage:
    """GPUs held per node (used, of which protected from preemption), in total and per owner."""

    by_node: Mapping[str, tuple[int, int]]
    by_owner: Mapping[str, Mapping[str, tuple[int, int]]]

    @staticmethod
    def of(pods: Iterable[PodInfo], protected_priority: int | None) -> _Usage:
        by_node: dict[str, tuple[int, int]] = {}
        by_owner: dict[str, dict[str, tuple[int, int]]] = {}
        for p in pods:
            if not p.holds_gpus:
                continue
            protected = p.gpus if protected_priority is None or p.priority >= protected_priority \
                else 0
            used, prot = by_node.get(p.node, (0, 0))
            by_node[p.node] = (used + p.gpus, prot + protected)
            if p.owner:
                owned = by_owner.setdefault(p.owner, {})
                used, prot = owned.get(p.node, (0, 0))
                owned[p.node] = (used + p.gpus, prot + protected)
        return _Usage(by_node, by_owner)
