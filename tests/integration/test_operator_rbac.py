"""The Helm chart's RBAC, enforced by the real API server.

- The operator, logged in as the chart's ServiceAccount with the namespaced RBAC that
  `watchNamespaces` selects (a real token), serves a ModelDeployment.
- `kubectl auth can-i --as` over the chart's default RBAC: the operator, a tenant's editor and
  viewer, a platform admin and an unrelated ServiceAccount are each allowed what they need and
  denied the rest, the escalation attempts included; two of those attempts are also made for
  real and refused.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from dedicap_local import chart

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
OPERATOR_TEMPLATES = ("templates/serviceaccount.yaml", "templates/rbac.yaml")


def _token_kubeconfig(stack: Any, namespace: str, account: str, path: Path) -> Path:
    token = stack.kubectl("create", "token", account, "-n", namespace).stdout.strip()
    config = json.loads(stack.kubectl("config", "view", "--raw", "--minify", "-o", "json").stdout)
    config["users"] = [{"name": "operator", "user": {"token": token}}]
    config["contexts"][0]["context"]["user"] = "operator"
    path.write_text(yaml.safe_dump(config))
    return path


def _delete_rendered(stack: Any, rendered: str) -> None:
    stack.kubectl("delete", "--ignore-not-found", "--wait=false", "-f", "-", input=rendered,
                  check=False)


@pytest.fixture
def rbac_kubeconfig(stack: Any, tmp_path: Path) -> Iterator[tuple[Path, str, str]]:
    """The chart's ServiceAccount and RBAC for one watched namespace, and a kubeconfig with the
    ServiceAccount's token."""
    release = f"dcp-rbac-{uuid.uuid4().hex[:6]}"
    namespace = f"{release}-md"
    for ns in (release, namespace):
        stack.kubectl("create", "namespace", ns)
    rendered = chart.template(stack, release, release, show_only=OPERATOR_TEMPLATES,
                              values=[f"watchNamespaces={{{namespace}}}",
                                      f"peering.name={release}"]).stdout
    stack.kubectl("apply", "-f", "-", input=rendered)
    yield _token_kubeconfig(stack, release, release, tmp_path / "kubeconfig"), release, namespace
    _delete_rendered(stack, rendered)
    for ns in (namespace, release):
        stack.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def test_operator_works_with_the_charts_namespaced_rbac_only(
        stack: Any, rbac_kubeconfig: tuple[Path, str, str], tmp_path: Path) -> None:
    kubeconfig, release, namespace = rbac_kubeconfig
    stack.kubectl("apply", "-f", str(ROOT / "crds"))
    stack.kubectl("apply", "-f", str(ROOT / "deploy" / "examples" / "gpupools.yaml"))
    account = f"system:serviceaccount:{release}:{release}"
    # Writes only where it serves.
    for ns, answer in ((namespace, "yes"), ("default", "no")):
        got = stack.kubectl("auth", "can-i", "create", "deployments", "-n", ns, "--as", account,
                            check=False)
        assert got.stdout.strip() == answer, (ns, got.stdout)
    log = tmp_path / "operator.log"
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "PYTHONUNBUFFERED": "1"}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dedicap.cli", "run", "--namespace", namespace,
             "--peering", release, "--pool-refresh-seconds", "2"],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        try:
            doc = yaml.safe_load((ROOT / "deploy/examples/modeldeployment-fixed.yaml").read_text())
            doc["metadata"]["namespace"] = namespace
            stack.kubectl("apply", "-f", "-", input=json.dumps(doc))
            done = stack.kubectl("wait", "--for=condition=Ready", "md/chat", "-n", namespace,
                                 "--timeout=90s", check=False)
            text = log.read_text(errors="replace")
            assert done.returncode == 0, text[-3000:]
            assert "Forbidden" not in text and " 403" not in text, text[-3000:]
            events = json.loads(stack.kubectl("get", "events", "-n", namespace, "-o",
                                              "json").stdout)["items"]
            assert any(e["reason"] == "Created" for e in events)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            time.sleep(0.5)
            stack.kubectl("delete", "clusterkopfpeering", release, "--ignore-not-found",
                          check=False)


# ----------------------------------------------------------------------------- the matrix

