"""A tritonserver of the data plane crashing (SIGKILL), on the real local stack: its pod goes
NotReady as a kubelet would report it (the container's restartCount up, lastState terminated),
the ModelDeployment's status and Events follow (1 of 2 ready, then 2 of 2), the replica is
started again and serves, and Prometheus scrapes the new process in place of the dead one.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

import faults
from dedicap_local import dataplane, triton
from testkit import (
    OperatorProcess,
    install_api,
    kget,
    prom_query,
    release_operator_state,
    small_md,
    tenant_namespace,
    wait_for,
)

pytestmark = pytest.mark.integration

PREFIX = "dcp-ctc"


@pytest.fixture(scope="module")
def namespace(stack: Any) -> Iterator[str]:
    install_api(stack)
    name = tenant_namespace(stack, f"{PREFIX}-{uuid.uuid4().hex[:6]}")
    yield name
    stack.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="module")
def operator(stack: Any, namespace: str, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[OperatorProcess]:
    op = OperatorProcess(stack, tmp_path_factory.mktemp("triton-crash"), [
        "--namespace", f"{PREFIX}-*", "--peering-lifetime", "6", "--no-capacity",
        "--verbose"], peering=f"dedicap-ctc-{uuid.uuid4().hex[:6]}")
    op.start()
    yield op
    op.stop()
    release_operator_state(stack, op.peering)


def test_a_crashed_triton_makes_its_pod_not_ready_and_the_replica_comes_back(
        stack: Any, namespace: str, operator: OperatorProcess) -> None:
    stack.kubectl("apply", "-f", "-", input=small_md(namespace, "fragile", replicas=2))
    wait_for(lambda: len(dataplane.read_endpoints(stack.run_dir, namespace, "fragile")) == 2,
             "two replicas served by real tritonservers", timeout=120)
    victim = kget(stack, "pods", "-n", namespace, "-l",
                  "dedicap.dev/modeldeployment=fragile")["items"][0]["metadata"]["name"]

    def scraped() -> list[str]:
        return sorted(r["metric"]["instance"] for r in prom_query(
            stack.prometheus_url, f'nv_inference_request_success{{namespace="{namespace}",'
            f'pod="{victim}"}}'))
    before = wait_for(scraped, "the victim's metrics in Prometheus", timeout=60)
    handle = triton.find_triton(stack.run_dir, dataplane.instance_key(namespace, victim))
    assert handle is not None and handle.pid is not None
    os.kill(handle.pid, signal.SIGKILL)
    t0, killed_at = time.monotonic(), time.time()

    def restarted() -> dict[str, Any]:
        pod = kget(stack, "pod", victim, "-n", namespace)
        cs = (pod["status"].get("containerStatuses") or [{}])[0]
        # (an assertion, so that a timeout shows how far the container got)
        assert cs.get("restartCount") == 1 and cs.get("ready"), cs
        return pod
    pod = wait_for(restarted, "the container restarted and ready", timeout=90)
    t_back = time.monotonic() - t0
    cs = pod["status"]["containerStatuses"][0]
    assert cs["lastState"]["terminated"]["reason"] == "Error", cs
    assert next(c for c in pod["status"]["conditions"] if c["type"] == "Ready")["status"] == "True"
    # The ModelDeployment saw it: one replica short, then whole again.
    events = kget(stack, "events", "-n", namespace, "--field-selector",
                  "involvedObject.name=fragile")["items"]
    messages = [e["message"] for e in events]
    assert any(m.startswith("Ready is False: 1/2") for m in messages), messages
    wait_for(lambda: (kget(stack, "md", "fragile", "-n", namespace)["status"]
                      .get("readyReplicas")) == 2, "2 of 2 ready again", timeout=60)
    # Its metrics now come from the new process: the dead one answers nothing, so a successful
    # scrape of the pod's target after the kill is the new process (on the pod's own address it
    # has the same instance as before, as a restarted container in a cluster would; on free
    # loopback ports, another one).
    def scraped_again() -> list[str]:
        up = prom_query(stack.prometheus_url, f'timestamp(up{{namespace="{namespace}",'
                        f'pod="{victim}"}} == 1)')
        return scraped() if up and all(float(r["value"][1]) > killed_at for r in up) else []
    after = wait_for(scraped_again, "the new process scraped", timeout=60)
    assert len(after) == 1 and len(before) == 1
    assert len(dataplane.read_endpoints(stack.run_dir, namespace, "fragile")) == 2
    faults.record("Triton crash", crashes=1, pod_not_ready_reported=True,
                  replica_back_after_s=round(t_back, 1), restart_count=cs["restartCount"],
                  metrics_from_new_process=True)
