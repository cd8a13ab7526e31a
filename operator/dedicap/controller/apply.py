"""Apply: make the children in the cluster match the rendered ones, writing only what differs.

A desired child is server-side-applied with the one field manager `dedicap` (forcing ownership
of its fields) only when the cached child does not already hold every field the operator sets
(`holds`): an unchanged ModelDeployment costs no API request at all. Fields others added (the
API server's defaults, another controller's annotations) do not count as a difference, as they
would not for server-side apply either.

Children that exist but are no longer desired are deleted, except that Deployments on pools
being left stay until the desired Deployments are ready *and* hold every placed replica
(make-before-break): moving to a pool that is full, or not ready yet, never drops the model to
zero replicas.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dedicap.controller.kube import Kube
from dedicap.decide.render import ChildKey


@dataclass(frozen=True)
class Action:
    """Something the operator did to a child, for an Event."""

    type: str  # Normal or Warning
    reason: str
    message: str


@dataclass
class ApplyResult:
    objects: dict[ChildKey, dict[str, Any]] = field(default_factory=dict)
    actions: list[Action] = field(default_factory=list)
    waiting_to_delete: list[str] = field(default_factory=list)
    writes: int = 0  # API writes made

    def deployments(self) -> list[dict[str, Any]]:
        return [o for k, o in self.objects.items() if k.kind == "Deployment"]


def owned_by(obj: Mapping[str, Any], uid: str) -> bool:
    return any(ref.get("uid") == uid and ref.get("controller")
               for ref in (obj.get("metadata") or {}).get("ownerReferences") or [])


def holds(desired: Any, actual: Any) -> bool:
    """Whether `actual` already has every field of `desired` with the same value (lists: the
    same length, item by item). What server-side apply would change is then nothing."""
    if isinstance(desired, Mapping):
        return isinstance(actual, Mapping) and all(
            k in actual and holds(v, actual[k]) for k, v in desired.items())
    if isinstance(desired, list):
        return (isinstance(actual, list) and len(actual) == len(desired)
                and all(holds(d, a) for d, a in zip(desired, actual, strict=True)))
    return bool(desired == actual)


def _describe_change(key: ChildKey, before: Mapping[str, Any] | None,
                     after: Mapping[str, Any]) -> Action | None:
    if before is None:
        return Action("Normal", "Created", f"created {key.kind} {key.name}")
    if before["metadata"].get("resourceVersion") == after["metadata"].get("resourceVersion"):
        return None
    if key.kind == "Deployment":
        old, new = before.get("spec", {}), after.get("spec", {})
        if old.get("template") != new.get("template"):
            return Action("Normal", "RollingUpdate",
                          f"updated the pod template of Deployment {key.name}: rolling replicas")
        if old.get("replicas") != new.get("replicas"):
            return Action("Normal", "Scaled", f"scaled Deployment {key.name} from "
                          f"{old.get('replicas')} to {new.get('replicas')} replicas")
        if before["metadata"].get("generation") == after["metadata"].get("generation"):
            return None  # only status or metadata moved
    elif before.get("spec") == after.get("spec"):
        return None
    return Action("Normal", "Updated", f"updated {key.kind} {key.name}")


def merge_created(actions: Sequence[Action]) -> list[Action]:
    """One Event for the children created in one reconcile ("created Deployment a-h100,
    Service a, ..."), not one each: a new ModelDeployment's explanation in one line, and a
    fleet of new ones a quarter of the Events to post."""
    created = [a for a in actions if a.reason == "Created"]
    if len(created) < 2:
        return list(actions)
    merged = Action("Normal", "Created", "created " + ", ".join(
        a.message.removeprefix("created ") for a in created))
    return [merged, *(a for a in actions if a.reason != "Created")]


def _wanted(deployment: Mapping[str, Any]) -> int:
    return int((deployment.get("spec") or {}).get("replicas", 1))


def _ready(deployment: Mapping[str, Any]) -> bool:
    want, status = _wanted(deployment), deployment.get("status") or {}
    return (int(status.get("readyReplicas", 0)) >= want
            and int(status.get("updatedReplicas", 0)) >= want)


def apply_children(kube: Kube, desired: Sequence[Mapping[str, Any]],
                   existing: Mapping[ChildKey, Mapping[str, Any]], wanted_replicas: int,
                   written: Callable[[str, Mapping[str, Any]], None] | None = None
                   ) -> ApplyResult:
    """Bring the children to `desired`. `wanted_replicas` is how many replicas the
    ModelDeployment wants in all: Deployments being left go only once the desired ones hold
    that many ready replicas. `written(kind, object)` sees every object the API server returned
    from a write (the view's write-through)."""
    result = ApplyResult()
    for obj in desired:
        key = ChildKey.of(obj)
        before = existing.get(key)
        if before is not None and holds(obj, before):
            result.objects[key] = dict(before)
            continue
        applied = kube.apply(obj)
        result.writes += 1
        if written is not None:
            written(key.kind, applied)
        result.objects[key] = applied
        action = _describe_change(key, before, applied)
        if action is not None:
            result.actions.append(action)

    desired_keys = {ChildKey.of(o) for o in desired}
    new_deployments = [o for k, o in result.objects.items() if k.kind == "Deployment"]
    moved = (all(_ready(d) for d in new_deployments)
             and sum(_wanted(d) for d in new_deployments) >= wanted_replicas)
    for key, obj in sorted(existing.items(), key=lambda kv: (kv[0].kind, kv[0].name)):
        if key in desired_keys:
            continue
        if key.kind == "Deployment" and not moved and int(
                (obj.get("status") or {}).get("replicas", 0)) > 0:
            result.waiting_to_delete.append(key.name)
            result.objects[key] = dict(obj)
            continue
        if kube.delete(key.kind, key.name, key.namespace, uid=obj["metadata"].get("uid")):
            result.writes += 1
            result.actions.append(Action("Normal", "Deleted",
                                         f"deleted {key.kind} {key.name}: no longer desired"))
    return result
