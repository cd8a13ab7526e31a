"""The Helm chart as a platform team runs it, on the real local stack: lint, a server-side dry
run, the values schema refusing a typo; then `helm install` with the operator's pods run as
processes from the image `make image` built (the process nodes of the local data plane), a
ModelDeployment reconciled to Ready, `helm upgrade` rolling the operator with a standby always
there, a SIGKILLed acting operator replaced by the standby, and `helm uninstall` leaving the CRDs
and every tenant object in place.

The tests of this module share one release and run in order.
"""

from __future__ import annotations

import base64
import itertools
import json
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from dedicap_local import chart, images
from testkit import ROOT, kget, wait_for

pytestmark = pytest.mark.integration

RELEASE = chart.RELEASE
EXAMPLE = ROOT / "deploy" / "examples" / "modeldeployment-fixed.yaml"
LIFETIME_S = 8


def archive() -> Path:
    tag = yaml.safe_load((chart.CHART / "Chart.yaml").read_text())["appVersion"]
    path = ROOT / "dist" / f"dedicap_{tag}.oci.tar"
    if not path.exists():
        pytest.fail(f"{path} is missing: `make image` builds it (make test does)")
    return path


def helm(stack: Any, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([chart.helm(stack), "--kubeconfig", str(stack.kubeconfig), *args],
                          capture_output=True, text=True, check=False, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args[:2])} failed:\n{proc.stderr}")
    return proc


@dataclass
class Release:
    stack: Any
    namespace: str
    tenant: str
    peering: str
    values: Path

    def pods(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = kget(self.stack, "pods", "-n", self.namespace, "-l",
                                           "app.kubernetes.io/component=operator")["items"]
        return items

    def logs(self) -> dict[str, list[str]]:
        return chart.pod_logs(self.stack.run_dir, self.namespace)


@pytest.fixture(scope="module")
def release(stack: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Release]:
    images.load(stack.run_dir, archive())
    suffix = uuid.uuid4().hex[:6]
    namespace, tenant = f"dcp-chart-{suffix}", f"dcp-chart-t-{suffix}"
    for ns in (namespace, tenant):
        stack.kubectl("create", "namespace", ns)
    # Every pod of the release must pass Pod Security "restricted".
    stack.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    values = tmp_path_factory.mktemp("chart") / "values.yaml"
    values.write_text(yaml.safe_dump(chart.local_values(stack, f"dcp-chart-{suffix}",
                                                        LIFETIME_S)))
    chart.adopt(stack, chart.template(stack, RELEASE, namespace).stdout, namespace)
    r = Release(stack, namespace, tenant, f"dcp-chart-{suffix}", values)
    try:
        yield r
    finally:
        helm(stack, "uninstall", RELEASE, "-n", namespace, "--wait", check=False)
        for ns in (tenant, namespace):
            stack.kubectl("delete", "namespace", ns, "--wait=false", check=False)
        stack.kubectl("delete", "clusterkopfpeering", r.peering, "--ignore-not-found",
                      check=False)
        # Kept objects go back to the session's state: the next tests apply them with kubectl.
        chart.install_cluster_objects(stack)


# ----------------------------------------------------------------------------- static checks


def test_lint_and_server_side_dry_run(stack: Any) -> None:
    for values in ([], ["watchNamespaces={a,b}", "platformAdmins.groups={platform}"]):
        args = ["lint", "--strict", str(chart.CHART), "--kube-version", chart.KUBE_VERSION]
        for v in values:
            args += ["--set", v]
        assert "0 chart(s) failed" in helm(stack, *args).stdout
    namespace = f"dcp-dry-{uuid.uuid4().hex[:6]}"
    stack.kubectl("create", "namespace", namespace)
    try:
        rendered = chart.template(stack, RELEASE, namespace).stdout
        applied = stack.kubectl("apply", "--dry-run=server", "-f", "-", input=rendered)
        kinds = {line.split("/")[0] for line in applied.stdout.splitlines()}
        assert {"deployment.apps", "poddisruptionbudget.policy",
                "customresourcedefinition.apiextensions.k8s.io",
                "priorityclass.scheduling.k8s.io"} <= kinds, applied.stdout
        # No rule grants a wildcard, Secrets, or writes to cluster-scoped RBAC or classes.
        for doc in yaml.safe_load_all(rendered):
            for rule in (doc or {}).get("rules") or []:
                assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"], rule
                assert "secrets" not in rule["resources"], rule
    finally:
        stack.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


@pytest.mark.parametrize(("value", "message"), [
    ("replicaCont=3", "additional properties 'replicaCont' not allowed"),
    ("probes.prot=8080", "additional properties 'prot' not allowed"),
    ("replicaCount=two", "replicaCount"),
    ("logLevel=loud", "logLevel"),
])
def test_values_schema_refuses_a_typo(stack: Any, value: str, message: str) -> None:
    proc = chart.template(stack, values=[value], check=False)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr


def test_image_archive_is_what_the_chart_names(stack: Any) -> None:
    """`make image`'s archive: skopeo reads it; the chart's default image is its tag; a non-root
    user; the entrypoint in place; no shell, no compiler, no package manager."""
    inspected = json.loads(subprocess.run(
        ["skopeo", "inspect", "--config", f"oci-archive:{archive()}"], check=True,
        capture_output=True, text=True).stdout)
    config = inspected["config"]
    assert config["User"] == "65532:65532"
    assert config["Entrypoint"] == ["/usr/local/bin/dedicap"] and config["Cmd"] == ["run"]
    image = images.load(stack.run_dir, archive())
    values = yaml.safe_load((chart.CHART / "values.yaml").read_text())
    tag = yaml.safe_load((chart.CHART / "Chart.yaml").read_text())["appVersion"]
    assert image.reference == f"{values['image']['repository']}:{tag}"
    root = image.rootfs
    assert (root / "usr/local/bin/dedicap").exists() and (root / "usr/bin/python3.11").exists()
    for absent in ("bin/sh", "usr/bin/sh", "bin/bash", "usr/bin/dash", "usr/bin/gcc",
                   "usr/bin/cc", "usr/bin/apt", "usr/bin/dpkg", "usr/local/bin/pip"):
        assert not (root / absent).exists(), absent
    assert not list((root / "usr/local/lib/python3.11/dist-packages").glob("dedicap_local*"))
    assert "dedicap:x:65532:65532" in (root / "etc/passwd").read_text()


# ----------------------------------------------------------------------------- the release


def _jwt_claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    data: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload)
                                                                                % 4)))
    return data