# (verb, resource, namespace or "" for cluster scope / "T" the tenant's / "O" another tenant's)
OPERATOR_ALLOWED = [
    ("watch", "modeldeployments.dedicap.dev", ""),
    ("patch", "modeldeployments.dedicap.dev/status", "T"),
    ("update", "modeldeployments.dedicap.dev/scale", "T"),
    ("create", "deployments.apps", "T"), ("delete", "deployments.apps", "T"),
    ("create", "services", "T"), ("create", "poddisruptionbudgets.policy", "T"),
    ("create", "networkpolicies.networking.k8s.io", "T"),
    ("list", "pods", ""), ("list", "nodes", ""), ("list", "namespaces", ""),
    ("patch", "gpupools.dedicap.dev/status", ""),
    ("patch", "capacityreservations.dedicap.dev/status", ""),
    ("create", "resourcequotas", "T"), ("delete", "resourcequotas", "T"),
    ("create", "rolebindings.rbac.authorization.k8s.io", "T"),
    ("bind", "clusterroles.rbac.authorization.k8s.io/dedicap-tenant-view", ""),
    ("get", "priorityclasses.scheduling.k8s.io/dedicap-reserved", ""),
    ("create", "events", "T"), ("patch", "clusterkopfpeerings.kopf.dev/PEERING", ""),
    ("patch", "clusterkopfpeerings.kopf.dev/dedicap-installations", ""),
    ("watch", "services", "T"), ("watch", "networkpolicies.networking.k8s.io", "T"),
]
OPERATOR_DENIED = [
    # The escalation paths: binding any other role, cluster-wide bindings, RBAC objects,
    # PriorityClasses, and acting as someone else.
    ("bind", "clusterroles.rbac.authorization.k8s.io/cluster-admin", ""),
    ("bind", "clusterroles.rbac.authorization.k8s.io/admin", ""),
    ("escalate", "clusterroles.rbac.authorization.k8s.io", ""),
    ("create", "clusterrolebindings.rbac.authorization.k8s.io", ""),
    ("create", "clusterroles.rbac.authorization.k8s.io", ""),
    ("patch", "clusterroles.rbac.authorization.k8s.io/dedicap-tenant-view", ""),
    ("create", "roles.rbac.authorization.k8s.io", "T"),
    ("patch", "priorityclasses.scheduling.k8s.io/dedicap-reserved", ""),
    ("create", "priorityclasses.scheduling.k8s.io", ""),
    ("delete", "priorityclasses.scheduling.k8s.io/dedicap-burst", ""),
    ("impersonate", "users", ""), ("impersonate", "serviceaccounts", "T"),
    ("create", "serviceaccounts/token", "T"),
    # Nothing it does not own or need.
    ("get", "secrets", "T"), ("list", "secrets", ""), ("create", "pods", "T"),
    ("delete", "pods", "T"), ("delete", "nodes", ""), ("patch", "nodes", ""),
    ("update", "modeldeployments.dedicap.dev", "T"),
    ("create", "modeldeployments.dedicap.dev", "T"),
    ("delete", "modeldeployments.dedicap.dev", "T"),
    # Its memory is in the status: it never writes a tenant's spec or metadata.
    ("patch", "modeldeployments.dedicap.dev", "T"),
    ("create", "gpupools.dedicap.dev", ""), ("patch", "capacityreservations.dedicap.dev", ""),
    ("patch", "clusterkopfpeerings.kopf.dev/someone-elses", ""),
    ("create", "customresourcedefinitions.apiextensions.k8s.io", ""),
]
EDITOR_ALLOWED = [
    ("create", "modeldeployments.dedicap.dev", "T"), ("patch", "modeldeployments.dedicap.dev", "T"),
    ("delete", "modeldeployments.dedicap.dev", "T"),
    ("update", "modeldeployments.dedicap.dev/scale", "T"),
    ("get", "resourcequotas", "T"),
]
TENANT_DENIED = [
    ("patch", "modeldeployments.dedicap.dev/status", "T"),
    ("create", "modeldeployments.dedicap.dev", "O"), ("list", "modeldeployments.dedicap.dev", "O"),
    ("list", "capacityreservations.dedicap.dev", ""), ("get", "gpupools.dedicap.dev", ""),
    ("patch", "resourcequotas", "T"), ("create", "rolebindings.rbac.authorization.k8s.io", "T"),
    ("bind", "clusterroles.rbac.authorization.k8s.io/dedicap-tenant-view", "T"),
    ("create", "priorityclasses.scheduling.k8s.io", ""),
]
VIEWER_ALLOWED = [
    ("get", "modeldeployments.dedicap.dev", "T"), ("list", "modeldeployments.dedicap.dev", "T"),
    ("watch", "modeldeployments.dedicap.dev", "T"), ("get", "resourcequotas", "T"),
]
VIEWER_DENIED = [
    ("create", "modeldeployments.dedicap.dev", "T"), ("patch", "modeldeployments.dedicap.dev", "T"),
    ("delete", "modeldeployments.dedicap.dev", "T"),
    ("update", "modeldeployments.dedicap.dev/scale", "T"),
]
PLATFORM_ALLOWED = [
    ("create", "gpupools.dedicap.dev", ""), ("delete", "gpupools.dedicap.dev", ""),
    ("create", "capacityreservations.dedicap.dev", ""),
    ("patch", "capacityreservations.dedicap.dev", ""),
    ("list", "modeldeployments.dedicap.dev", ""), ("list", "resourcequotas", ""),
]
PLATFORM_DENIED = [
    ("patch", "capacityreservations.dedicap.dev/status", ""),
    ("patch", "modeldeployments.dedicap.dev", "T"), ("create", "resourcequotas", "T"),
    ("create", "clusterrolebindings.rbac.authorization.k8s.io", ""),
    ("patch", "priorityclasses.scheduling.k8s.io/dedicap-reserved", ""),
    ("get", "secrets", "T"),
]
UNRELATED_DENIED = [
    ("list", "modeldeployments.dedicap.dev", ""), ("get", "modeldeployments.dedicap.dev", "T"),
    ("list", "gpupools.dedicap.dev", ""), ("list", "capacityreservations.dedicap.dev", ""),
    ("get", "resourcequotas", "T"), ("list", "clusterkopfpeerings.kopf.dev", ""),
    ("bind", "clusterroles.rbac.authorization.k8s.io/dedicap-tenant-view", ""),
]


