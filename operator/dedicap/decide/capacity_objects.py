"""The Kubernetes objects that enforce dedicated capacity without the operator (pure renderers).

Kubernetes itself holds the line, so it holds while the operator is down:

- a **ResourceQuota** per tenant namespace caps `requests.nvidia.com/gpu` at the tenant's
  reservations plus their burst limits (the API server refuses a pod over it);
- two **PriorityClasses**: `dedicap-reserved` for replicas inside a reservation and
  `dedicap-burst` for borrowed capacity. The real kube-scheduler then preempts burst replicas
  when a tenant scales into GPUs it reserved. Reserved replicas keep the default
  `preemptionPolicy: PreemptLowerPriority` (that is how they take back their GPUs); burst replicas
  get `preemptionPolicy: Never`: borrowing waits for free GPUs and never evicts anyone, not even
  pods below it. Burst sits above the default priority (0) so that ordinary pods that tolerate
  the GPU taint do not evict borrowed replicas either: only a reservation takes GPUs back;
- **RBAC**: tenants read reservations, pools and their quota, and change none of them.
  Reservations and pools are cluster-scoped, so reading them needs a ClusterRoleBinding; the
  built-in `admin`/`edit` roles already grant tenants read-only access to ResourceQuotas, which
  the namespaced Role repeats for service accounts that hold no built-in role.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from dedicap.api.models import GROUP

FIELD_MANAGER = "dedicap"
MANAGED_BY = {"app.kubernetes.io/managed-by": "dedicap"}
COMPONENT_LABEL = "app.kubernetes.io/component"

GPU_RESOURCE = "nvidia.com/gpu"
QUOTA_NAME = "dedicap-gpu"
QUOTA_RESOURCE = f"requests.{GPU_RESOURCE}"  # quotas cover extended resources as requests only

RESERVED_CLASS = "dedicap-reserved"
BURST_CLASS = "dedicap-burst"
# Far below the system classes (2e9), far above the default 0 and anything a team picks casually.
RESERVED_PRIORITY = 1_000_000
BURST_PRIORITY = 1_000

TENANT_CLUSTER_ROLE = "dedicap:tenant"
TENANT_CLUSTER_BINDING = "dedicap:tenants"
TENANT_ROLE = "dedicap-tenant"

ANNOTATION_RESERVATIONS = f"{GROUP}/reservations"


def priority_class_for(capacity: str) -> str:
    """The PriorityClass of a replica running on `capacity` ("reserved" or "burst")."""
    return RESERVED_CLASS if capacity == "reserved" else BURST_CLASS


def priority_classes() -> list[dict[str, Any]]:
    return [
        {
            "apiVersion": "scheduling.k8s.io/v1",
            "kind": "PriorityClass",
            "metadata": {"name": RESERVED_CLASS, "labels": dict(MANAGED_BY)},
            "value": RESERVED_PRIORITY,
            "globalDefault": False,
            "preemptionPolicy": "PreemptLowerPriority",
            "description": "dedicap replicas within their tenant's CapacityReservation: they "
                           "preempt burst replicas to take back reserved GPUs.",
        },
        {
            "apiVersion": "scheduling.k8s.io/v1",
            "kind": "PriorityClass",
            "metadata": {"name": BURST_CLASS, "labels": dict(MANAGED_BY)},
            "value": BURST_PRIORITY,
            "globalDefault": False,
            "preemptionPolicy": "Never",
            "description": "dedicap replicas on borrowed (unreserved or idle) GPUs: they never "
                           "preempt and are preempted first.",
        },
    ]


def resource_quota(namespace: str, gpus: int, reservations: Iterable[str]) -> dict[str, Any]:
    """The tenant namespace's GPU quota: admitted reservations in effect plus their burst."""
    return {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": {
            "name": QUOTA_NAME,
            "namespace": namespace,
            "labels": {**MANAGED_BY, COMPONENT_LABEL: "capacity"},
            "annotations": {ANNOTATION_RESERVATIONS: ",".join(sorted(reservations))},
        },
        "spec": {"hard": {QUOTA_RESOURCE: str(gpus)}},
    }


def tenant_cluster_role() -> dict[str, Any]:
    """Read-only access to the cluster-scoped capacity objects."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": TENANT_CLUSTER_ROLE, "labels": dict(MANAGED_BY)},
        "rules": [{"apiGroups": [GROUP], "resources": ["capacityreservations", "gpupools"],
                   "verbs": ["get", "list", "watch"]}],
    }


def tenant_cluster_binding(namespaces: Iterable[str],
                           extra_groups: Iterable[str] = ()) -> dict[str, Any]:
    """Binds the read-only ClusterRole to every tenant namespace's service accounts and to the
    groups the platform names (its tenants' people)."""
    groups = sorted({f"system:serviceaccounts:{ns}" for ns in namespaces} | set(extra_groups))
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": TENANT_CLUSTER_BINDING, "labels": dict(MANAGED_BY)},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                    "name": TENANT_CLUSTER_ROLE},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": g}
                     for g in groups],
    }


def tenant_role(namespace: str) -> dict[str, Any]:
    """Read-only access to the namespace's quota (and nothing to change it)."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": TENANT_ROLE, "namespace": namespace,
                     "labels": {**MANAGED_BY, COMPONENT_LABEL: "capacity"}},
        "rules": [{"apiGroups": [""], "resources": ["resourcequotas"],
                   "verbs": ["get", "list", "watch"]}],
    }


def tenant_role_binding(namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": TENANT_ROLE, "namespace": namespace,
                     "labels": {**MANAGED_BY, COMPONENT_LABEL: "capacity"}},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": TENANT_ROLE},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group",
                      "name": f"system:serviceaccounts:{namespace}"}],
    }


def tenant_objects(quotas: Mapping[str, tuple[int, Iterable[str]]],
                   extra_groups: Iterable[str] = ()) -> list[dict[str, Any]]:
    """Every capacity object for the tenant namespaces `{namespace: (gpus, reservations)}`, in a
    stable order: quota, Role and RoleBinding per namespace, then the cluster-wide read access."""
    out: list[dict[str, Any]] = []
    for ns in sorted(quotas):
        gpus, names = quotas[ns]
        out += [resource_quota(ns, gpus, names), tenant_role(ns), tenant_role_binding(ns)]
    out += [tenant_cluster_role(), tenant_cluster_binding(quotas, extra_groups)]
    return out
