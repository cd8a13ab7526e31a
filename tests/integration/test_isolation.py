"""Faults the controller must contain, on the real local stack:

- the autoscaler's saved state broken on one ModelDeployment costs that one a fresh start (with
  an Event) and every other one nothing; a tenant's old-style annotation is not read at all;
- moving to a pool that has no room never drops the model's replicas (make-before-break);
- the API server restarting under a running operator: it stays up, its watches recover, and
  what changed meanwhile converges;
- repeated Events are counted into one;
- two installations on one cluster (different peering names, overlapping namespaces) never act
  on the same objects.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import faults
from dedicap_local import procs
from dedicap_local import stack as stk
from testkit import OperatorProcess, SimPool, install_api, kget, release_operator_state, wait_for

pytestmark = pytest.mark.integration

PREFIX = "dcp-iso"


@pytest.fixture(scope="module")
def operator(stack: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    install_api(stack)
    op = OperatorProcess(stack, tmp_path_factory.mktemp("isolation"), [
        "--namespace", f"{PREFIX}-*", "--peering-lifetime", "6", "--resync-seconds", "5",
        "--prometheus-url", stack.prometheus_url, "--evaluation-interval", "2",
        "--scrape-interval", "2", "--metrics-window", "10", "--verbose",
    ], peering=f"dedicap-iso-{uuid.uuid4().hex[:6]}")
    op.start()
    yield op
    op.stop()
    release_operator_state(stack, op.peering)


@pytest.fixture
def namespace(stack: Any, operator: OperatorProcess) -> Iterator[str]:
    name = f"{PREFIX}-{uuid.uuid4().hex[:6]}"
    stack.kubectl("create", "namespace", name)
    yield name
    stack.kubectl("delete", "namespace", name, "--wait=false", check=False)


def md(stack: Any, namespace: str, name: str, *, pools: list[str], replicas: int | None = None,
       autoscaled: bool = False) -> None:
    spec: dict[str, Any] = {
        "model": {"name": name, "repository": "s3://models/triton"},
        "resources": {"gpusPerReplica": 1, "gpuMemoryGiB": 20, "cpu": "100m",
                      "memory": "256Mi"},
        "placement": {"pools": pools}}
    if replicas is not None:
        spec["replicas"] = replicas
    if autoscaled:
        spec["autoscaling"] = {"minReplicas": 1, "maxReplicas": 3, "slo": {
            "latency": {"percentile": 95, "targetMs": 500}}}
    stack.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "dedicap.dev/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": namespace}, "spec": spec}))


def status(stack: Any, namespace: str, name: str) -> dict[str, Any]:
    return dict(kget(stack, "md", name, "-n", namespace).get("status") or {})


def condition(st: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in st.get("conditions") or [] if c["type"] == type_), {})


def events(stack: Any, namespace: str, name: str) -> list[dict[str, Any]]:
    items = kget(stack, "events", "-n", namespace,
                 "--field-selector", f"involvedObject.name={name}")["items"]
    return list(items)


def decisions(op: OperatorProcess, namespace: str, name: str) -> float:
    """How many evaluations the operator counted for one ModelDeployment."""
    total = 0.0
    pattern = re.compile(r'^dedicap_scale_decisions_total\{([^}]*)\} (\S+)$')
    for line in op.metrics().splitlines():
        m = pattern.match(line)
        if m and f'namespace="{namespace}"' in m[1] and f'modeldeployment="{name}"' in m[1]:
            total += float(m[2])
    return total


def test_a_broken_saved_state_costs_one_modeldeployment_a_fresh_start_and_no_one_else_a_turn(
        stack: Any, namespace: str, operator: OperatorProcess) -> None:
    for name in ("first", "broken", "last"):
        md(stack, namespace, name, pools=["h100"], autoscaled=True)
    for name in ("first", "broken", "last"):
        wait_for(lambda n=name: (status(stack, namespace, n).get("autoscaler") or {})
                 .get("state"), f"{name}'s state saved", timeout=90)

    # A tenant edits what used to hold the state: nothing reads it any more.
    stack.kubectl("annotate", "md", "first", "-n", namespace,
                  'dedicap.dev/autoscaler-state=["forged"]')
    # What only the operator can write, broken (here by the cluster admin through the status
    # subresource): a list where an object belongs, then numbers out of range.
    start = {n: decisions(operator, namespace, n) for n in ("first", "last")}
    for forged in ('["not", "a", "state"]', json.dumps({"gain": 1e12, "history": "x"})):
        stack.kubectl("patch", "md", "broken", "-n", namespace, "--subresource=status",
                      "--type=merge", "-p", json.dumps({"status": {"autoscaler": {
                          "state": forged, "version": 1}}}))
        before = {n: decisions(operator, namespace, n) for n in ("first", "last")}
        wait_for(lambda f=forged: json.loads((status(stack, namespace, "broken")
                                              .get("autoscaler") or {}).get("state", "[]"))
                 != json.loads(f) and isinstance(json.loads(status(stack, namespace, "broken")
                                                            ["autoscaler"]["state"]), dict),
                 "a fresh state saved in its place", timeout=60)
        # The others were evaluated meanwhile, as always.
        wait_for(lambda b=before: all(decisions(operator, namespace, n) > b[n] + 1
                                      for n in ("first", "last")),
                 "the other ModelDeployments evaluated", timeout=60)
    resets = [e for e in events(stack, namespace, "broken")
              if e["reason"] == "AutoscalerStateReset"]
    assert resets and resets[0]["type"] == "Warning", events(stack, namespace, "broken")
    assert "unreadable" in resets[0]["message"]
    assert not [e for e in events(stack, namespace, "first")
                if e["reason"] in ("AutoscalerStateReset", "EvaluationFailed")]
    assert "Traceback" not in operator.log.read_text(errors="replace"), operator.log_tail()
    faults.record("forged autoscaler state", forged_states=2, resets=resets[0].get("count", 1),
                  tenant_annotation_read=False, others_evaluated_meanwhile={
                      n: decisions(operator, namespace, n) - start[n] for n in start},
                  others_failed=0)


def _filler(stack: Any, namespace: str, pool: SimPool, gpus: int) -> str:
    """A pod of no ModelDeployment that takes `gpus` GPUs of `pool`."""
    name = f"filler-{uuid.uuid4().hex[:4]}"
    stack.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace},
        "spec": {"nodeSelector": {"dedicap.dev/pool": pool.name},
                 "tolerations": pool.tolerations(),
                 "containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10",
                                 "resources": {"requests": {"nvidia.com/gpu": str(gpus)},
                                               "limits": {"nvidia.com/gpu": str(gpus)}}}]}}))
    return name


def test_moving_to_a_full_pool_keeps_the_old_replicas_until_the_new_ones_are_ready(
        stack: Any, namespace: str, operator: OperatorProcess) -> None:
    tag = uuid.uuid4().hex[:4]
    src, dst = (SimPool(stack, f"iso{side}-{tag}", nodes=1, gpus_per_node=2)
                for side in ("src", "dst"))
    try:
        for pool in (src, dst):
            pool.create()
        md(stack, namespace, "mover", pools=[src.name], replicas=2)
        wait_for(lambda: condition(status(stack, namespace, "mover"), "Ready").get("status")
                 == "True", "2 replicas ready on the first pool", timeout=90)
        # The pool moved to has no GPU left for us.
        filler = _filler(stack, namespace, dst, 2)
        wait_for(lambda: kget(stack, "pod", filler, "-n", namespace)["spec"].get("nodeName"),
                 "the second pool full", timeout=60)
        wait_for(lambda: (kget(stack, "gpupool", dst.name).get("status") or {})
                 .get("freeGPUs") == 0, "the second pool's status full", timeout=60)
        stack.kubectl("patch", "md", "mover", "-n", namespace, "--type=merge", "-p",
                      json.dumps({"spec": {"placement": {"pools": [dst.name]}}}))
        wait_for(lambda: condition(status(stack, namespace, "mover"), "Progressing")
                 .get("reason") == "MovingPools", "the move waiting for room", timeout=60)
        # Reconciled again and again: the old replicas keep serving.
        for _ in range(3):
            stack.kubectl("annotate", "md", "mover", "-n", namespace, "--overwrite",
                          f"poke={uuid.uuid4().hex[:6]}")
            stack.kubectl("scale", "md", "mover", "-n", namespace, "--replicas=2")
            old = kget(stack, "deployment", f"mover-{src.name}", "-n", namespace)
            assert old["spec"]["replicas"] == 2 and old["status"].get("readyReplicas") == 2
            assert not old["metadata"].get("deletionTimestamp")
        # Room appears: the new replicas start, and only then the old ones go.
        stack.kubectl("delete", "pod", filler, "-n", namespace, "--wait=false")
        wait_for(lambda: stack.kubectl("get", "deployment", f"mover-{src.name}", "-n",
                                       namespace, check=False).returncode != 0,
                 "the old Deployment deleted", timeout=120)
        new = kget(stack, "deployment", f"mover-{dst.name}", "-n", namespace)
        assert new["status"].get("readyReplicas") == 2
    finally:
        stack.kubectl("delete", "md", "mover", "-n", namespace, "--wait=false", check=False)
        for pool in (src, dst):
            pool.delete()


def test_the_api_server_restarting_costs_no_operator_and_nothing_converges_late(
        stack: Any, namespace: str, operator: OperatorProcess) -> None:
    md(stack, namespace, "before", pools=["h100"], replicas=1)
    wait_for(lambda: condition(status(stack, namespace, "before"), "Ready").get("status")
             == "True", "ready before the restart", timeout=90)
    pki = stk.certs.ensure(stack.run_dir / "pki")
    assert procs.stop(stack.run_dir, "kube-apiserver")
    procs.start(stack.run_dir, "kube-apiserver", stk._argv(stack, "kube-apiserver", pki))
    procs.wait_for(lambda: stk._apiserver_ready(stack, pki), "kube-apiserver", timeout=120,
                   log=stack.run_dir / "logs" / "kube-apiserver.log")
    assert operator.proc is not None and operator.proc.poll() is None, operator.log_tail()
    # Something new, and a change to something old: both converge.
    md(stack, namespace, "after", pools=["h100"], replicas=1)
    stack.kubectl("scale", "md", "before", "-n", namespace, "--replicas=2")
    wait_for(lambda: condition(status(stack, namespace, "after"), "Ready").get("status")
             == "True", "the new one ready", timeout=120)
    wait_for(lambda: status(stack, namespace, "before").get("readyReplicas") == 2,
             "the old one scaled", timeout=120)
    assert operator.proc.poll() is None, operator.log_tail()


def test_repeated_events_are_counted_into_one(
        stack: Any, namespace: str, operator: OperatorProcess) -> None:
    md(stack, namespace, "flapper", pools=["h100"], replicas=1)
    wait_for(lambda: status(stack, namespace, "flapper").get("readyReplicas") == 1,
             "ready", timeout=90)
    for replicas in (2, 1, 2, 1, 2):
        stack.kubectl("scale", "md", "flapper", "-n", namespace, f"--replicas={replicas}")
        wait_for(lambda r=replicas: kget(stack, "deployment", "flapper-h100", "-n", namespace)
                 ["spec"]["replicas"] == r, f"scaled to {replicas}", timeout=60)
    scaled = [e for e in events(stack, namespace, "flapper") if e["reason"] == "Scaled"]
    up = [e for e in scaled if "from 1 to 2" in e["message"]]
    assert len(up) == 1 and up[0]["count"] == 3, scaled
    assert up[0]["lastTimestamp"] >= up[0]["firstTimestamp"]


def test_two_installations_never_act_on_the_same_objects(
        stack: Any, namespace: str, operator: OperatorProcess,
        tmp_path: Path) -> None:
    # A second installation serving every namespace, as `make demo`'s operator does.
    wide = OperatorProcess(stack, tmp_path, ["--peering-lifetime", "6", "--verbose"],
                           peering=f"dedicap-wide-{uuid.uuid4().hex[:6]}")
    other_ns = f"dcp-wide-{uuid.uuid4().hex[:6]}"
    stack.kubectl("create", "namespace", other_ns)
    wide.start()
    try:
        wait_for(lambda: wide.peering in json.dumps(kget(
            stack, "clusterkopfpeering", "dedicap-installations").get("status") or {}),
            "the wide installation announced", timeout=60)
        md(stack, namespace, "mine", pools=["h100"], replicas=1)
        md(stack, other_ns, "theirs", pools=["h100"], replicas=1)
        for ns, name in ((namespace, "mine"), (other_ns, "theirs")):
            wait_for(lambda n=ns, m=name: condition(status(stack, n, m), "Ready").get("status")
                     == "True", f"{name} ready", timeout=90)
        # Events say who acted: each namespace's objects by its own installation only.
        ours = {e["reportingInstance"] for e in events(stack, namespace, "mine")
                if e.get("reportingComponent") == "dedicap"}
        theirs = {e["reportingInstance"] for e in events(stack, other_ns, "theirs")
                  if e.get("reportingComponent") == "dedicap"}
        assert len(ours) == 1 and len(theirs) == 1 and ours != theirs, (ours, theirs)
        wide_log = wide.log.read_text(errors="replace")
        narrow_log = operator.log.read_text(errors="replace")
        assert f"/namespaces/{namespace}/" not in _writes(wide_log), "wide wrote ours"
        assert f"/namespaces/{other_ns}/" not in _writes(narrow_log), "narrow wrote theirs"
        # New pool figures (more GPUs taken) are written by the wide installation only.
        narrow_before, wide_before = _pool_writes(narrow_log), _pool_writes(wide_log)
        stack.kubectl("scale", "md", "theirs", "-n", other_ns, "--replicas=2")
        wait_for(lambda: _pool_writes(wide.log.read_text(errors="replace")) > wide_before,
                 "new pool figures written", timeout=60)
        assert _pool_writes(operator.log.read_text(errors="replace")) == narrow_before
    finally:
        wide.stop()
        release_operator_state(stack, wide.peering)
        stack.kubectl("delete", "namespace", other_ns, "--wait=false", check=False)


def _pool_writes(log: str) -> int:
    return sum(1 for line in log.splitlines() if '"PATCH /apis/dedicap.dev/v1alpha1/gpupools/'
               in line)


def _writes(log: str) -> str:
    return "\n".join(line for line in log.splitlines()
                     if any(f'"{verb} ' in line for verb in ("PATCH", "POST", "DELETE", "PUT")))


def _counter(op: OperatorProcess, name: str, *, skip: tuple[str, ...] = (),
             only: str = "") -> float:
    total = 0.0
    for line in op.metrics().splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            labels, _, value = line.rpartition(" ")
            if only and not re.search(only, labels):
                continue
            if any(s in labels for s in skip):
                continue
            total += float(value)
    return total


def _writes_now(op: OperatorProcess) -> float:
    """The operator's API writes so far, leaving out its peering keep-alives."""
    return _counter(op, "dedicap_api_requests_total", skip=('resource="clusterkopfpeerings"',),
                    only=r'verb="(POST|PATCH|PUT|DELETE)"')


