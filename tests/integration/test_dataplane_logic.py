"""The data plane's decisions from pod objects, and its reconcile loop driving real tritonserver
processes in a private run dir (no API server needed: pods are given as API dicts)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dedicap_local import dataplane as dp
from dedicap_local import prometheus, triton


def pod(name: str, *, ns: str = "acme", md: str = "bot", phase: str = "Running",
        node: str | None = "h100-0", uid: str | None = None, deleting: bool = False,
        args: list[str] | None = None, annotations: dict[str, str] | None = None,
        labels: dict[str, str] | None = None, prestop_s: int | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name, "namespace": ns, "uid": uid or f"uid-{name}",
        "labels": {"dedicap.dev/modeldeployment": md, **(labels or {})},
        "annotations": annotations or {},
    }
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    spec: dict[str, Any] = {"containers": [
        {"name": "triton", "args": args if args is not None else ["tritonserver",
                                                                   f"--load-model={md}-model"]}]}
    if prestop_s is not None:
        spec["containers"][0]["lifecycle"] = {"preStop": {"sleep": {"seconds": prestop_s}}}
    if node:
        spec["nodeName"] = node
    return {"metadata": meta, "spec": spec, "status": {"phase": phase}}


def test_only_running_bound_live_pods_get_a_server() -> None:
    pods = [pod("a"), pod("pending", phase="Pending", node=None), pod("gone", deleting=True),
            pod("done", phase="Succeeded")]
    unlabelled = pod("other")
    del unlabelled["metadata"]["labels"]["dedicap.dev/modeldeployment"]
    assert list(dp.desired_instances([*pods, unlabelled], {})) == ["pod.acme.a"]


def test_model_name_comes_from_the_triton_args() -> None:
    assert dp.model_name(pod("a", args=["--model-repository=s3://x", "--load-model=llm"])) == "llm"
    assert dp.model_name(pod("a", args=["--load-model", "llm2"])) == "llm2"
    assert dp.model_name(pod("a", md="support-bot", args=[])) == "support-bot"


def test_simulation_settings_precedence() -> None:
    sim = {"default": {"base_ms": 10, "per_item_ms": 1},
           "pools": {"a10g": {"base_ms": 40, "max_batch_size": 4}},
           "modeldeployments": {"acme/bot": {"per_item_ms": 3}}}
    p = pod("a", node="a10g-1", annotations={"dedicap.dev/sim-fail-ratio": "0.5",
                                             "dedicap.dev/sim-max-batch-size": "2",
                                             "dedicap.dev/sim-bogus": "1",
                                             "dedicap.dev/sim-jitter": "not a number"})
    (want,) = dp.desired_instances([p], sim, {"a10g-1": "a10g"}).values()
    assert want.pool == "a10g"
    assert want.spec == triton.ModelSpec(name="bot-model", base_ms=40, per_item_ms=3,
                                         fail_ratio=0.5, max_batch_size=2)
    assert want.labels() == {"namespace": "acme", "pod": "a", "modeldeployment": "bot",
                             "node": "a10g-1", "pool": "a10g"}
    # The pod's own pool label wins over the node's.
    labelled = pod("b", node="a10g-1", labels={"dedicap.dev/pool": "h100"})
    (other,) = dp.desired_instances([labelled], sim, {"a10g-1": "a10g"}).values()
    assert other.pool == "h100" and other.spec.base_ms == 10


@pytest.fixture
def run_dir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
    dp.shutdown(tmp_path)


def wait(check: Any, what: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.integration
def test_reconcile_runs_adopts_retunes_and_stops_real_servers(run_dir: Path) -> None:
    fast = {"dedicap.dev/sim-base-ms": "1", "dedicap.dev/sim-per-item-ms": "0"}
    pods = [pod("a", annotations=fast), pod("b", annotations=fast, node="h100-1")]
    plane = dp.DataPlane(run_dir)
    plane.reconcile(pods)
    plane.wait_idle(120)
    plane.reconcile(pods)  # writes endpoints of what became ready
    endpoints = dp.read_endpoints(run_dir, "acme", "bot")
    assert [e["pod"] for e in endpoints] == ["a", "b"]
    assert {e["model"] for e in endpoints} == {"bot-model"}
    targets = prometheus.list_targets(run_dir)
    assert set(targets) == {"pod.acme.a", "pod.acme.b"}
    assert targets["pod.acme.a"][0]["labels"] == {
        "namespace": "acme", "pod": "a", "modeldeployment": "bot", "node": "h100-0"}
    handles = {h.name: h for h in triton.list_instances(run_dir)}
    assert set(handles) == {"pod.acme.a", "pod.acme.b"}
    assert all(h.model_ready() for h in handles.values())
    pids = {k: h.pid for k, h in handles.items()}
    plane.close()

    # A new data plane (after a crash or restart) adopts the processes instead of restarting.
    plane = dp.DataPlane(run_dir)
    assert set(plane.snapshot()) == {"pod.acme.a", "pod.acme.b"}
    plane.reconcile(pods)
    plane.wait_idle(60)
    assert {h.name: h.pid for h in triton.list_instances(run_dir)} == pids

    # sim.json turns the model deployment's replicas to failing, in place.
    dp.write_sim(run_dir, {"modeldeployments": {"acme/bot": {"fail_ratio": 1}}})
    plane.reconcile(pods)
    control = json.loads(handles["pod.acme.a"].control_file.read_text())
    assert control["fail_ratio"] == 1.0
    assert {h.name: h.pid for h in triton.list_instances(run_dir)} == pids

    # A batch size change needs a new process; a recreated pod (new uid) gets one too.
    pods = [pod("a", annotations={**fast, "dedicap.dev/sim-max-batch-size": "2"}),
            pod("b", annotations=fast, node="h100-1", uid="uid-b-2")]
    plane.reconcile(pods)
    plane.wait_idle(120)
    now = {h.name: h.pid for h in triton.list_instances(run_dir)}
    assert set(now) == set(pids) and all(now[k] != pids[k] for k in now)

    # The pod goes away: process, target, endpoint and state go with it.
    plane.reconcile(pods[:1])
    plane.wait_idle(60)
    plane.reconcile(pods[:1])
    assert [h.name for h in triton.list_instances(run_dir)] == ["pod.acme.a"]
    assert set(prometheus.list_targets(run_dir)) == {"pod.acme.a"}
    assert [e["pod"] for e in dp.read_endpoints(run_dir, "acme", "bot")] == ["a"]
    plane.reconcile([])
    plane.wait_idle(60)
    plane.reconcile([])
    assert triton.list_instances(run_dir) == []
    assert not dp.endpoints_file(run_dir, "acme", "bot").exists()
    plane.close()


@pytest.mark.integration
def test_a_removed_replica_leaves_the_endpoints_first_and_stops_after_its_prestop_pause(
        run_dir: Path) -> None:
    fast = {"dedicap.dev/sim-base-ms": "1", "dedicap.dev/sim-per-item-ms": "0"}
    pods = [pod("a", annotations=fast, prestop_s=3), pod("b", annotations=fast, node="h100-1")]
    assert [d.drain_s for d in dp.desired_instances(pods, {}).values()] == [3.0, 0.0]
    plane = dp.DataPlane(run_dir)
    plane.reconcile(pods)
    plane.wait_idle(120)
    plane.reconcile(pods)
    assert [e["pod"] for e in dp.read_endpoints(run_dir, "acme", "bot")] == ["a", "b"]
    handle = triton.find_triton(run_dir, "pod.acme.a")
    assert handle is not None

    # Both pods go (kwok removes a deleted pod's object at once): the one without a pause
    # stops; the other is out of the endpoints but still answers, until its pause is over.
    plane.reconcile([])
    assert "a" not in [e["pod"] for e in dp.read_endpoints(run_dir, "acme", "bot")]
    plane.wait_idle(60)
    assert dp.read_endpoints(run_dir, "acme", "bot") == []
    assert [h.name for h in triton.list_instances(run_dir)] == ["pod.acme.a"]
    assert handle.model_ready()

    def stopped() -> bool:
        plane.reconcile([])
        plane.wait_idle(60)
        return not triton.list_instances(run_dir) and not dp.endpoints_file(
            run_dir, "acme", "bot").exists()

    wait(stopped, "the drained replica to stop", timeout=60)
    assert not prometheus.list_targets(run_dir)
    plane.close()


@pytest.mark.integration
def test_a_new_pod_on_a_deleted_pods_address_serves_once_the_old_server_is_gone(
        run_dir: Path) -> None:
    # kwok gives a deleted pod's address to the next pod at once; the old server is still
    # stopping then, and a new one started beside it could not listen on the pod's ports.
    fast = {"dedicap.dev/sim-base-ms": "1", "dedicap.dev/sim-per-item-ms": "0"}
    address = "127.77.0.9"

    def on(name: str) -> dict[str, Any]:
        p = pod(name, annotations=fast)
        p["status"]["podIP"] = address
        return p

    plane = dp.DataPlane(run_dir)
    try:
        plane.reconcile([on("old")])
        plane.wait_idle(120)

        def new_serves() -> bool:
            plane.reconcile([on("new")])
            got = dp.read_endpoints(run_dir, "acme", "bot")
            return [(e["pod"], e["http"]) for e in got] == [("new", f"{address}:8000")]

        # A server started too early would never serve: its start would time out (120 s) first.
        wait(new_serves, "the new pod's server on its address", timeout=90)
        (handle,) = triton.list_instances(run_dir)
        assert handle.name == "pod.acme.new" and handle.model_ready()
    finally:
        plane.close()
