"""The local data plane says a replica is Ready when its model serves, as a readiness probe
would (kwok leaves a ModelDeployment's pods Running but not Ready)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from dedicap_local import podstatus
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
    changes = {name: ready for _, name, ready in readiness_changes(pods, serving)}
    # a serves: now Ready; c's tritonserver is gone: no longer Ready; b and d already agree;
    # pods of no ModelDeployment and pods not running are not the data plane's
    assert changes == {"a": True, "c": False}


def test_a_readiness_patch_keeps_the_containers_as_the_pod_has_them_now() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    restarted = pod("a", ready=False)
    restarted["status"]["containerStatuses"][0]["restartCount"] = 1
    patch = podstatus.readiness(restarted, now, True)["status"]
    assert {c["type"]: c["status"] for c in patch["conditions"]} == {
        "Ready": "True", "ContainersReady": "True"}
    # the containers' statuses are kept whole (the restart count too), with `ready` set
    assert patch["containerStatuses"] == [
        {"name": "triton", "image": "t", "ready": True, "state": {"running": {}},
         "restartCount": 1}]
    down = podstatus.readiness(pod("b", ready=True), now, False)["status"]
    assert {c["type"]: c["status"] for c in down["conditions"]} == {
        "Ready": "False", "ContainersReady": "False"}