@pytest.fixture
def matrix_env(stack: Any) -> Iterator[dict[str, Any]]:
    """The chart's default RBAC under a release of its own, a tenant with an editor and a
    viewer (the built-in roles, which aggregate dedicap's), another tenant, a platform admin
    group and an unrelated namespace."""
    tag = uuid.uuid4().hex[:6]
    release, tenant, other, unrelated = (f"dcp-mx-{tag}", f"dcp-mx-t-{tag}", f"dcp-mx-o-{tag}",
                                         f"dcp-mx-u-{tag}")
    for ns in (release, tenant, other, unrelated):
        stack.kubectl("create", "namespace", ns)
    rendered = chart.template(stack, release, release, show_only=OPERATOR_TEMPLATES,
                              values=[f"peering.name={release}"]).stdout
    stack.kubectl("apply", "-f", "-", input=rendered)
    # The platform role is cluster-scoped with a fixed name; bind it to this test's group.
    stack.kubectl("apply", "-f", "-", input=chart.template(
        stack, release, release, show_only=["templates/platform-rbac.yaml"]).stdout)
    group = f"platform-{tag}"
    stack.kubectl("create", "clusterrolebinding", f"dcp-mx-platform-{tag}",
                  "--clusterrole=dedicap-platform", f"--group={group}")
    stack.kubectl("create", "rolebinding", "editor", "-n", tenant, "--clusterrole=edit",
                  f"--user=editor-{tag}")
    stack.kubectl("create", "rolebinding", "viewer", "-n", tenant, "--clusterrole=view",
                  f"--user=viewer-{tag}")
    yield {"tag": tag, "release": release, "tenant": tenant, "other": other,
           "unrelated": unrelated, "group": group}
    stack.kubectl("delete", "clusterrolebinding", f"dcp-mx-platform-{tag}", check=False)
    _delete_rendered(stack, rendered)
    for ns in (release, tenant, other, unrelated):
        stack.kubectl("delete", "namespace", ns, "--wait=false", check=False)