def _ready_pods(r: Release) -> list[dict[str, Any]]:
    return [p for p in r.pods() if not p["metadata"].get("deletionTimestamp") and any(
        c["type"] == "Ready" and c["status"] == "True"
        for c in p.get("status", {}).get("conditions", []))]


def test_install_runs_the_rendered_pods_as_processes_and_reconciles(stack: Any,
                                                                    release: Release) -> None:
    r = release
    helm(stack, "install", RELEASE, str(chart.CHART), "-n", r.namespace, "-f", str(r.values),
         "--wait", "--timeout", "240s")
    stack.wait_established("modeldeployments.dedicap.dev", "clusterkopfpeerings.kopf.dev")
    deployment = kget(stack, "deployment", RELEASE, "-n", r.namespace)
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    pods = wait_for(lambda: len(_ready_pods(r)) == 2 and _ready_pods(r), "2 ready operator pods")
    for pod in pods:
        assert pod["spec"]["nodeName"].startswith("process-")
        pid = chart.operator_process(pod)
        ip = pod["status"]["podIP"]
        argv = [a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]]
        # The rendered command (found on the image's PATH) and args, with the downward API's
        # pod IP in place.
        args = [a.replace("$(POD_IP)", ip) for a in container["args"]]
        assert argv[-len(args):] == args
        assert argv[-len(args) - 1] == f"/usr/local/bin/{container['command'][0]}"
        environ = dict(e.split("=", 1) for e in Path(f"/proc/{pid}/environ").read_bytes()
                       .decode().split("\0") if "=" in e)
        assert environ["POD_ID"] == pod["metadata"]["name"] and environ["POD_IP"] == ip
        assert environ["KUBERNETES_SERVICE_HOST"] == "127.0.0.1"
        # Its root is the image's: the entrypoint is there, no shell is.
        root = Path(f"/proc/{pid}/root")
        assert (root / "usr/local/bin/dedicap").exists() and not (root / "bin/sh").exists()
        assert not (root / "usr/bin/sh").exists()
        assert Path(f"/proc/{pid}/uid_map").read_text().split()[0] == "65532"
        # A service-account token bound to this pod, from the TokenRequest API.
        sa_dir = root / "var/run/secrets/kubernetes.io/serviceaccount"
        claims = _jwt_claims((sa_dir / "token").read_text())
        assert claims["kubernetes.io"]["pod"]["name"] == pod["metadata"]["name"]
        assert claims["sub"] == f"system:serviceaccount:{r.namespace}:{RELEASE}"
        assert (sa_dir / "ca.crt").read_text().startswith("-----BEGIN CERTIFICATE")
    peers = kget(stack, "clusterkopfpeering", r.peering).get("status") or {}
    assert {p["metadata"]["name"] for p in pods} <= set(peers)
    # The operator, with only the chart's RBAC, serves a tenant's ModelDeployment.
    stack.kubectl("apply", "-f", str(ROOT / "deploy/examples/gpupools.yaml"))
    stack.kubectl("apply", "-n", r.tenant, "-f", str(EXAMPLE))
    stack.kubectl("wait", "--for=condition=Ready", "md/chat", "-n", r.tenant, "--timeout=120s",
                  timeout=150)


