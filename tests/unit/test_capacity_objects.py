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


def test_tenants_get_read_only_verbs_on_capacity_objects() -> None:
    objs = co.tenant_objects({"acme": (24, ["acme-h100"]), "beta": (8, ["beta"])},
                             extra_groups=["acme-people"])
    kinds = [(o["kind"], o["metadata"].get("namespace")) for o in objs]
    assert kinds == [("ResourceQuota", "acme"), ("Role", "acme"), ("RoleBinding", "acme"),
                     ("ResourceQuota", "beta"), ("Role", "beta"), ("RoleBinding", "beta"),
                     ("ClusterRole", None), ("ClusterRoleBinding", None)]
    for o in objs:
        for rule in o.get("rules", []):
            assert set(rule["verbs"]) <= {"get", "list", "watch"}
    binding = objs[-1]
    assert binding["roleRef"]["name"] == "dedicap:tenant"
    assert [s["name"] for s in binding["subjects"]] == [
        "acme-people", "system:serviceaccounts:acme", "system:serviceaccounts:beta"]
    cluster_role = objs[-2]
    assert cluster_role["rules"][0]["resources"] == ["capacityreservations", "gpupools"]
