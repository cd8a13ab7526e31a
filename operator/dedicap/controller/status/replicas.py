"""A ModelDeployment's replica status from what exists: its Deployments and pods, the placement
and any problem with the spec. Pure, so every condition is unit-tested.

The reconcile owns these fields and the conditions Ready, Progressing, Degraded and
CapacityConstrained; the autoscaler's (`observed`, `lastScale`, `autoscaler`, MetricsAvailable,
SLOMet) are left untouched by its patch. `cost` is the accountant's (controller/accounting.py),
merged into the same patch by the caller.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dedicap.api import conditions as c
from dedicap.api.models import GPUPoolSpec, ModelDeployment
from dedicap.decide.cluster import PodInfo, pod_gpus
from dedicap.decide.placement import Placement
from dedicap.decide.render import LABEL_POOL, selector_string


@dataclass(frozen=True)
class Problem:
    """Why the operator could not act on the spec: what to change."""

    reason: str
    message: str


@dataclass(frozen=True)
class DeploymentView:
    name: str
    pool: str
    spec_replicas: int
    replicas: int
    ready: int
    updated: int
    available: int
    gpus_per_replica: int
    complete: bool
    deadline_exceeded: bool

    @staticmethod
    def of(raw: Mapping[str, Any]) -> DeploymentView:
        meta = raw.get("metadata") or {}
        spec = raw.get("spec") or {}
        st = raw.get("status") or {}
        want = int(spec.get("replicas", 1))
        replicas = int(st.get("replicas", 0))
        updated = int(st.get("updatedReplicas", 0))
        available = int(st.get("availableReplicas", 0))
        observed = int(st.get("observedGeneration", 0)) >= int(meta.get("generation", 0))
        deadline = any(cd.get("type") == "Progressing" and cd.get("status") == "False"
                       and cd.get("reason") == "ProgressDeadlineExceeded"
                       for cd in st.get("conditions") or [])
        pod_spec = ((spec.get("template") or {}).get("spec")) or {}
        return DeploymentView(
            name=meta.get("name", ""),
            pool=(meta.get("labels") or {}).get(LABEL_POOL, ""),
            spec_replicas=want,
            replicas=replicas,
            ready=int(st.get("readyReplicas", 0)),
            updated=updated,
            available=available,
            gpus_per_replica=pod_gpus(pod_spec),
            # What `kubectl rollout status` waits for.
            complete=observed and updated == want and replicas == want and available == want,
            deadline_exceeded=deadline,
        )


@dataclass(frozen=True)
class PodProblems:
    unschedulable: tuple[str, ...]  # "pod: the scheduler's message"
    stuck: tuple[str, ...]  # "pod: reason: message"

    @staticmethod
    def of(pods: Sequence[PodInfo]) -> PodProblems:
        live = sorted((p for p in pods if not p.terminating), key=lambda p: p.name)
        return PodProblems(
            tuple(f"{p.name}: {p.unschedulable}".strip() for p in live if p.unschedulable),
            tuple(s for p in live for s in p.stuck))


@dataclass(frozen=True)
class StatusReport:
    """Owned status fields (wire names) and the operator's conditions."""

    fields: dict[str, Any]
    conditions: list[c.Cond]


def _limit(items: Sequence[str], n: int = 3) -> str:
    more = f" (and {len(items) - n} more)" if len(items) > n else ""
    return "; ".join(items[:n]) + more


