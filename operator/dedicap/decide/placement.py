"""Placement: how many replicas of a ModelDeployment go to which GPUPool, and at which
priority. Pure: no I/O, no clock. The one placement result of dedicap (`Placement`), for the
reconcile, the autoscaler's replica limit and the simulator alike.

The rules, in the order a user reads `spec.placement.pools`:

1. A pool is *eligible* when it exists, its GPUs have at least `resources.gpuMemoryGiB`, it has
   a Ready, schedulable node, and one of those nodes can hold `resources.gpusPerReplica` GPUs
   (a replica's GPUs are on one node).
2. **Reserved headroom first**, on the reservation's pool (`Entitlement`): up to the GPUs the
   reservation leaves this ModelDeployment. Reserved replicas take free GPUs first; when there
   are none, they count the GPUs of lower-priority pods (other tenants' burst replicas) as
   theirs, and the scheduler preempts those pods.
3. **Then burst**, on the burst pools in the ModelDeployment's order of preference, up to the
   burst limit, on GPUs that are free right now (idle reserved GPUs of others included).
   Without a reservation every replica is burst, limited only by what is free; without
   capacity management (`dedicap run --no-capacity`) the same assignment runs without
   priority classes.
4. Replicas spread over zones, then nodes.
5. What does not fit is **not** turned into Pending pods: the result says how many were not
   placed, why (`reason`: NoEligiblePool, BurstLimitReached, InsufficientCapacity) and the
   numbers per pool (`message`).

"Free" GPUs of a node are its allocatable GPUs (0 while it is not Ready or is cordoned) minus
what *other* pods hold there; the ModelDeployment's own replicas do not count, so the placement
it already has stays feasible.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from dedicap.decide.capacity_objects import BURST_CLASS, RESERVED_CLASS

__all__ = ["BURST_CLASS", "RESERVED_CLASS"]

RESERVED = "reserved"
BURST = "burst"

# Why a pool is not eligible (CamelCase, stable for programs and conditions).
ELIGIBLE = "Eligible"
UNKNOWN_POOL = "UnknownPool"
INSUFFICIENT_GPU_MEMORY = "InsufficientGPUMemory"
NO_READY_NODES = "NoReadyNodes"
REPLICA_DOES_NOT_FIT_NODE = "ReplicaDoesNotFitNode"

# Why not every replica is placed (reasons of CapacityConstrained).
NO_ELIGIBLE_POOL = "NoEligiblePool"
BURST_LIMIT = "BurstLimitReached"
INSUFFICIENT_CAPACITY = "InsufficientCapacity"


# ----------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class NodeState:
    """GPUs of one node as one ModelDeployment sees them (its own pods left out)."""

    name: str
    zone: str
    allocatable: int  # 0 when the node is not Ready or is cordoned
    used: int = 0  # requested by other pods on the node
    used_protected: int = 0  # of `used`, what a reserved replica may not preempt

    @property
    def free(self) -> int:
        return max(self.allocatable - self.used, 0)

    @property
    def reclaimable(self) -> int:
        """Free GPUs plus those of pods a reserved replica may preempt."""
        return max(self.allocatable - self.used_protected, 0)


@dataclass(frozen=True)
class PoolState:
    name: str
    gpu_memory_gib: float
    nodes: tuple[NodeState, ...]
    price_per_gpu_hour: float = 0.0
    currency: str = "USD"
    # Ready, schedulable nodes; None: those of `nodes` with allocatable GPUs.
    ready_nodes: int | None = None

    @property
    def allocatable(self) -> int:
        return sum(n.allocatable for n in self.nodes)

    @property
    def free(self) -> int:
        return sum(n.free for n in self.nodes)

    @property
    def reclaimable(self) -> int:
        return sum(n.reclaimable for n in self.nodes)

    def largest_node(self) -> int:
        return max((n.allocatable for n in self.nodes), default=0)

    def has_ready_node(self) -> bool:
        if self.ready_nodes is not None:
            return self.ready_nodes > 0
        return any(n.allocatable > 0 for n in self.nodes)


@dataclass(frozen=True)
class Entitlement:
    """What one ModelDeployment may take now: reserved headroom in the reservation's pool, and
    burst GPUs on the burst pools (`burst_gpus` None: no limit but the namespace's quota)."""

    reservation: str | None = None
    pool: str | None = None
    reserved_gpus: int = 0
    burst_gpus: int | None = None
    burst_pools: tuple[str, ...] | None = None  # None: any pool the ModelDeployment accepts
    committed_gpus: int = 0  # the reservation's spec.gpus, for the explanation
    note: str = ""  # why a named reservation is not in effect, if it is not


@dataclass(frozen=True)
class PlacementRequest:
    replicas: int
    gpus_per_replica: int
    gpu_memory_gib: float
    pools: tuple[str, ...]  # preference order


# ----------------------------------------------------------------------------- the result


@dataclass(frozen=True)
class PoolAssignment:
    pool: str
    reserved: int = 0  # replicas at reserved priority
    burst: int = 0  # replicas at burst priority

    @property
    def replicas(self) -> int:
        return self.reserved + self.burst


@dataclass(frozen=True)
class PoolReport:
    """The numbers behind the decision on one pool of the preference list."""

    pool: str
    eligible: bool
    reason: str  # ELIGIBLE, or why not
    allocatable_gpus: int = 0
    free_gpus: int = 0
    reserved_headroom_gpus: int = 0  # of this ModelDeployment's reservation, when on this pool
    reserved: int = 0
    burst: int = 0
    gpu_memory_gib: float = 0.0
    largest_node_gpus: int = 0

    def describe(self, gpr: int, need_gib: float) -> str:
        """Why the pool is not eligible, or what was placed on it, in words with numbers."""
        if self.reason == UNKNOWN_POOL:
            return f"{self.pool}: no GPUPool named {self.pool!r}; fix spec.placement.pools"
        if self.reason == INSUFFICIENT_GPU_MEMORY:
            return (f"{self.pool}: GPU memory {self.gpu_memory_gib:g} GiB < {need_gib:g} GiB "
                    "needed (spec.resources.gpuMemoryGiB)")
        if self.reason == NO_READY_NODES:
            return f"{self.pool}: no Ready, schedulable node"
        if self.reason == REPLICA_DOES_NOT_FIT_NODE:
            return (f"{self.pool}: no node has {gpr} allocatable GPUs for one replica "
                    f"(spec.resources.gpusPerReplica={gpr}, largest node "
                    f"{self.largest_node_gpus})")
        text = (f"{self.pool}: placed {self.reserved} reserved + {self.burst} burst, "
                f"free {self.free_gpus}/{self.allocatable_gpus} GPUs")
        if self.reserved_headroom_gpus or self.reserved:
            text += f", reserved headroom {self.reserved_headroom_gpus} GPUs"
        return text


@dataclass(frozen=True)
class DeploymentPlan:
    """One Deployment of Triton replicas the placement asks for."""

    pool: str
    replicas: int
    priority_class: str | None  # None: capacity management is off
    # The burst replicas on the reservation's pool, beside its reserved ones (`<md>-<pool>-burst`)
    secondary: bool = False


@dataclass(frozen=True)
class Placement:
    wanted: int
    gpus_per_replica: int
    assignments: tuple[PoolAssignment, ...]  # eligible pools in preference order (may hold 0)
    pools: tuple[PoolReport, ...]  # every pool of the preference list
    reason: str = ""  # "" when every replica is placed, else why not
    message: str = ""
    note: str = ""
    reserved_pool: str | None = None  # the pool of the reservation in effect, if any
    gpu_memory_gib: float = 0.0  # what a replica needs (for the explanations)

    @property
    def placed(self) -> int:
        return sum(a.replicas for a in self.assignments)

    @property
    def unplaced(self) -> int:
        return self.wanted - self.placed

    @property
    def constrained(self) -> bool:
        return self.placed < self.wanted

    @property
    def eligible(self) -> bool:
        """Whether any listed pool could ever take a replica (the spec is satisfiable)."""
        return any(r.eligible for r in self.pools)

    @property
    def pools_in_use(self) -> tuple[str, ...]:
        return tuple(a.pool for a in self.assignments if a.replicas)

    def on(self, pool: str) -> PoolAssignment:
        for a in self.assignments:
            if a.pool == pool:
                return a
        return PoolAssignment(pool)

    def replicas_on(self, pool: str) -> int:
        return self.on(pool).replicas

    def explain(self) -> str:
        """One sentence with the numbers, for conditions and events."""
        if self.message:
            return self.message
        per_pool = "; ".join(self.describe_pools(eligible=False))
        return (f"wanted {self.wanted} replica(s), placed {self.placed}"
                + (f", {self.unplaced} fit nowhere" if self.unplaced else "")
                + (f" ({per_pool})" if per_pool else ""))

    def describe_pools(self, eligible: bool | None = None) -> list[str]:
        """Each pool's report in words (only the (in)eligible ones when `eligible` is set)."""
        return [r.describe(self.gpus_per_replica, self.gpu_memory_gib) for r in self.pools
                if eligible is None or r.eligible == eligible]

    def deployments(self, priority_classes: bool = True) -> tuple[DeploymentPlan, ...]:
        """The Deployments that run this placement. On the reservation's pool the reserved and
        the burst replicas are two Deployments (so the scheduler can preempt the one and not
        the other), and the reserved one stays even at zero; elsewhere every replica is burst.
        When nothing is placed, one empty Deployment stays on the most preferred eligible pool,
        so scaling from zero or waiting for room does not create and delete objects."""
        plans: list[DeploymentPlan] = []
        for a in self.assignments:
            if not priority_classes:
                if a.replicas:
                    plans.append(DeploymentPlan(a.pool, a.replicas, None))
            elif a.pool == self.reserved_pool:
                plans.append(DeploymentPlan(a.pool, a.reserved, RESERVED_CLASS))
                if a.burst:
                    plans.append(DeploymentPlan(a.pool, a.burst, BURST_CLASS, secondary=True))
            elif a.replicas:
                plans.append(DeploymentPlan(a.pool, a.replicas, BURST_CLASS))
        if not plans and self.assignments:
            plans.append(DeploymentPlan(self.assignments[0].pool, 0,
                                        BURST_CLASS if priority_classes else None))
        return tuple(plans)


# ----------------------------------------------------------------------------- deciding


class _Nodes:
    """Mutable per-node free GPUs of one pool while replicas are being assigned."""

    def __init__(self, nodes: Sequence[NodeState]) -> None:
        self.names = [n.name for n in nodes]
        self.zone = {n.name: n.zone for n in nodes}
        self.free = {n.name: n.free for n in nodes}
        self.reclaim = {n.name: n.reclaimable for n in nodes}
        self.mine: dict[str, int] = {}  # replicas assigned per node
        self.mine_zone: dict[str, int] = {}

    def _spread_key(self, name: str, room: int) -> tuple[int, int, int, str]:
        # Spread: fewest of our replicas in the zone, then on the node, then most room, then name.
        return (self.mine_zone.get(self.zone[name], 0), self.mine.get(name, 0), -room, name)

    def fits(self, gpr: int) -> bool:
        """Whether a replica of `gpr` GPUs fits the free GPUs of some node."""
        return any(self.free[n] >= gpr for n in self.names)

    def take(self, gpr: int, *, reclaim: bool) -> bool:
        """Assign one replica of `gpr` GPUs. Truly free GPUs first; with `reclaim` (reserved
        replicas), GPUs of preemptible pods only when no node has enough free ones."""
        fits = [n for n in self.names if self.free[n] >= gpr]
        if not fits and reclaim:
            fits = [n for n in self.names if self.reclaim[n] >= gpr]
        if not fits:
            return False
        node = min(fits, key=lambda n: self._spread_key(n, self.free[n]))
        self.free[node] = max(self.free[node] - gpr, 0)
        self.reclaim[node] -= gpr
        self.mine[node] = self.mine.get(node, 0) + 1
        z = self.zone[node]
        self.mine_zone[z] = self.mine_zone.get(z, 0) + 1
        return True


def _report(name: str, pool: PoolState | None, request: PlacementRequest,
            ent: Entitlement) -> PoolReport:
    if pool is None:
        return PoolReport(name, False, UNKNOWN_POOL)
    base = PoolReport(name, True, ELIGIBLE, pool.allocatable, pool.free,
                      ent.reserved_gpus if ent.pool == name else 0,
                      gpu_memory_gib=pool.gpu_memory_gib, largest_node_gpus=pool.largest_node())
    if pool.gpu_memory_gib < request.gpu_memory_gib:
        return replace(base, eligible=False, reason=INSUFFICIENT_GPU_MEMORY)
    if not pool.has_ready_node():
        return replace(base, eligible=False, reason=NO_READY_NODES)
    if pool.largest_node() < request.gpus_per_replica:
        return replace(base, eligible=False, reason=REPLICA_DOES_NOT_FIT_NODE)
    return base


def place(request: PlacementRequest, pools: Mapping[str, PoolState],
          ent: Entitlement | None = None) -> Placement:
    """How many replicas go to which pool, reserved or burst, and why not more (module rules)."""
    if request.replicas < 0:
        raise ValueError(f"replicas must be >= 0, got {request.replicas}")
    ent = ent or Entitlement()
    gpr = request.gpus_per_replica
    reports = {name: _report(name, pools.get(name), request, ent) for name in request.pools}
    nodes = {name: _Nodes(pools[name].nodes) for name, r in reports.items() if r.eligible}
    counts = {name: [0, 0] for name in nodes}
    remaining = request.replicas
    # 1. Reserved headroom, in the reservation's pool (paid for; may preempt burst replicas).
    if ent.pool is not None and ent.pool in nodes:
        budget = ent.reserved_gpus // gpr
        while remaining > 0 and budget > 0 and nodes[ent.pool].take(gpr, reclaim=True):
            counts[ent.pool][0] += 1
            remaining -= 1
            budget -= 1
    # 2. Burst, on the burst pools in the ModelDeployment's order, up to the burst limit.
    burst_budget = math.inf if ent.burst_gpus is None else ent.burst_gpus // gpr
    burst_blocked = False
    for name in request.pools:
        if name not in nodes or (ent.burst_pools is not None and name not in ent.burst_pools):
            continue
        while remaining > 0:
            if burst_budget <= 0:
                # The limit is the reason only where there was room it kept us from using.
                burst_blocked = burst_blocked or nodes[name].fits(gpr)
                break
            if not nodes[name].take(gpr, reclaim=False):
                break
            counts[name][1] += 1
            remaining -= 1
            burst_budget -= 1
    assignments = tuple(PoolAssignment(n, r, b) for n, (r, b) in counts.items())
    final = tuple(replace(reports[n], reserved=counts[n][0], burst=counts[n][1])
                  if n in counts else reports[n] for n in request.pools)
    result = Placement(request.replicas, gpr, assignments, final, "", "", ent.note,
                       ent.pool if ent.reservation is not None else None,
                       request.gpu_memory_gib)
    if remaining <= 0:
        return result
    if not nodes:
        reason = NO_ELIGIBLE_POOL
    elif burst_blocked:
        reason = BURST_LIMIT
    else:
        reason = INSUFFICIENT_CAPACITY
    return replace(result, reason=reason, message=_explain(request, ent, result, reason))


def _explain(request: PlacementRequest, ent: Entitlement, p: Placement, reason: str) -> str:
    gpr = request.gpus_per_replica
    head = (f"wanted {p.wanted} replicas x {gpr} GPU = {p.wanted * gpr} GPUs, placed "
            f"{p.placed} ({p.unplaced} not placed)")
    if ent.reservation is not None:
        head += (f"; reservation {ent.reservation}: {ent.committed_gpus} GPUs reserved on "
                 f"{ent.pool}, {ent.reserved_gpus} available to this ModelDeployment, burst "
                 f"{ent.burst_gpus} GPUs left")
        if ent.pool not in request.pools:
            head += f" (its pool {ent.pool} is not in spec.placement.pools)"
    elif ent.note:
        head += f"; {ent.note}"
    if reason == BURST_LIMIT:
        head += "; the burst limit is reached: raise the reservation's burst.maxGPUs or gpus"
    return f"{head}. Per pool: {'; '.join(p.describe_pools())}"