def test_a_quiet_fleet_costs_no_api_write(
        stack: Any, namespace: str, operator: OperatorProcess) -> None:
    names = ("quiet-a", "quiet-b", "quiet-c")
    for name in names:
        md(stack, namespace, name, pools=["h100"], autoscaled=name != "quiet-c",
           replicas=None if name != "quiet-c" else 1)
    for name in names:
        wait_for(lambda n=name: condition(status(stack, namespace, n), "Ready").get("status")
                 == "True", f"{name} ready", timeout=90)
    for name in names[:2]:
        wait_for(lambda n=name: condition(status(stack, namespace, n), "MetricsAvailable")
                 .get("status") == "True", f"{name}'s metrics flowing", timeout=90)
    # Settled: its figures written once; from now on nothing changes. Earlier tests' namespaces
    # are gone first: their ModelDeployments' status follows their teardown (an API write).
    wait_for(lambda: all(status(stack, namespace, n).get("observed") for n in names[:2]),
             "observed figures written", timeout=60)
    wait_for(lambda: not [ns for ns in kget(stack, "namespaces")["items"]
                          if ns["metadata"]["name"].startswith(PREFIX)
                          and ns["metadata"]["name"] != namespace
                          and ns["metadata"].get("deletionTimestamp")],
             "earlier tests' namespaces deleted", timeout=180)
    writes = _writes_now(operator)
    evaluations = {n: decisions(operator, namespace, n) for n in names[:2]}
    reconciles = _counter(operator, "dedicap_reconcile_duration_seconds_count")
    # Several evaluations (every 2 s) and resyncs (every 5 s) of each later:
    wait_for(lambda: all(decisions(operator, namespace, n) >= evaluations[n] + 5
                         for n in names[:2])
             and _counter(operator, "dedicap_reconcile_duration_seconds_count")
             >= reconciles + 3 * len(names), "evaluations and resyncs", timeout=120)
    assert _writes_now(operator) == writes, operator.log_tail()
