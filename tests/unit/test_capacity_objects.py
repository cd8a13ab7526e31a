"""The enforcement objects: quota, priority classes, tenant RBAC (pure renderers)."""

from __future__ import annotations

from dedicap.decide import capacity_objects as co


def test_quota_caps_gpu_requests_of_the_namespace() -> None:
    q = co.resource_quota("acme", 24, ["b-res", "a-res"])
    assert q["kind"] == "ResourceQuota" and q["metadata"]["namespace"] == "acme"
    assert q["metadata"]["name"] == "dedicap-gpu"
    assert q["spec"] == {"hard": {"requests.nvidia.com/gpu": "24"}}
    assert q["metadata"]["annotations"]["dedicap.dev/reservations"] == "a-res,b-res"
    assert q["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "dedicap"


def test_reserved_preempts_burst_and_burst_preempts_nobody() -> None:
    classes = {c["metadata"]["name"]: c for c in co.priority_classes()}
    reserved, burst = classes["dedicap-reserved"], classes["dedicap-burst"]
    assert reserved["value"] > burst["value"] > 0
    assert reserved["preemptionPolicy"] == "PreemptLowerPriority"
    assert burst["preemptionPolicy"] == "Never"
    assert not reserved["globalDefault"] and not burst["globalDefault"]
    assert reserved["value"] == co.RESERVED_PRIORITY < 1_000_000_000  # user classes' ceiling
    assert co.priority_class_for("reserved") == "dedicap-reserved"
    assert co.priority_class_for("burst") == "dedicap-burst"


def test_tenant_objects_are_a_quota_and_a_binding_of_the_view_role_per_namespace() -> None:
    objs = co.tenant_objects({"acme": (24, ["acme-h100"]), "beta": (8, ["beta"])})
    kinds = [(o["kind"], o["metadata"].get("namespace")) for o in objs]
    assert kinds == [("ResourceQuota", "acme"), ("RoleBinding", "acme"),
                     ("ResourceQuota", "beta"), ("RoleBinding", "beta")]
    binding = objs[1]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io",
                                  "kind": "ClusterRole", "name": "dedicap-tenant-view"}
    assert [s["name"] for s in binding["subjects"]] == ["system:serviceaccounts:acme"]


def test_tenant_roles_aggregate_into_the_built_in_roles_and_never_touch_status() -> None:
    roles = {r["metadata"]["name"]: r for r in co.tenant_cluster_roles()}
    view, edit = roles["dedicap-tenant-view"], roles["dedicap-tenant-edit"]
    aggregate = "rbac.authorization.k8s.io/aggregate-to-"
    assert {k for k in view["metadata"]["labels"] if k.startswith(aggregate)} == {
        f"{aggregate}{r}" for r in ("view", "edit", "admin")}
    assert {k for k in edit["metadata"]["labels"] if k.startswith(aggregate)} == {
        f"{aggregate}{r}" for r in ("edit", "admin")}
    for rule in view["rules"]:
        assert set(rule["verbs"]) <= {"get", "list", "watch"}
    for role in roles.values():
        for rule in role["rules"]:
            assert "*" not in rule["verbs"] and "*" not in rule["resources"]
            assert not {"capacityreservations", "gpupools", "modeldeployments/status"} & set(
                rule["resources"])
