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
- **RBAC**: a tenant's people reach ModelDeployments through the built-in `view`/`edit`/`admin`
  roles of their namespace, which the ClusterRoles `dedicap-tenant-view`/`-edit` aggregate into;
  the tenant namespace's service accounts get `dedicap-tenant-view` through a namespaced
  RoleBinding the operator writes. Reservations and pools are cluster-scoped, so no namespaced
  grant can expose them, and none exposes another tenant's: a tenant reads its own figures from
  its quota and its ModelDeployments' status.

The PriorityClasses and the tenant ClusterRoles are static: the Helm chart ships them (`dedicap
crds` renders its templates from these functions), and the operator only binds
`dedicap-tenant-view`, which is all its `bind` permission names, so it cannot hand out anything
else.
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

TENANT_VIEW_ROLE = "dedicap-tenant-view"
TENANT_EDIT_ROLE = "dedicap-tenant-edit"
# The RoleBinding in each tenant namespace: its service accounts may read what the namespace's
# viewers may.
TENANT_BINDING = TENANT_VIEW_ROLE
AGGREGATE = "rbac.authorization.k8s.io/aggregate-to-"

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


def tenant_cluster_roles() -> list[dict[str, Any]]:
    """What a tenant's viewers and editors may do with dedicap in their namespace, aggregated
    into the built-in roles (as cert-manager does): `view` reads ModelDeployments and the GPU
    quota; `edit` and `admin` also create, change, scale and delete ModelDeployments. No verb
    on status (only the operator writes it), and nothing cluster-scoped."""
    read = ["get", "list", "watch"]
    return [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": TENANT_VIEW_ROLE, "labels": {
                **MANAGED_BY, **{f"{AGGREGATE}{r}": "true" for r in ("view", "edit", "admin")}}},
            "rules": [{"apiGroups": [GROUP], "resources": ["modeldeployments"], "verbs": read},
                      {"apiGroups": [""], "resources": ["resourcequotas"], "verbs": read}],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": TENANT_EDIT_ROLE, "labels": {
                **MANAGED_BY, **{f"{AGGREGATE}{r}": "true" for r in ("edit", "admin")}}},
            "rules": [{"apiGroups": [GROUP], "resources": ["modeldeployments"],
                       "verbs": ["create", "update", "patch", "delete", "deletecollection"]},
                      {"apiGroups": [GROUP], "resources": ["modeldeployments/scale"],
                       "verbs": ["get", "update", "patch"]}],
        },
    ]


def tenant_role_binding(namespace: str) -> dict[str, Any]:
    """The namespace's service accounts read what its viewers read (their CI, dashboards)."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": TENANT_BINDING, "namespace": namespace,
                     "labels": {**MANAGED_BY, COMPONENT_LABEL: "capacity"}},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                    "name": TENANT_VIEW_ROLE},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group",
                      "name": f"system:serviceaccounts:{namespace}"}],
    }


def tenant_objects(quotas: Mapping[str, tuple[int, Iterable[str]]]) -> list[dict[str, Any]]:
    """Every capacity object for the tenant namespaces `{namespace: (gpus, reservations)}`, in a
    stable order: the quota and the RoleBinding of each namespace."""
    out: list[dict[str, Any]] = []
    for ns in sorted(quotas):
        gpus, names = quotas[ns]
        out += [resource_quota(ns, gpus, names), tenant_role_binding(ns)]
    return out