def _children(stack: Any, tenant: str) -> list[str]:
    return [d["metadata"]["name"] for d in kget(stack, "deployments", "-n", tenant, "-l",
                                                "dedicap.dev/modeldeployment=chat")["items"]]


def _custom_resources(stack: Any) -> dict[str, dict[tuple[str, str], str]]:
    """ModelDeployments and GPUPools by (namespace, name) -> uid, leaving out those on their way
    out (the namespaces of earlier tests are deleted without waiting, and may finish during an
    upgrade)."""
    leaving = {n["metadata"]["name"] for n in kget(stack, "namespaces")["items"]
               if (n.get("status") or {}).get("phase") != "Active"}
    return {kind: {(o["metadata"].get("namespace", ""), o["metadata"]["name"]):
                   o["metadata"]["uid"] for o in kget(stack, kind, "-A")["items"]
                   if not o["metadata"].get("deletionTimestamp")
                   and o["metadata"].get("namespace", "") not in leaving}
            for kind in ("modeldeployments", "gpupools")}


def test_upgrade_rolls_the_operator_with_a_standby_always_there(stack: Any,
                                                                release: Release) -> None:
    r = release
    before = _custom_resources(stack)
    old = {p["metadata"]["name"] for p in r.pods()}
    helm(stack, "upgrade", RELEASE, str(chart.CHART), "-n", r.namespace, "-f", str(r.values),
         "--set", "resyncSeconds=20", "--wait", "--timeout", "240s")
    wait_for(lambda: {p["metadata"]["name"] for p in r.pods()}.isdisjoint(old)
             and len(_ready_pods(r)) == 2, "the old operator pods replaced", timeout=120)
    after = _custom_resources(stack)
    assert after == before  # every custom resource kept, none recreated
    wait_for(lambda: [i for i in chart.acting_intervals(r.logs())
                      if i[0] not in old and i[2] is None],
             "a new operator pod acting", timeout=LIFETIME_S * 3)
    intervals = chart.acting_intervals(r.logs())
    acting_old = [i for i in intervals if i[0] in old]
    acting_new = [i for i in intervals if i[0] not in old]
    assert acting_new and acting_new[-1][2] is None, intervals
    # The handover: the old acting process stopped only after its successor had started (it
    # stood by, ready), and the successor took over right when it stopped.
    last_old = acting_old[-1]
    successor = acting_new[0]
    assert last_old[2] is not None and successor[1] >= last_old[1]
    successor_started = min(t for line in r.logs()[successor[0]] if (t := chart.stamp(line)))
    assert successor_started < last_old[2], (successor_started, last_old)
    gaps = [(b[1] - a[2]).total_seconds() for a, b in itertools.pairwise(intervals)
            if a[2] is not None]
    print(f"\nupgrade handovers: acting gaps {gaps} s (intervals {intervals})")
    stack.kubectl("wait", "--for=condition=Ready", "md/chat", "-n", r.tenant, "--timeout=60s")
    assert _children(stack, r.tenant) == ["chat-h100"]


