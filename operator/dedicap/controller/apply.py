"""Apply: make the children in the cluster match the rendered ones.

Every desired child is server-side-applied with the one field manager `dedicap` (forcing
ownership of its fields), so re-applying an unchanged child is a no-op and a restart at any
point converges. Children that exist but are no longer desired are deleted, except that a
Deployment on a pool being left stays until the replicas on the new pools are ready
(make-before-break: moving pools never drops the model to zero replicas).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dedicap.controller.kube import Kube
from dedicap.decide.render import LABEL_MANAGED_BY, LABEL_MD, MANAGER, ChildKey

CHILD_KINDS = ("Deployment", "Service", "PodDisruptionBudget", "NetworkPolicy", "ServiceMonitor")


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

    def deployments(self) -> list[dict[str, Any]]:
        return [o for k, o in self.objects.items() if k.kind == "Deployment"]


def owned_by(obj: Mapping[str, Any], uid: str) -> bool:
    return any(ref.get("uid") == uid and ref.get("controller")
               for ref in obj.get("metadata", {}).get("ownerReferences") or [])


def list_children(kube: Kube, namespace: str, md_name: str, uid: str,
                  kinds: Iterable[str]) -> dict[ChildKey, dict[str, Any]]:
    """The children that exist: labelled for the ModelDeployment and owned by this incarnation
    of it (a same-named predecessor's leftovers belong to the garbage collector)."""
    selector = f"{LABEL_MD}={md_name},{LABEL_MANAGED_BY}={MANAGER}"
    found: dict[ChildKey, dict[str, Any]] = {}
    for kind in kinds:
        for obj in kube.iter(kind, namespace, labels=selector):
            if owned_by(obj, uid):
                found[ChildKey.of(obj)] = obj
    return found


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


def _ready(deployment: Mapping[str, Any]) -> bool:
    spec, status = deployment.get("spec", {}), deployment.get("status") or {}
    want = int(spec.get("replicas", 1))
    return (int(status.get("readyReplicas", 0)) >= want
            and int(status.get("updatedReplicas", 0)) >= want)


def apply_children(kube: Kube, desired: Sequence[Mapping[str, Any]],
                   existing: Mapping[ChildKey, Mapping[str, Any]]) -> ApplyResult:
    result = ApplyResult()
    for obj in desired:
        key = ChildKey.of(obj)
        applied = kube.apply(obj)
        result.objects[key] = applied
        action = _describe_change(key, existing.get(key), applied)
        if action is not None:
            result.actions.append(action)

    desired_keys = {ChildKey.of(o) for o in desired}
    new_deployments = [o for k, o in result.objects.items() if k.kind == "Deployment"]
    replacements_ready = all(_ready(d) for d in new_deployments)
    for key, obj in sorted(existing.items(), key=lambda kv: (kv[0].kind, kv[0].name)):
        if key in desired_keys:
            continue
        if key.kind == "Deployment" and not replacements_ready and int(
                (obj.get("status") or {}).get("replicas", 0)) > 0:
            result.waiting_to_delete.append(key.name)
            result.objects[key] = dict(obj)
            continue
        if kube.delete(key.kind, key.name, key.namespace, uid=obj["metadata"].get("uid")):
            result.actions.append(Action("Normal", "Deleted",
                                         f"deleted {key.kind} {key.name}: no longer desired"))
    return result
