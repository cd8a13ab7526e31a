"""Status, in one room: what every writer of the operator puts into the status of the objects it
owns, computed from observations by pure functions, and the one rule for turning that into a
write.

- `replicas.py` (ModelDeployment, the reconcile's): replicas, placement, cost; Ready,
  Progressing, Degraded, CapacityConstrained;
- `autoscaling.py` (ModelDeployment, the autoscaler's): observed, lastScale, autoscaler;
  MetricsAvailable, SLOMet, and the autoscaler's own Degraded / CapacityConstrained reasons;
- `capacity.py` (GPUPool, CapacityReservation): GPU figures, admission; Ready, Admitted, Active.

`update()` compares what a writer computed with the status the view holds and yields the merge
patch of what changed (nothing: no write) and the condition transitions to post as Events.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from dedicap.api import conditions as c


@dataclass(frozen=True)
class Update:
    patch: dict[str, Any]  # merge patch of `status`; empty: nothing changed
    transitions: tuple[c.Cond, ...]


def update(previous: Mapping[str, Any] | None, fields: Mapping[str, Any],
           conditions: Sequence[c.Cond], generation: int, now: datetime) -> Update:
    """The status patch that brings `previous` to `fields` and `conditions` (others' fields and
    condition types are left alone). A nested object is written whole when any of its keys
    changed, so a merge patch never leaves half of an old record behind."""
    previous = previous or {}
    old_conditions = list(previous.get("conditions") or [])
    merged = c.merge(old_conditions, conditions, generation, now)
    patch: dict[str, Any] = {}
    for key, value in fields.items():
        old = previous.get(key)
        if isinstance(value, dict) and isinstance(old, dict):
            if any(old.get(k) != v for k, v in value.items()):
                patch[key] = value
        elif old != value:
            patch[key] = value
    if merged != old_conditions:
        patch["conditions"] = merged
    return Update(patch, tuple(c.transitions(old_conditions, conditions)))


def event_type(cond: c.Cond) -> str:
    """Warning for a transition into a bad state, Normal otherwise."""
    if cond.type in (c.READY, c.METRICS_AVAILABLE, c.SLO_MET):
        return "Warning" if cond.status != "True" else "Normal"
    if cond.type in (c.DEGRADED, c.CAPACITY_CONSTRAINED):
        return "Warning" if cond.is_true else "Normal"
    if cond.type in ("Admitted", "Active"):
        return "Warning" if cond.status == "False" and cond.reason not in (
            "NotYetActive", "Expired") else "Normal"
    return "Warning" if cond.reason == "ProgressDeadlineExceeded" else "Normal"