def test_killing_the_acting_operator_lets_the_standby_act(stack: Any, release: Release) -> None:
    r = release
    acting = [i for i in chart.acting_intervals(r.logs()) if i[2] is None]
    assert len(acting) == 1, acting
    pod = next(p for p in r.pods() if p["metadata"]["name"] == acting[0][0])
    standby = next(p["metadata"]["name"] for p in r.pods()
                   if p["metadata"]["name"] != pod["metadata"]["name"])
    pid = chart.operator_process(pod)
    killed = datetime.now(UTC)
    subprocess.run(["kill", "-KILL", str(pid)], check=True)

    def standby_acts() -> datetime | None:
        for name, start, _ in chart.acting_intervals(r.logs()):
            if name == standby and start > killed:
                return start
        return None

    took_over = wait_for(standby_acts, "the standby acting", timeout=LIFETIME_S * 4)
    print(f"\nfailover: {(took_over - killed).total_seconds():.1f} s after SIGKILL "
          f"(peering lifetime {LIFETIME_S} s)")
    # Children are not duplicated by the handover, and the new acting process serves.
    stack.kubectl("scale", "md/chat", "-n", r.tenant, "--replicas=3")
    wait_for(lambda: kget(stack, "md", "chat", "-n", r.tenant).get("status", {}).get(
        "readyReplicas") == 3, "3 ready replicas", timeout=90)
    assert _children(stack, r.tenant) == ["chat-h100"]
    pods = kget(stack, "pods", "-n", r.tenant, "-l", "dedicap.dev/modeldeployment=chat")
    assert len([p for p in pods["items"] if not p["metadata"].get("deletionTimestamp")]) == 3


def test_uninstall_keeps_the_crds_and_the_tenants_objects(stack: Any, release: Release) -> None:
    r = release
    md_uid = kget(stack, "md", "chat", "-n", r.tenant)["metadata"]["uid"]
    pids = [chart.operator_process(p) for p in _ready_pods(r)]
    helm(stack, "uninstall", RELEASE, "-n", r.namespace, "--wait", "--timeout", "120s")
    wait_for(lambda: not r.pods(), "operator pods gone", timeout=60)
    assert not [pid for pid in pids if Path(f"/proc/{pid}").exists()]
    for crd in ("modeldeployments.dedicap.dev", "gpupools.dedicap.dev",
                "capacityreservations.dedicap.dev", "clusterkopfpeerings.kopf.dev"):
        stack.kubectl("get", "crd", crd)
    for kept in ("priorityclass/dedicap-reserved", "clusterrole/dedicap-tenant-view",
                 "clusterrole/dedicap-tenant-edit"):
        stack.kubectl("get", kept)
    assert kget(stack, "md", "chat", "-n", r.tenant)["metadata"]["uid"] == md_uid
    assert _children(stack, r.tenant) == ["chat-h100"]
    stack.kubectl("get", "gpupool", "h100")
    assert stack.kubectl("get", "clusterrole", RELEASE, check=False).returncode != 0
    # The tenant's people still reach their ModelDeployment through the built-in roles.
    can = stack.kubectl("auth", "can-i", "patch", "modeldeployments.dedicap.dev", "-n",
                        r.tenant, "--as", "someone", "--as-group", "system:authenticated",
                        check=False)
    assert can.stdout.strip() == "no"
    stack.kubectl("create", "rolebinding", "editor", "-n", r.tenant, "--clusterrole=edit",
                  "--user=someone")
    can = wait_for(lambda: stack.kubectl(
        "auth", "can-i", "patch", "modeldeployments.dedicap.dev", "-n", r.tenant, "--as",
        "someone", check=False).stdout.strip() == "yes", "edit aggregates dedicap-tenant-edit")
    assert can
