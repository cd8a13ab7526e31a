"""Placement: how many replicas of a ModelDeployment go to which GPUPool. Pure: no I/O, no clock.

The rule for now, in the order a user reads it in `spec.placement.pools`:

1. A pool is *eligible* when it exists, its GPUs have at least `resources.gpuMemoryGiB`, and at
   least one of its Ready nodes can hold `resources.gpusPerReplica` GPUs (a replica's GPUs are
   on one node).
2. Each eligible pool takes as many of the remaining replicas as fit into its free GPUs, node by
   node (free = allocatable minus what *other* workloads requested; the ModelDeployment's own
   pods do not count against it, so the placement it already has stays feasible).
3. Replicas that fit nowhere are *not* assigned: they are reported (`unplaced`, per-pool
   numbers) so the operator can say CapacityConstrained instead of leaving Pending pods.

Reservations, burst and preemption priorities extend this (see `PoolAssignment.priority_class`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from dedicap.api.models import GPUPoolSpec, ModelDeploymentSpec
from dedicap.decide import reservations as rv
from dedicap.decide.capacity_objects import BURST_CLASS, RESERVED_CLASS


@dataclass(frozen=True)
class NodeCapacity:
    """One node of a pool, as placement sees it."""

    name: str
    allocatable_gpus: int
    # GPUs requested by pods bound to the node that do not belong to the ModelDeployment being
    # placed.
    used_by_others: int = 0
    schedulable: bool = True
    zone: str | None = None

    @property
    def free_gpus(self) -> int:
        return max(0, self.allocatable_gpus - self.used_by_others) if self.schedulable else 0


@dataclass(frozen=True)
class PoolView:
    """A GPUPool and its nodes."""

    name: str
    spec: GPUPoolSpec
    nodes: tuple[NodeCapacity, ...] = ()

    @property
    def free_gpus(self) -> int:
        return sum(n.free_gpus for n in self.nodes)

    def replicas_that_fit(self, gpus_per_replica: int) -> int:
        return sum(n.free_gpus // gpus_per_replica for n in self.nodes)

    def largest_node_gpus(self) -> int:
        return max((n.allocatable_gpus for n in self.nodes if n.schedulable), default=0)


@dataclass(frozen=True)
class PoolVerdict:
    """What placement concluded about one pool of the preference list."""

    pool: str
    eligible: bool
    # Replicas of this ModelDeployment that would fit into the pool's free GPUs.
    fits: int
    free_gpus: int
    reason: str  # CamelCase, e.g. Eligible, UnknownPool, InsufficientGPUMemory
    message: str


@dataclass(frozen=True)
class PoolAssignment:
    pool: str
    replicas: int
    gpus_per_replica: int
    # Set by capacity policies that run reserved and borrowed replicas at different priorities.
    priority_class: str | None = None

    @property
    def gpus(self) -> int:
        return self.replicas * self.gpus_per_replica


@dataclass(frozen=True)
class Placement:
    wanted: int
    assignments: tuple[PoolAssignment, ...]
    verdicts: tuple[PoolVerdict, ...] = field(default=())
    # Set by the reservation-aware placement: why not every replica is placed, with numbers.
    constraint_reason: str = ""
    explanation: str = ""

    @property
    def placed(self) -> int:
        return sum(a.replicas for a in self.assignments)

    @property
    def unplaced(self) -> int:
        return self.wanted - self.placed

    @property
    def pools(self) -> tuple[str, ...]:
        return tuple(a.pool for a in self.assignments)

    def replicas_on(self, pool: str) -> int:
        return sum(a.replicas for a in self.assignments if a.pool == pool)

    @property
    def eligible(self) -> bool:
        """Whether any listed pool could ever take a replica (the spec is satisfiable)."""
        return any(v.eligible for v in self.verdicts)

    def explain(self) -> str:
        """One sentence with the numbers, for conditions and events."""
        if self.explanation:
            return self.explanation
        per_pool = "; ".join(f"{v.pool}: {v.message}" for v in self.verdicts)
        return (f"wanted {self.wanted} replica(s), placed {self.placed}"
                + (f", {self.unplaced} fit nowhere" if self.unplaced else "")
                + (f" ({per_pool})" if per_pool else ""))


def _verdict(name: str, view: PoolView | None, spec: ModelDeploymentSpec) -> PoolVerdict:
    gpr = spec.resources.gpus_per_replica
    need_mem = spec.resources.gpu_memory_gib
    if view is None:
        return PoolVerdict(name, False, 0, 0, "UnknownPool",
                           f"no GPUPool named {name!r}; fix spec.placement.pools")
    free = view.free_gpus
    if view.spec.gpu.memory_gib < need_mem:
        return PoolVerdict(name, False, 0, free, "InsufficientGPUMemory", (
            f"its GPUs have {view.spec.gpu.memory_gib:g} GiB, spec.resources.gpuMemoryGiB "
            f"needs {need_mem:g}"))
    largest = view.largest_node_gpus()
    if largest == 0:
        return PoolVerdict(name, False, 0, 0, "NoReadyNodes", "no Ready, schedulable node")
    if gpr > largest:
        return PoolVerdict(name, False, 0, free, "ReplicaDoesNotFitNode", (
            f"spec.resources.gpusPerReplica={gpr} but its largest node has {largest} GPUs"))
    fits = view.replicas_that_fit(gpr)
    return PoolVerdict(name, True, fits, free, "Eligible",
                       f"{free} free GPU(s), room for {fits} replica(s) of {gpr} GPU(s)")


def place(spec: ModelDeploymentSpec, replicas: int, pools: Mapping[str, PoolView]) -> Placement:
    """Assign `replicas` replicas to the pools of `spec.placement.pools`, in order."""
    if replicas < 0:
        raise ValueError(f"replicas must be >= 0, got {replicas}")
    gpr = spec.resources.gpus_per_replica
    verdicts = tuple(_verdict(name, pools.get(name), spec) for name in spec.placement.pools)
    remaining = replicas
    assignments: list[PoolAssignment] = []
    for verdict in verdicts:
        if not verdict.eligible or remaining == 0:
            continue
        take = min(remaining, verdict.fits)
        if take > 0:
            assignments.append(PoolAssignment(verdict.pool, take, gpr))
            remaining -= take
    if not assignments:
        # Keep one (empty) Deployment on the most preferred eligible pool, so scaling from zero
        # or waiting for room does not create and delete objects.
        first = next((v.pool for v in verdicts if v.eligible), None)
        if first is not None:
            assignments.append(PoolAssignment(first, 0, gpr))
    return Placement(wanted=replicas, assignments=tuple(assignments), verdicts=verdicts)


def pool_views(pools: Sequence[PoolView]) -> dict[str, PoolView]:
    return {p.name: p for p in pools}


def place_reserved(spec: ModelDeploymentSpec, replicas: int, pools: Mapping[str, PoolView],
                   states: Mapping[str, rv.PoolState], entitlement: rv.Entitlement) -> Placement:
    """Reservation-aware placement (`reservations.place`: reserved headroom first, then burst,
    then the next pool), as assignments with priority classes. On the reservation's pool the
    reserved and the burst replicas are separate assignments (two Deployments, so the scheduler
    can preempt the one and not the other); elsewhere every replica is burst."""
    gpr = spec.resources.gpus_per_replica
    request = rv.PlacementRequest(replicas, gpr, spec.resources.gpu_memory_gib,
                                  tuple(spec.placement.pools))
    decided = rv.place(request, states, entitlement)
    verdicts = tuple(_verdict(name, pools.get(name), spec) for name in spec.placement.pools)
    assignments: list[PoolAssignment] = []
    for a in decided.assignments:
        if a.pool == entitlement.pool:
            # The reservation's pool keeps its reserved Deployment, even at zero.
            assignments.append(PoolAssignment(a.pool, a.reserved, gpr, RESERVED_CLASS))
            if a.burst:
                assignments.append(PoolAssignment(a.pool, a.burst, gpr, BURST_CLASS))
        elif a.replicas:
            assignments.append(PoolAssignment(a.pool, a.replicas, gpr, BURST_CLASS))
    if not assignments:
        # As in `place`: one empty Deployment on the most preferred eligible pool.
        first = next((a.pool for a in decided.assignments), None)
        if first is not None:
            assignments.append(PoolAssignment(first, 0, gpr, BURST_CLASS))
    return Placement(wanted=replicas, assignments=tuple(assignments), verdicts=verdicts,
                     constraint_reason=decided.reason, explanation=decided.message)
