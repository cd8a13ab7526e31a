"""The local data plane says a replica is Ready when its model serves, as a readiness probe
would (kwok leaves a ModelDeployment's pods Running but not Ready)."""

from __future__ import annotations

from typing import Any

from dedicap_local.dataplane import MD_LABEL, instance_key, readiness_changes


def pod(name: str, *, ready: bool, md: bool = True, phase: str = "Running") -> dict[str, Any]:
    return {
        "metadata": {"namespace": "acme", "name": name,
                     "labels": {MD_LABEL: "bot"} if md else {}},
        "spec": {"nodeName": "h100-0", "containers": [{"name": "triton"}]},
        "status": {"phase": phase,
                   "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
                   "containerStatuses": [{"name": "triton", "image": "t", "ready": ready,
                                          "state": {"running": {}}}]},
    }


def test_a_replica_is_ready_when_its_tritonserver_serves_and_not_before() -> None:
    pods = [pod("a", ready=False), pod("b", ready=True), pod("c", ready=True),
            pod("d", ready=False), pod("x", ready=False, md=False),
            pod("p", ready=False, phase="Pending")]
    serving = {instance_key("acme", "a"), instance_key("acme", "b")}
    changes = {name: patch["status"] for _, name, patch in readiness_changes(pods, serving)}
    # a serves: now Ready; c's tritonserver is gone: no longer Ready; b and d already agree;
    # pods of no ModelDeployment and pods not running are not the data plane's
    assert set(changes) == {"a", "c"}
    assert {c["type"]: c["status"] for c in changes["a"]["conditions"]} == {
        "Ready": "True", "ContainersReady": "True"}
    assert {c["type"]: c["status"] for c in changes["c"]["conditions"]} == {
        "Ready": "False", "ContainersReady": "False"}
    # the containers' statuses are kept whole, with `ready` set
    assert changes["a"]["containerStatuses"] == [
        {"name": "triton", "image": "t", "ready": True, "state": {"running": {}}}]
