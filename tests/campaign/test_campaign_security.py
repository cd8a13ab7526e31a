"""Security on the real local stack: Pod Security admission, NetworkPolicies, tenant isolation.

- Tenant namespaces enforce Pod Security `restricted`: Triton replicas are admitted by the real
  PodSecurity plugin (and a privileged pod is not: the plugin is on), and so is the operator's
  pod as the Helm chart renders it (tests/integration/test_chart.py runs the chart's operator in
  a `restricted` namespace for real).
- NetworkPolicies: there is no CNI plugin here, so the policies the operator wrote are judged by
  dedicap_local.netpol, a faithful evaluator of networking.k8s.io/v1 semantics, over the real
  policies, the real Namespace labels and the real replica pods read from the API server: the
  tenant's own pods reach every port, an allowed namespace (by name or by label) the serving
  ports only, the monitoring namespace the metrics port only, anyone else nothing.
- Tenants, with the roles the chart ships (tenant ClusterRoles aggregated into view/edit/admin,
  the operator's RoleBinding for a namespace's service accounts): `kubectl auth can-i --as` and
  the same requests for real; a tenant reads nothing of another tenant's (ModelDeployments,
  Events, quotas), no reservation, and changes no GPUPool, CapacityReservation, ResourceQuota,
  PriorityClass, status or Namespace label; and nothing a tenant can read names another tenant.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest
import yaml

import faults
from dedicap_local import chart
from dedicap_local.netpol import External, Pod, allowed
from testkit import (
    OperatorProcess,
    install_api,
    kget,
    release_operator_state,
    small_md,
    tenant_namespace,
    wait_for,
)

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Tenants:
    tag: str
    a: str  # the tenant under test
    b: str  # another tenant
    caller: str  # allowed to call a's model by name
    labelled: str  # allowed by label
    outsider: str
    monitoring: str

    @property
    def all(self) -> tuple[str, ...]:
        return (self.a, self.b, self.caller, self.labelled, self.outsider, self.monitoring)


@pytest.fixture(scope="module")
def tenants(stack: Any) -> Iterator[Tenants]:
    install_api(stack)
    chart.install_cluster_objects(stack)
    tag = uuid.uuid4().hex[:6]
    t = Tenants(tag, f"dcp-csec-a-{tag}", f"dcp-csec-zzsecretb-{tag}", f"dcp-caller-{tag}",
                f"dcp-labelled-{tag}", f"dcp-outsider-{tag}", f"dcp-mon-{tag}")
    for ns in t.all:
        if ns in (t.a, t.b):
            tenant_namespace(stack, ns)
        else:
            stack.kubectl("create", "namespace", ns)
    stack.kubectl("label", "namespace", t.labelled, f"team=frontend-{tag}")
    # People: a's editor, viewer and admin (the built-in roles, which aggregate dedicap's).
    for role in ("edit", "view", "admin"):
        stack.kubectl("create", "rolebinding", f"{role}ers", "-n", t.a, f"--clusterrole={role}",
                      f"--user={role}-{tag}")
    stack.kubectl("create", "rolebinding", "editors", "-n", t.b, "--clusterrole=edit",
                  f"--user=b-edit-{tag}")
    # Reservations make the operator write the tenants' quotas and service-account bindings.
    for ns in (t.a, t.b):
        stack.kubectl("apply", "-f", "-", input=json.dumps({
            "apiVersion": "dedicap.dev/v1alpha1", "kind": "CapacityReservation",
            "metadata": {"name": ns}, "spec": {"namespaces": [ns], "pool": "h100", "gpus": 2}}))
    yield t
    for ns in (t.a, t.b):
        stack.kubectl("delete", "capacityreservation", ns, "--ignore-not-found", check=False)
    for ns in t.all:
        stack.kubectl("delete", "namespace", ns, "--wait=false", check=False)


@pytest.fixture(scope="module")
def operator(stack: Any, tenants: Tenants, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[OperatorProcess]:
    op = OperatorProcess(stack, tmp_path_factory.mktemp("security"), [
        "--namespace", "dcp-csec-*", "--peering-lifetime", "6", "--capacity-seconds", "3",
        "--monitoring-namespace", tenants.monitoring, "--verbose"],
        peering=f"dedicap-csec-{tenants.tag}")
    op.start()
    yield op
    op.stop()
    release_operator_state(stack, op.peering)


def apply_md(stack: Any, namespace: str, name: str, access: dict[str, Any]) -> None:
    stack.kubectl("apply", "-f", "-", input=small_md(namespace, name, replicas=1,
                                                      reservation=namespace, access=access))


def ready(stack: Any, namespace: str, name: str) -> bool:
    st = kget(stack, "md", name, "-n", namespace).get("status") or {}
    return st.get("readyReplicas") == 1 and any(
        c["type"] == "Ready" and c["status"] == "True" for c in st.get("conditions") or [])


@pytest.fixture(scope="module")
def deployed(stack: Any, tenants: Tenants, operator: OperatorProcess) -> Tenants:
    t = tenants
    apply_md(stack, t.a, "private", {})
    apply_md(stack, t.a, "shared", {"namespaces": [t.caller], "namespaceSelector": {
        "matchLabels": {"team": f"frontend-{t.tag}"}}})
    apply_md(stack, t.b, "zzsecretmodel", {})
    for ns, name in ((t.a, "private"), (t.a, "shared"), (t.b, "zzsecretmodel")):
        wait_for(lambda n=ns, m=name: ready(stack, n, m), f"{name} ready", timeout=120)
    return t


def test_pod_security_restricted_admits_triton_and_the_operator(
        stack: Any, deployed: Tenants) -> None:
    t = deployed
    # The replicas were created by the ReplicaSet controller under enforce=restricted.
    failed = [e["message"] for e in kget(stack, "events", "-n", t.a)["items"]
              if e["reason"] == "FailedCreate"]
    assert not failed, failed
    # Enforcing again on a namespace with running replicas warns about none of them.
    relabel = stack.kubectl("label", "--overwrite", "--dry-run=server", "namespace", t.a,
                            "pod-security.kubernetes.io/enforce=restricted")
    assert "violate" not in relabel.stderr, relabel.stderr
    # The operator's pod as the chart renders it.
    rendered = chart.template(stack, "dedicap", t.a, show_only=["templates/deployment.yaml"])
    deployment = yaml.safe_load(rendered.stdout)
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "operator", "namespace": t.a,
                        **{k: v for k, v in deployment["spec"]["template"]["metadata"].items()
                           if k == "labels"}},
           # (its ServiceAccount and PriorityClass are the release's; Pod Security does not
           # look at them)
           "spec": {k: v for k, v in deployment["spec"]["template"]["spec"].items()
                    if k not in ("serviceAccountName", "priorityClassName")}}
    stack.kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(pod))
    # And the plugin is on: a privileged pod is refused there.
    bad = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bad", "namespace": t.a},
           "spec": {"containers": [{"name": "c", "image": "busybox",
                                    "securityContext": {"privileged": True}}]}}
    refused = stack.kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(bad),
                            check=False)
    assert refused.returncode != 0 and "PodSecurity" in refused.stderr, refused.stderr
    faults.record("security", pod_security_restricted_admits=["triton replicas", "operator"],
                  privileged_pod_refused=True)


def test_network_policies_admit_exactly_what_the_access_spec_says(
        stack: Any, deployed: Tenants) -> None:
    t = deployed
    policies = [p for ns in (t.a, t.b) for p in kget(stack, "networkpolicies", "-n", ns)["items"]]
    namespaces = {n["metadata"]["name"]: n["metadata"].get("labels") or {}
                  for n in kget(stack, "namespaces")["items"]}
    replicas = {p["metadata"]["labels"]["dedicap.dev/modeldeployment"]: Pod.of(p)
                for ns in (t.a, t.b) for p in kget(stack, "pods", "-n", ns, "-l",
                                                   "dedicap.dev/modeldeployment")["items"]}
    assert set(replicas) == {"private", "shared", "zzsecretmodel"}
    sources = {"same namespace": Pod(t.a, "client", {"app": "client"}),
               "allowed by name": Pod(t.caller, "client", {"app": "client"}),
               "allowed by label": Pod(t.labelled, "client", {}),
               "monitoring": Pod(t.monitoring, "prometheus", {"app": "prometheus"}),
               "other tenant": Pod(t.b, "client", {"app": "client"}),
               "outsider": Pod(t.outsider, "client", {}),
               "outside the cluster": External("203.0.113.7")}
    serving, metrics = (8000, 8001), (8002,)
    expected = {
        "private": {"same namespace": serving + metrics, "monitoring": metrics},
        "shared": {"same namespace": serving + metrics, "monitoring": metrics,
                   "allowed by name": serving, "allowed by label": serving},
        # b's model: the "other tenant" source is b's own namespace, a's is the stranger.
        "zzsecretmodel": {"other tenant": serving + metrics, "monitoring": metrics},
    }
    wrong, checked = [], 0
    for md, replica in replicas.items():
        for who, source in sources.items():
            for port in serving + metrics:
                want = port in expected[md].get(who, ())
                checked += 1
                if allowed(policies, namespaces, source, replica, port) is not want:
                    wrong.append(f"{who} -> {md}:{port}: {'refused' if want else 'ALLOWED'}")
    assert not wrong, "\n".join(wrong)
    faults.record("security", network_policy_checks=checked, network_policy_wrong=0)


def _as(user: str) -> list[str]:
    """Impersonation flags of a person or a service account (with its groups)."""
    groups = ["system:authenticated"]
    if user.startswith("system:serviceaccount:"):
        groups += ["system:serviceaccounts", f"system:serviceaccounts:{user.split(':')[2]}"]
    return ["--as", user, *(f for g in groups for f in ("--as-group", g))]


def _can(stack: Any, user: str, verb: str, resource: str, namespace: str,
         subresource: str = "") -> bool:
    args = ["auth", "can-i", verb, resource, *_as(user)]
    args += ["-n", namespace] if namespace else []
    args += [f"--subresource={subresource}"] if subresource else []
    return stack.kubectl(*args, check=False).stdout.strip() == "yes"


def test_a_tenant_reads_nothing_of_another_and_changes_nothing_of_the_platform(
        stack: Any, deployed: Tenants, operator: OperatorProcess) -> None:
    t = deployed
    wait_for(lambda: stack.kubectl("get", "rolebinding", "dedicap-tenant-view", "-n", t.a,
                                   check=False).returncode == 0,
             "the operator's binding for the tenant's service accounts", timeout=60)
    users = {"editor": f"edit-{t.tag}", "viewer": f"view-{t.tag}", "admin": f"admin-{t.tag}",
             "service account": f"system:serviceaccount:{t.a}:default"}
    denied = [
        ("get", "modeldeployments.dedicap.dev", t.b, ""),
        ("list", "modeldeployments.dedicap.dev", t.b, ""),
        ("list", "events", t.b, ""), ("get", "resourcequotas", t.b, ""),
        ("list", "capacityreservations.dedicap.dev", "", ""),
        ("get", "capacityreservations.dedicap.dev", "", ""),
        ("patch", "gpupools.dedicap.dev", "", ""), ("create", "gpupools.dedicap.dev", "", ""),
        ("delete", "gpupools.dedicap.dev", "", ""),
        ("create", "capacityreservations.dedicap.dev", "", ""),
        ("patch", "capacityreservations.dedicap.dev", "", ""),
        ("patch", "resourcequotas", t.a, ""), ("delete", "resourcequotas", t.a, ""),
        ("create", "resourcequotas", t.a, ""), ("patch", "resourcequotas", t.b, ""),
        ("create", "priorityclasses.scheduling.k8s.io", "", ""),
        ("patch", "priorityclasses.scheduling.k8s.io", "", ""),
        ("delete", "priorityclasses.scheduling.k8s.io", "", ""),
        ("patch", "modeldeployments.dedicap.dev", t.a, "status"),
        ("patch", "namespaces", "", ""),
    ]
    allowed_ = {"editor": [("create", "modeldeployments.dedicap.dev", t.a, ""),
                           ("update", "modeldeployments.dedicap.dev", t.a, "scale"),
                           ("list", "events", t.a, ""), ("get", "resourcequotas", t.a, "")],
                "viewer": [("list", "modeldeployments.dedicap.dev", t.a, "")],
                "admin": [("delete", "modeldeployments.dedicap.dev", t.a, "")],
                "service account": [("list", "modeldeployments.dedicap.dev", t.a, "")]}
    cells = [(who, *row, False) for who in users for row in denied]
    cells += [(who, *row, True) for who, rows in allowed_.items() for row in rows]
    with ThreadPoolExecutor(max_workers=6) as pool:
        answers = list(pool.map(lambda c: _can(stack, users[c[0]], *c[1:5]), cells))
    wrong = [f"{c[0]}: {c[1]} {c[2]} {c[3] or '(cluster)'} {c[4]}: "
             f"{'denied' if c[5] else 'ALLOWED'}" for c, got in zip(cells, answers, strict=True)
             if got != c[5]]
    assert not wrong, "\n".join(wrong)

    # The same for real, as a's editor (and as a's admin where an admin has more rights).
    editor, admin = _as(users["editor"]), _as(users["admin"])
    attempts = {
        "read b's ModelDeployment": ["get", "md", "zzsecretmodel", "-n", t.b, *editor],
        "read b's Events": ["get", "events", "-n", t.b, *editor],
        "read b's quota": ["get", "resourcequota", "dedicap-gpu", "-n", t.b, *editor],
        "read the reservations": ["get", "capacityreservations", *editor],
        "change a pool": ["patch", "gpupool", "h100", "--type=merge", "-p",
                          '{"spec":{"pricePerGPUHour":0}}', *admin],
        "mint a reservation": ["create", "-f", "-", *admin],
        "raise its own quota": ["patch", "resourcequota", "dedicap-gpu", "-n", t.a,
                                "--type=merge", "-p", '{"spec":{"hard":{"requests.nvidia.com/'
                                'gpu":"1000"}}}', *admin],
        "delete a PriorityClass": ["delete", "priorityclass", "dedicap-burst", *admin],
        "write its own status": ["patch", "md", "private", "-n", t.a, "--subresource=status",
                                 "--type=merge", "-p", '{"status":{"readyReplicas":9}}',
                                 *admin],
        "relabel its namespace into b's callers": ["label", "namespace", t.a,
                                                   f"team=frontend-{t.tag}", *admin],
        "bind itself cluster-admin": ["create", "rolebinding", "grab", "-n", t.a,
                                      "--clusterrole=cluster-admin", "--user=mallory", *admin],
    }
    reservation = json.dumps({"apiVersion": "dedicap.dev/v1alpha1", "kind":
                              "CapacityReservation", "metadata": {"name": f"mine-{t.tag}"},
                              "spec": {"namespaces": [t.a], "pool": "h100", "gpus": 32}})
    refused = {}
    for what, args in attempts.items():
        proc = stack.kubectl(*args, check=False,
                             input=reservation if what == "mint a reservation" else None)
        refused[what] = proc.returncode != 0 and "forbidden" in proc.stderr.lower()
    assert all(refused.values()), {k: v for k, v in refused.items() if not v}

    # Nothing a's people can read names b: a's ModelDeployments, Events, quota, children.
    readable = stack.kubectl("get", "modeldeployments,events,resourcequotas,deployments,"
                             "services,networkpolicies,poddisruptionbudgets",
                             "-n", t.a, "-o", "json", *editor).stdout
    assert "zzsecret" not in readable
    faults.record("security", can_i_cells=len(cells), can_i_wrong=0,
                  real_requests_refused=len(refused), other_tenant_named_in_readable=0)