SUBRESOURCES = ("status", "scale", "token", "finalizers")


def _can(stack: Any, who: list[str], verb: str, resource: str, namespace: str) -> bool:
    args = ["-n", namespace] if namespace else []
    kind, _, rest = resource.partition("/")
    if rest in SUBRESOURCES:  # `kind/name` names an object; a subresource is a flag
        resource, args = kind, [*args, f"--subresource={rest}"]
    proc = stack.kubectl("auth", "can-i", verb, resource, *args, *who, check=False)
    return proc.stdout.strip() == "yes"


def test_rbac_matrix_allows_each_role_what_it_needs_and_no_escalation(
        stack: Any, matrix_env: dict[str, Any]) -> None:
    e = matrix_env
    sa = ["--as-group", "system:serviceaccounts", "--as-group", "system:authenticated"]
    subjects = {
        "operator": ["--as", f"system:serviceaccount:{e['release']}:{e['release']}",
                     "--as-group", f"system:serviceaccounts:{e['release']}", *sa],
        "tenant editor": ["--as", f"editor-{e['tag']}", "--as-group", "system:authenticated"],
        "tenant viewer": ["--as", f"viewer-{e['tag']}", "--as-group", "system:authenticated"],
        "platform admin": ["--as", f"carol-{e['tag']}", "--as-group", e["group"],
                           "--as-group", "system:authenticated"],
        "unrelated": ["--as", f"system:serviceaccount:{e['unrelated']}:default",
                      "--as-group", f"system:serviceaccounts:{e['unrelated']}", *sa],
    }
    rows = {
        "operator": (OPERATOR_ALLOWED, OPERATOR_DENIED),
        "tenant editor": (EDITOR_ALLOWED, TENANT_DENIED),
        "tenant viewer": (VIEWER_ALLOWED, VIEWER_DENIED + TENANT_DENIED),
        "platform admin": (PLATFORM_ALLOWED, PLATFORM_DENIED),
        "unrelated": ([], UNRELATED_DENIED),
    }
    cells = []
    for who, (allowed, denied) in rows.items():
        for expected, table in ((True, allowed), (False, denied)):
            for verb, resource, where in table:
                namespace = {"T": e["tenant"], "O": e["other"], "": ""}[where]
                cells.append((who, verb, resource.replace("PEERING", e["release"]), namespace,
                              expected))
    with ThreadPoolExecutor(max_workers=6) as pool:
        answers = list(pool.map(lambda c: _can(stack, subjects[c[0]], *c[1:4]), cells))
    wrong = [f"{who}: {verb} {resource} {ns or '(cluster)'}: {'denied' if expected else 'ALLOWED'}"
             for (who, verb, resource, ns, expected), got in zip(cells, answers, strict=True)
             if got != expected]
    assert not wrong, "\n".join(wrong)
    print(f"\nRBAC matrix: {len(cells)} cells, {len(rows)} subjects")

    # The escalation attempts for real, as the operator: a RoleBinding of cluster-admin and a
    # ClusterRoleBinding are refused; a RoleBinding of dedicap-tenant-view is its job.
    operator = subjects["operator"]
    refused = stack.kubectl("create", "rolebinding", "grab", "-n", e["tenant"],
                            "--clusterrole=cluster-admin", "--user=mallory", *operator,
                            check=False)
    assert refused.returncode != 0 and "forbidden" in refused.stderr.lower(), refused.stderr
    refused = stack.kubectl("create", "clusterrolebinding", f"grab-{e['tag']}",
                            "--clusterrole=view", "--user=mallory", *operator, check=False)
    assert refused.returncode != 0 and "forbidden" in refused.stderr.lower(), refused.stderr
    refused = stack.kubectl("patch", "priorityclass", "dedicap-reserved", "--type=merge", "-p",
                            '{"description":"x"}', *operator, check=False)
    assert refused.returncode != 0 and "forbidden" in refused.stderr.lower(), refused.stderr
    stack.kubectl("create", "rolebinding", "tenant-view", "-n", e["tenant"],
                  "--clusterrole=dedicap-tenant-view",
                  f"--group=system:serviceaccounts:{e['tenant']}", *operator)
