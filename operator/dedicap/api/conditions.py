"""Conditions in the Kubernetes convention: one entry per type, lastTransitionTime moves only
when the status does, and every writer keeps the types it does not own."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

READY = "Ready"
PROGRESSING = "Progressing"
DEGRADED = "Degraded"
CAPACITY_CONSTRAINED = "CapacityConstrained"
METRICS_AVAILABLE = "MetricsAvailable"
SLO_MET = "SLOMet"

# Display order in `kubectl describe`; types not listed keep their relative order after these.
ORDER = (READY, PROGRESSING, DEGRADED, CAPACITY_CONSTRAINED, METRICS_AVAILABLE, SLO_MET)

Status = Literal["True", "False", "Unknown"]


@dataclass(frozen=True)
class Cond:
    type: str
    status: Status
    reason: str
    message: str

    @property
    def is_true(self) -> bool:
        return self.status == "True"


def timestamp(now: datetime) -> str:
    return now.strftime("%Y-%m-%dT%H:%M:%SZ")


def find(conditions: Iterable[Mapping[str, Any]], type_: str) -> Mapping[str, Any] | None:
    return next((c for c in conditions if c.get("type") == type_), None)


def merge(previous: Iterable[Mapping[str, Any]], updates: Iterable[Cond], generation: int,
          now: datetime) -> list[dict[str, Any]]:
    """The new condition list: `updates` replace their types, keeping lastTransitionTime when
    the status is unchanged; conditions of other types (other writers') are kept as they are."""
    result: dict[str, dict[str, Any]] = {c["type"]: dict(c) for c in previous if "type" in c}
    for cond in updates:
        old = result.get(cond.type)
        changed = old is None or old.get("status") != cond.status
        result[cond.type] = {
            "type": cond.type,
            "status": cond.status,
            "observedGeneration": generation,
            "lastTransitionTime": timestamp(now) if changed or old is None
            else old.get("lastTransitionTime", timestamp(now)),
            "reason": cond.reason,
            "message": cond.message,
        }
    rank = {t: i for i, t in enumerate(ORDER)}
    return sorted(result.values(), key=lambda c: rank.get(c["type"], len(ORDER)))


def transitions(previous: Iterable[Mapping[str, Any]], updates: Iterable[Cond]) -> list[Cond]:
    """The updates whose status differs from before (a new type counts unless it is the
    unremarkable False of a problem condition)."""
    before = {c.get("type"): c.get("status") for c in previous}
    out = []
    for cond in updates:
        if cond.type not in before:
            if cond.type in (DEGRADED, CAPACITY_CONSTRAINED, PROGRESSING) and not cond.is_true:
                continue
            out.append(cond)
        elif before[cond.type] != cond.status:
            out.append(cond)
    return out