def compute(md: ModelDeployment, placement: Placement | None, problem: Problem | None,
            deployments: Sequence[Mapping[str, Any]], pods: Sequence[PodInfo],
            pools: Mapping[str, GPUPoolSpec], waiting_to_delete: Sequence[str] = ()
            ) -> StatusReport:
    views = sorted((DeploymentView.of(d) for d in deployments), key=lambda v: v.name)
    placed_pools = {a.pool for a in placement.assignments} if placement else set()
    current = [v for v in views if v.pool in placed_pools]
    wanted = placement.wanted if placement else md.spec.desired_replicas()
    replicas = sum(v.replicas for v in views)
    ready = sum(v.ready for v in views)
    updated = sum(v.updated for v in current)
    pod_problems = PodProblems.of(pods)

    # One entry per pool: a pool may hold two Deployments (reserved and burst replicas).
    by_pool: dict[str, dict[str, Any]] = {}
    for v in views:
        entry = by_pool.setdefault(v.pool, {
            "pool": v.pool,
            "replicas": placement.replicas_on(v.pool) if placement else 0,
            "currentReplicas": 0, "readyReplicas": 0, "gpus": 0})
        if placement is None:
            entry["replicas"] += v.spec_replicas
        entry["currentReplicas"] += v.replicas
        entry["readyReplicas"] += v.ready
        entry["gpus"] += v.replicas * v.gpus_per_replica
    placement_status = list(by_pool.values())
    gpus = sum(v.replicas * v.gpus_per_replica for v in views)
    prices = {name: spec.price_per_gpu_hour for name, spec in pools.items()}
    hourly = sum(v.replicas * v.gpus_per_replica * prices.get(v.pool, 0.0) for v in views)
    currencies = {pools[v.pool].currency for v in views if v.pool in pools}
    in_use = list(placement.pools_in_use) if placement else []
    fields: dict[str, Any] = {
        "observedGeneration": md.generation,
        "replicas": replicas,
        "readyReplicas": ready,
        "updatedReplicas": updated,
        "desiredReplicas": wanted,
        "selector": selector_string(md.name),
        "pools": ",".join(in_use or sorted({v.pool for v in views if v.replicas})),
        "placement": placement_status,
        "cost": {"gpus": gpus, "hourlyCost": round(hourly, 6),
                 **({"currency": currencies.pop()} if len(currencies) == 1 else {})},
    }

    conds: list[c.Cond] = []
    deadline = [v.name for v in views if v.deadline_exceeded]
    rolling = [v.name for v in current if not v.complete]
    unplaced = placement.unplaced if placement else 0

    # Ready: every wanted replica is placed and ready.
    if problem is not None:
        conds.append(c.Cond(c.READY, "False", problem.reason, problem.message))
    elif unplaced > 0:
        conds.append(c.Cond(c.READY, "False", "InsufficientCapacity",
                            f"{ready}/{wanted} replicas ready; {placement.explain()}"
                            if placement else ""))
    elif wanted == 0 and replicas == 0:
        conds.append(c.Cond(c.READY, "True", "ScaledToZero", "spec.replicas is 0"))
    elif ready >= wanted and not waiting_to_delete:
        where = ", ".join(f"{v.ready} on {v.pool}" for v in current if v.ready)
        conds.append(c.Cond(c.READY, "True", "ReplicasReady",
                            f"{ready}/{wanted} replicas ready ({where})"))
    else:
        conds.append(c.Cond(c.READY, "False", "ReplicasNotReady",
                            f"{ready}/{wanted} replicas ready"
                            + (f"; waiting for {_limit(list(waiting_to_delete))} to be replaced"
                               if waiting_to_delete else "")))

    # Progressing: the children are moving towards the spec.
    if problem is not None:
        conds.append(c.Cond(c.PROGRESSING, "False", problem.reason, problem.message))
    elif deadline:
        conds.append(c.Cond(c.PROGRESSING, "False", "ProgressDeadlineExceeded",
                            f"no progress within the deadline: {', '.join(deadline)}"))
    elif waiting_to_delete:
        conds.append(c.Cond(c.PROGRESSING, "True", "MovingPools", (
            f"replicas move to {', '.join(in_use) or 'other pools'}; "
            f"{', '.join(waiting_to_delete)} is deleted once they are ready")))
    elif rolling:
        conds.append(c.Cond(c.PROGRESSING, "True", "RollingOut",
                            f"{updated}/{wanted} replicas updated, {ready} ready "
                            f"({', '.join(rolling)})"))
    else:
        conds.append(c.Cond(c.PROGRESSING, "False", "RolloutComplete",
                            f"{updated}/{wanted} replicas run the current spec"))

    # Degraded: something needs a human.
    if problem is not None:
        conds.append(c.Cond(c.DEGRADED, "True", problem.reason, problem.message))
    elif pod_problems.stuck:
        conds.append(c.Cond(c.DEGRADED, "True", "ReplicasFailing", _limit(pod_problems.stuck)))
    elif deadline:
        conds.append(c.Cond(c.DEGRADED, "True", "ProgressDeadlineExceeded", (
            f"{', '.join(deadline)} made no progress: check the image, the model repository "
            "and spec.triton.startupTimeoutSeconds")))
    else:
        conds.append(c.Cond(c.DEGRADED, "False", "AsExpected", "no problem seen"))

    # CapacityConstrained: the pools cannot hold what is wanted.
    if placement is not None and unplaced > 0:
        conds.append(c.Cond(c.CAPACITY_CONSTRAINED, "True",
                            placement.reason or "InsufficientGPUs", (
            f"{placement.explain()}; free GPUs, add pools to spec.placement.pools or lower "
            "spec.replicas")))
    elif pod_problems.unschedulable:
        conds.append(c.Cond(c.CAPACITY_CONSTRAINED, "True", "Unschedulable",
                            _limit(pod_problems.unschedulable)))
    elif problem is not None and placement is not None and not placement.eligible:
        conds.append(c.Cond(c.CAPACITY_CONSTRAINED, "True", problem.reason, problem.message))
    else:
        conds.append(c.Cond(c.CAPACITY_CONSTRAINED, "False", "Placed",
                            f"{wanted} replica(s) placed" if wanted else "nothing to place"))
    return StatusReport(fields, conds)


def no_eligible_pool(placement: Placement) -> Problem:
    details = "; ".join(placement.describe_pools())
    reasons = {r.reason for r in placement.pools}
    reason = reasons.pop() if len(reasons) == 1 else "NoEligiblePool"
    return Problem(reason, f"no pool in spec.placement.pools can run a replica ({details})")
