"""Dedicated capacity end to end: the operator (`dedicap run`, a subprocess) places
ModelDeployments under reservations on the real local stack, the real kube-scheduler preempts,
the real controller-manager enforces quotas and replaces pods of a deleted node.

Each test has a pool of its own simulated nodes (see test_capacity_enforcement.SimPool).
Replicas use whole nodes (8 GPUs) where the story allows, so that few pods, and so few real
tritonserver processes of the data plane, are needed.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

# pytest puts this folder on sys.path (no __init__.py): the enforcement tests' helpers.
from test_capacity_enforcement import Env, env

import faults
from testkit import OperatorProcess as Operator
from testkit import wait_for

pytestmark = pytest.mark.integration
__all__ = ["env"]  # the fixture, re-used from the enforcement tests

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def operator(env: Env, tmp_path: Path) -> Iterator[Operator]:
    # The CRDs of this checkout: a stack kept from an older one would prune newer status fields.
    env.stack.kubectl("apply", "-f", str(REPO / "crds"))
    op = Operator(env.stack, tmp_path, [
        "--standalone", "--namespace", f"t5-*-{env.id}",
        "--pool-refresh-seconds", "2", "--resync-seconds", "5", "--cost-record-seconds", "10"])
    op.start()
    try:
        wait_for(lambda: op.proc is not None and op.proc.poll() is None and _metrics_up(op),
                 "operator metrics", timeout=60)
        yield op
    finally:
        proc = op.proc
        op.stop()
        if proc is not None and proc.returncode not in (0, -15, None):
            print(op.log.read_text()[-5000:])


def _metrics_up(op: Operator) -> bool:
    try:
        op.metrics()
        return True
    except OSError:
        return False


def md(env: Env, ns: str, name: str, pools: list[str], *, replicas: int, gpus: int = 8,
       memory: float = 20.0, reservation: str | None = None) -> None:
    spec: dict[str, Any] = {
        "model": {"name": name, "repository": "s3://models/triton", "version": "1"},
        "resources": {"gpusPerReplica": gpus, "gpuMemoryGiB": memory, "cpu": "100m",
                      "memory": "256Mi"},
        "placement": {"pools": pools}, "replicas": replicas}
    if reservation:
        spec["reservation"] = reservation
    env.stack.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "dedicap.dev/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": ns}, "spec": spec}))


def get(env: Env, *args: str) -> dict[str, Any]:
    return dict(json.loads(env.stack.kubectl("get", *args, "-o", "json").stdout))


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond["type"] == type_:
            return dict(cond)
    return {}


def running_pods(env: Env, ns: str, name: str) -> list[dict[str, Any]]:
    pods = get(env, "pods", "-n", ns, "-l", f"dedicap.dev/modeldeployment={name}")["items"]
    return [p for p in pods if p["status"].get("phase") == "Running"
            and not p["metadata"].get("deletionTimestamp")]


def pending_pods(env: Env, ns: str, name: str) -> list[dict[str, Any]]:
    pods = get(env, "pods", "-n", ns, "-l", f"dedicap.dev/modeldeployment={name}")["items"]
    return [p for p in pods if p["status"].get("phase") == "Pending"
            and not p["metadata"].get("deletionTimestamp")]


def test_reserved_tenant_preempts_burst_tenant_which_reports_capacity_constrained(
        env: Env, operator: Operator) -> None:
    pool = env.pool("h", nodes=4, gpus=8)  # 32 GPUs
    a, b = env.namespace("a"), env.namespace("b")
    res_a = env.reservation("a", pool.name, 16, [a])
    res_b = env.reservation("b", pool.name, 0, [b], burst=32)
    # B borrows the whole pool (A's reserved GPUs are idle).
    md(env, b, "bursty", [pool.name], replicas=4, reservation=res_b)
    md(env, a, "owner", [pool.name], replicas=0, reservation=res_a)
    wait_for(lambda: len(running_pods(env, b, "bursty")) == 4, "B's 4 burst replicas Running",
             timeout=120)
    assert all(p["spec"].get("priorityClassName") == "dedicap-burst"
               for p in running_pods(env, b, "bursty"))
    # A scales into its reservation: the scheduler preempts B's burst replicas.
    env.stack.kubectl("scale", "md/owner", "-n", a, "--replicas=2")
    wait_for(lambda: len(running_pods(env, a, "owner")) == 2, "A's 2 reserved replicas Running",
             timeout=120)
    assert all(p["spec"].get("priorityClassName") == "dedicap-reserved"
               for p in running_pods(env, a, "owner"))
    # B is told why it runs fewer replicas, with numbers, and keeps no Pending pods piling up.
    # (It may pass through intermediate counts while the preemption is under way.)
    def b_constrained() -> dict[str, Any]:
        cond = condition(get(env, "md", "bursty", "-n", b), "CapacityConstrained")
        return cond if cond.get("status") == "True" and "placed 2 " in cond["message"] else {}
    cond = wait_for(b_constrained, "B CapacityConstrained with 2 placed", timeout=90)
    assert cond["reason"] == "InsufficientCapacity"
    assert "wanted 4 replicas x 8 GPU = 32 GPUs, placed 2 (2 not placed)" in cond["message"]
    # B's own replicas do not count against it: the 16 GPUs A took back are what is missing.
    assert re.search(r"placed 0 reserved \+ 2 burst, free 16/32 GPUs", cond["message"]), cond
    wait_for(lambda: len(running_pods(env, b, "bursty")) == 2 and not pending_pods(
        env, b, "bursty"), "B down to 2 Running replicas, none Pending", timeout=90)
    status_a = env.reservation_status(res_a)
    wait_for(lambda: env.reservation_status(res_a).get("usedGPUs") == 16, "A uses 16 reserved")
    status_a = env.reservation_status(res_a)
    assert status_a["headroomGPUs"] == 0
    assert wait_for(lambda: env.reservation_status(res_b).get("burstGPUs") == 16,
                    "B borrows 16")


def test_tenant_cannot_exceed_reservation_plus_burst(env: Env, operator: Operator) -> None:
    pool = env.pool("q", nodes=4, gpus=8)
    ns = env.namespace("q")
    res = env.reservation("q", pool.name, 8, [ns], burst=8)
    md(env, ns, "capped", [pool.name], replicas=3, reservation=res)

    def constrained() -> dict[str, Any]:
        cond = condition(get(env, "md", "capped", "-n", ns), "CapacityConstrained")
        return cond if cond.get("status") == "True" else {}
    cond = wait_for(constrained, "CapacityConstrained", timeout=90)
    assert cond["reason"] == "BurstLimitReached", cond
    assert "wanted 3 replicas" in cond["message"] and "placed 2" in cond["message"]
    wait_for(lambda: len(running_pods(env, ns, "capped")) == 2, "2 replicas Running")
    assert not pending_pods(env, ns, "capped")
    # Anything else asking for GPUs in the namespace meets the quota (8 + 8, all in use).
    refused = env.gpu_pod(ns, "sneaky", pool, 1, None)
    assert "exceeded quota" in refused, refused


def test_h100_exhausted_falls_back_to_a10g_respecting_gpu_memory(
        env: Env, operator: Operator) -> None:
    big = env.pool("h", nodes=1, gpus=8)
    small = env.pool("s", nodes=2, gpus=1, memory_gib=24, price=0.75)
    ns, other = env.namespace("f"), env.namespace("g")
    assert env.gpu_pod(other, "filler", big, 8, None) == ""  # someone else holds the big pool
    wait_for(lambda: get(env, "pod", "filler", "-n", other)["status"].get("phase") == "Running",
             "filler Running")
    md(env, ns, "fits", [big.name, small.name], replicas=2, gpus=1, memory=20)
    md(env, ns, "toobig", [big.name, small.name], replicas=1, gpus=1, memory=40)

    def placed() -> dict[str, int]:
        st = get(env, "md", "fits", "-n", ns).get("status") or {}
        return {p["pool"]: p["replicas"] for p in st.get("placement", []) if p["replicas"]}
    assert wait_for(lambda: placed() == {small.name: 2} and placed(),
                    "fits placed on the small pool") == {small.name: 2}
    wait_for(lambda: len(running_pods(env, ns, "fits")) == 2, "2 replicas Running on small")
    nodes = {p["spec"]["nodeName"] for p in running_pods(env, ns, "fits")}
    assert nodes == {small.node_name(0), small.node_name(1)}

    def too_big() -> dict[str, Any]:
        cond = condition(get(env, "md", "toobig", "-n", ns), "CapacityConstrained")
        return cond if cond.get("status") == "True" else {}
    cond = wait_for(too_big, "toobig CapacityConstrained", timeout=60)
    assert "GPU memory 24 GiB < 40 GiB needed" in cond["message"], cond
    assert not running_pods(env, ns, "toobig")


def test_deleted_node_replicas_replaced_within_reservation_and_accounting_follows(
        env: Env, operator: Operator) -> None:
    pool = env.pool("n", nodes=3, gpus=8)  # 24 GPUs
    ns = env.namespace("n")
    res = env.reservation("n", pool.name, 16, [ns])
    md(env, ns, "steady", [pool.name], replicas=2, reservation=res)
    wait_for(lambda: len(running_pods(env, ns, "steady")) == 2, "2 replicas Running",
             timeout=120)
    victim = running_pods(env, ns, "steady")[0]["spec"]["nodeName"]
    env.stack.kubectl("delete", "node", victim)

    def replaced() -> bool:
        pods = running_pods(env, ns, "steady")
        return len(pods) == 2 and victim not in {p["spec"]["nodeName"] for p in pods}
    wait_for(replaced, "replicas re-placed off the deleted node", timeout=180)
    assert all(p["spec"].get("priorityClassName") == "dedicap-reserved"
               for p in running_pods(env, ns, "steady"))
    wait_for(lambda: (get(env, "gpupool", pool.name).get("status") or {}).get("totalGPUs") == 16,
             "pool shrinks to 16 GPUs")
    status = wait_for(lambda: (s := env.reservation_status(res)).get("usedGPUs") == 16 and s,
                      "reservation used 16")
    assert status["admitted"] and status["headroomGPUs"] == 0
    cost = wait_for(lambda: (get(env, "md", "steady", "-n", ns).get("status") or {}).get("cost"),
                    "cost")
    assert cost["gpus"] == 16 and cost["hourlyCost"] == pytest.approx(16 * 2.5)
    faults.record("node and zone loss", node_deleted=1, replicas_replaced_off_it=1)


def test_a_zone_drained_and_removed_moves_replicas_within_the_reservation_one_at_a_time(
        env: Env, operator: Operator) -> None:
    pool = env.pool("z", nodes=4, gpus=8)  # nodes 0, 2 in zone-a; 1, 3 in zone-b
    ns = env.namespace("z")
    res = env.reservation("z", pool.name, 16, [ns])
    zone_a, zone_b = [pool.node_name(0), pool.node_name(2)], [pool.node_name(1),
                                                              pool.node_name(3)]
    # Both replicas in zone-b, so that removing it must move them both.
    env.stack.kubectl("cordon", *zone_a)
    md(env, ns, "zonal", [pool.name], replicas=2, reservation=res)
    wait_for(lambda: len(running_pods(env, ns, "zonal")) == 2, "2 replicas Running",
             timeout=120)
    assert {p["spec"]["nodeName"] for p in running_pods(env, ns, "zonal")} == set(zone_b)

    def ready() -> list[dict[str, Any]]:
        return [p for p in running_pods(env, ns, "zonal") if any(
            c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get(
                "conditions") or [])]
    # A replica is Ready once its model serves (its tritonserver started), after Running.
    wait_for(lambda: len(ready()) == 2, "2 replicas Ready", timeout=120)
    env.stack.kubectl("uncordon", *zone_a)
    # What the PodDisruptionBudget (maxUnavailable 1) must hold while the zone drains.
    lowest = [2]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            lowest[0] = min(lowest[0], len(ready()))
            done.wait(0.2)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.monotonic()
    try:
        drained = env.stack.kubectl("drain", *zone_b, "--ignore-daemonsets",
                                    "--delete-emptydir-data", "--timeout=150s", check=False,
                                    timeout=200)
        assert drained.returncode == 0, drained.stderr[-2000:]
        for node in zone_b:
            env.stack.kubectl("delete", "node", node)
        wait_for(lambda: len(pods := running_pods(env, ns, "zonal")) == 2 and not {
            p["spec"]["nodeName"] for p in pods} & set(zone_b), "both replicas in zone-a",
            timeout=180)
    finally:
        done.set()
        sampler.join(timeout=5)
    moved_s = time.monotonic() - t0
    assert lowest[0] >= 1, "the drain took more than one replica at a time"
    # (Evictions the budget refused, drain retrying them, if the second came too early.)
    refused = sum(1 for line in (drained.stdout + drained.stderr).splitlines()
                  if "disruption budget" in line)
    assert all(p["spec"].get("priorityClassName") == "dedicap-reserved"
               for p in running_pods(env, ns, "zonal"))
    # Accounting: the pool is the zone left, the reservation is all in use, the cost follows.
    wait_for(lambda: (get(env, "gpupool", pool.name).get("status") or {}).get("totalGPUs") == 16,
             "pool shrinks to the zone left")
    status = wait_for(lambda: (s := env.reservation_status(res)).get("usedGPUs") == 16 and s,
                      "reservation used 16")
    assert status["admitted"] and status["headroomGPUs"] == 0
    wait_for(lambda: ((get(env, "md", "zonal", "-n", ns).get("status") or {}).get("cost")
                      or {}).get("gpus") == 16, "cost of 16 GPUs")
    faults.record("node and zone loss", zone_removed_nodes=2, replicas_moved=2,
                  fewest_ready_during_drain=lowest[0], evictions_refused_by_pdb=refused,
                  moved_in_s=round(moved_s, 1))


def test_kubectl_and_metrics_show_the_figures(env: Env, operator: Operator) -> None:
    pool = env.pool("m", nodes=2, gpus=8)
    ns = env.namespace("m")
    res = env.reservation("m", pool.name, 8, [ns], burst=8)
    over = env.reservation("mo", pool.name, 16, ["t5-nobody"])
    md(env, ns, "shown", [pool.name], replicas=2, reservation=res)
    wait_for(lambda: len(running_pods(env, ns, "shown")) == 2, "2 replicas Running",
             timeout=120)
    wait_for(lambda: env.reservation_status(res).get("burstGPUs") == 8, "burst in status")

    def row(kind: str, name: str) -> list[str]:
        out = env.stack.kubectl("get", kind, name).stdout.splitlines()
        return out[1].split()
    wait_for(lambda: row("gpupools", pool.name)[2:6] == ["2", "16", "16", "0"],
             "gpupool row NODES GPUS ALLOCATED FREE")
    assert row("capacityreservations", res)[1:6] == [pool.name, "8", "8", "0", "true"]
    assert row("capacityreservations", over)[-2] == "false"

    wanted = [f'dedicap_gpupool_gpus{{pool="{pool.name}",state="allocated"}} 16.0',
              f'dedicap_gpupool_gpus{{pool="{pool.name}",state="reserved"}} 8.0',
              f'dedicap_reservation_gpus{{pool="{pool.name}",reservation="{res}",'
              'state="used"} 8.0',
              f'dedicap_reservation_gpus{{pool="{pool.name}",reservation="{res}",'
              'state="burst"} 8.0',
              f'dedicap_reservation_admitted{{pool="{pool.name}",reservation="{over}"}} 0.0',
              # (the exposition sorts labels by name)
              f'dedicap_modeldeployment_gpus{{modeldeployment="shown",namespace="{ns}",'
              f'pool="{pool.name}"}} 16.0',
              f'dedicap_modeldeployment_hourly_cost{{modeldeployment="shown",namespace="{ns}",'
              f'pool="{pool.name}"}} 40.0']

    def missing() -> list[str]:
        text = operator.metrics()
        return [w for w in wanted if w not in text]
    deadline = time.monotonic() + 60
    while missing() and time.monotonic() < deadline:
        time.sleep(1)
    assert not missing(), (missing(), [line for line in operator.metrics().splitlines()
                                       if "modeldeployment_" in line and ns in line])


def _time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def test_gpu_hours_charge_the_time_the_operator_was_down(env: Env, operator: Operator) -> None:
    pool = env.pool("b", nodes=1, gpus=8)
    ns = env.namespace("b")
    res = env.reservation("b", pool.name, 8, [ns])
    md(env, ns, "billed", [pool.name], replicas=1, reservation=res)
    wait_for(lambda: len(running_pods(env, ns, "billed")) == 1, "1 replica Running",
             timeout=120)
    pods = {p["metadata"]["uid"] for p in running_pods(env, ns, "billed")}

    def cost() -> dict[str, Any]:
        return dict((get(env, "md", "billed", "-n", ns).get("status") or {}).get("cost") or {})
    wait_for(lambda: cost().get("gpus") == 8, "8 GPUs held")
    # A crash: what the dead operator last wrote is the record the next one starts from.
    operator.kill()
    down_at = time.time()
    before = cost()
    assert before["gpus"] == 8 and before.get("accountedAt"), before
    time.sleep(20)
    operator.start()
    up_at = time.time()

    def resumed() -> dict[str, Any]:
        c = cost()
        return c if c.get("accountedAt") and _time(c["accountedAt"]).timestamp() >= up_at else {}
    # (The record found states the integral exactly while the pods stay as they are, so the
    # restarted operator rewrites it only once it is older than the rewrite interval.)
    after = wait_for(resumed, "the restarted operator's status.cost", timeout=90)
    # The pods held their GPUs all along (nobody touched them).
    assert {p["metadata"]["uid"] for p in running_pods(env, ns, "billed")} == pods
    assert after["gpus"] == 8 and after["since"] == before["since"]
    # 8 GPUs held over the whole span between the two records, the downtime included: the
    # growth is exactly 8 x that span (it would be about 8 x the few seconds since the restart
    # if the downtime went uncharged).
    span = (_time(after["accountedAt"]) - _time(before["accountedAt"])).total_seconds()
    assert span >= up_at - down_at >= 20
    grown = after["gpuHours"] - before["gpuHours"]
    assert grown == pytest.approx(8 * span / 3600, rel=1e-3, abs=2e-6), (before, after)
    # The restarted process's per-pool series includes the gap too.
    series = (f'dedicap_modeldeployment_gpu_hours{{modeldeployment="billed",namespace="{ns}",'
              f'pool="{pool.name}"}} ')

    def pool_hours() -> float:
        for line in operator.metrics().splitlines():
            if line.startswith(series):
                return float(line.split()[-1])
        return 0.0
    hours = wait_for(pool_hours, "per-pool GPU-hours exported", timeout=30)
    assert hours >= 8 * (up_at - down_at) / 3600 * 0.99
    # Steady pods, steady status: each status write is an event that reconciles the
    # ModelDeployment again, so writing the growing gpuHours every time would never stop.
    versions = set()
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline:
        versions.add(get(env, "md", "billed", "-n", ns)["metadata"]["resourceVersion"])
        time.sleep(0.2)
    assert len(versions) <= 3, f"{len(versions)} status writes in 8 s"
