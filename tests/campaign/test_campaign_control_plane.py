"""kube-apiserver and etcd restarted under a running operator, mid-scale and mid-reconcile, on
the real local stack: the operator stays up, its watches start again, every change made before,
during and after converges, and nothing stored is lost.

(test_isolation.py restarts the API server alone once; this is the campaign's harder form: etcd
too, and while the operator is in the middle of work.)
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import faults
from dedicap_local import procs
from dedicap_local import stack as stk
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

PREFIX = "dcp-ccp"


@pytest.fixture(scope="module")
def namespace(stack: Any) -> Iterator[str]:
    install_api(stack)
    name = tenant_namespace(stack, f"{PREFIX}-{uuid.uuid4().hex[:6]}")
    yield name
    stack.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="module")
def operator(stack: Any, namespace: str, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[OperatorProcess]:
    op = OperatorProcess(stack, tmp_path_factory.mktemp("control-plane"), [
        "--namespace", f"{PREFIX}-*", "--peering-lifetime", "10", "--resync-seconds", "10",
        "--no-capacity", "--verbose"], peering=f"dedicap-ccp-{uuid.uuid4().hex[:6]}")
    op.start()
    yield op
    op.stop()
    release_operator_state(stack, op.peering)


def apply_md(stack: Any, namespace: str, name: str, replicas: int) -> None:
    stack.kubectl("apply", "-f", "-", input=small_md(namespace, name, replicas=replicas))


def ready(stack: Any, namespace: str, name: str, replicas: int) -> bool:
    proc = stack.kubectl("get", "md", name, "-n", namespace, "-o", "json", check=False)
    if proc.returncode != 0:
        return False
    obj = json.loads(proc.stdout)
    st = obj.get("status") or {}
    cond = next((c for c in st.get("conditions") or [] if c["type"] == "Ready"), {})
    return (st.get("observedGeneration") == obj["metadata"]["generation"]
            and st.get("readyReplicas") == replicas and cond.get("status") == "True")


def restart(stack: Any, *names: str) -> float:
    """Stop the components (in the order given), start them in reverse: seconds down."""
    pki = stk.certs.ensure(stack.run_dir / "pki")
    t0 = time.monotonic()
    for name in names:
        assert procs.stop(stack.run_dir, name), f"{name} was not running"
    for name in reversed(names):
        procs.start(stack.run_dir, name, stk._argv(stack, name, pki))
        procs.wait_for(lambda n=name: stk._ready_check(stack, n, pki), name,  # type: ignore[misc]
                       timeout=120, log=stack.run_dir / "logs" / f"{name}.log")
    return time.monotonic() - t0


def watch_restarts(op: OperatorProcess) -> float:
    return sum(float(m[1]) for m in re.finditer(r"^dedicap_watch_restarts_total\{[^}]*\} (\S+)$",
                                                 op.metrics(), re.M) if m)


def test_api_server_and_etcd_restarts_mid_scale_and_mid_reconcile_lose_nothing(
        stack: Any, namespace: str, operator: OperatorProcess) -> None:
    apply_md(stack, namespace, "steady", 1)
    wait_for(lambda: ready(stack, namespace, "steady", 1), "steady ready", timeout=90)
    figures: dict[str, Any] = {}

    def survive(what: str, before: Callable[[], None], components: tuple[str, ...],
                converged: Callable[[], bool]) -> None:
        restarts = watch_restarts(operator)
        before()
        down = restart(stack, *components)
        assert operator.proc is not None and operator.proc.poll() is None, operator.log_tail()
        t0 = time.monotonic()
        wait_for(converged, f"convergence after {what}", timeout=180, interval=1)
        if "kube-apiserver" in components:  # (etcd alone: the API server's watches carry on)
            wait_for(lambda: watch_restarts(operator) > restarts, "the watches started again",
                     timeout=60)
        figures[what] = {"down_s": round(down, 1),
                         "converged_after_s": round(time.monotonic() - t0, 1)}

    # Mid-scale: the scale is written, the operator is applying it as etcd goes away.
    survive("etcd restarted mid-scale",
            lambda: stack.kubectl("scale", "md", "steady", "-n", namespace, "--replicas=3"),
            ("etcd",), lambda: ready(stack, namespace, "steady", 3))
    # Mid-reconcile: a new ModelDeployment as both the API server and etcd go away.
    survive("API server and etcd restarted mid-reconcile",
            lambda: apply_md(stack, namespace, "newcomer", 2),
            ("kube-apiserver", "etcd"), lambda: ready(stack, namespace, "newcomer", 2))
    # A scale-down in the middle of an API server restart alone.
    survive("API server restarted mid-scale-down",
            lambda: stack.kubectl("scale", "md", "steady", "-n", namespace, "--replicas=1"),
            ("kube-apiserver",), lambda: ready(stack, namespace, "steady", 1))
    # And what changes after all that is acted on at once.
    apply_md(stack, namespace, "after", 1)
    wait_for(lambda: ready(stack, namespace, "after", 1), "a change afterwards", timeout=90)
    # Nothing lost: every object, its children and no stray ones.
    names = {o["metadata"]["name"] for o in kget(stack, "md", "-n", namespace)["items"]}
    assert names == {"steady", "newcomer", "after"}, names
    deployments = sorted((d["metadata"]["name"], d["spec"]["replicas"])
                         for d in kget(stack, "deployments", "-n", namespace)["items"])
    assert deployments == [("after-h100", 1), ("newcomer-h100", 2), ("steady-h100", 1)]
    assert operator.proc.poll() is None and "Traceback" not in operator.log.read_text(
        errors="replace"), operator.log_tail()
    faults.record("control plane restarts", restarts=len(figures), **figures,
                  objects_lost=0, operator_restarts=0)
    print(json.dumps(figures))
