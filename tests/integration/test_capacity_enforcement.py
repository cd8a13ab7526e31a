"""Capacity enforcement on the real local stack, by the API server and the scheduler themselves:
admission of reservations, the tenant quota refusing pods, read-only tenant RBAC, and a reserved
pod preempting a burst pod. The capacity reconcile runs in-process here; the operator-driven
scenarios are in test_capacity_operator.py.

Each test works on a pool of its own simulated nodes (labels and a taint unique to the test), so
other tests sharing the cluster neither see these GPUs nor disturb them.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest

from dedicap.controller import capacity
from dedicap.controller.kube import Kube, load_config
from dedicap.decide import capacity_objects as co
from testkit import SimPool, wait_for

pytestmark = pytest.mark.integration



@dataclass
class Env:
    stack: Any
    kube: Kube
    id: str
    pools: list[SimPool] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)
    reservations: list[str] = field(default_factory=list)

    def pool(self, suffix: str, nodes: int, gpus: int, **kw: Any) -> SimPool:
        p = SimPool(self.stack, f"t5{suffix}-{self.id}", nodes, gpus, **kw)
        self.pools.append(p)
        p.create()
        return p

    def namespace(self, suffix: str) -> str:
        ns = f"t5-{suffix}-{self.id}"
        self.stack.kubectl("create", "namespace", ns)
        self.namespaces.append(ns)
        return ns

    def reservation(self, suffix: str, pool: str, gpus: int, namespaces: list[str],
                    burst: int | None = None) -> str:
        name = f"t5-{suffix}-{self.id}"
        spec: dict[str, Any] = {"namespaces": namespaces, "pool": pool, "gpus": gpus}
        if burst is not None:
            spec["burst"] = {"maxGPUs": burst}
        self.stack.kubectl("apply", "-f", "-", input=json.dumps({
            "apiVersion": "dedicap.dev/v1alpha1", "kind": "CapacityReservation",
            "metadata": {"name": name}, "spec": spec}))
        self.reservations.append(name)
        # Creation order decides admission; timestamps have a resolution of one second.
        time.sleep(1.1)
        return name

    def reconcile(self) -> capacity.Outcome:
        return capacity.reconcile(self.kube, datetime.now(UTC))

    def reservation_status(self, name: str) -> dict[str, Any]:
        out = json.loads(self.stack.kubectl("get", "capacityreservation", name, "-o",
                                            "json").stdout)
        return dict(out.get("status") or {})

    def gpu_pod(self, ns: str, name: str, pool: SimPool, gpus: int, priority_class: str | None
                ) -> str:
        spec: dict[str, Any] = {
            "nodeSelector": {"dedicap.dev/pool": pool.name}, "tolerations": pool.tolerations(),
            "containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10", "resources": {
                "requests": {"nvidia.com/gpu": str(gpus)},
                "limits": {"nvidia.com/gpu": str(gpus)}}}]}
        if priority_class:
            spec["priorityClassName"] = priority_class
        proc = self.stack.kubectl("apply", "-f", "-", check=False, input=json.dumps({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns},
            "spec": spec}))
        return str(proc.stdout + proc.stderr) if proc.returncode else ""


@pytest.fixture
def env(stack: Any) -> Iterator[Env]:
    e = Env(stack, Kube(load_config(str(stack.kubeconfig))), uuid.uuid4().hex[:6])
    yield e
    for r in e.reservations:
        stack.kubectl("delete", "capacityreservation", r, "--ignore-not-found", check=False)
    for ns in e.namespaces:
        stack.kubectl("delete", "namespace", ns, "--ignore-not-found", "--wait=false",
                      check=False)
    for p in e.pools:
        p.delete()
    # Leave no quota behind for namespaces whose reservations are gone.
    e.reconcile()


def test_overcommitting_reservation_is_refused_with_the_gpus_left(env: Env) -> None:
    pool = env.pool("h", nodes=4, gpus=8)  # 32 GPUs
    a = env.reservation("a", pool.name, 16, ["t5-x"])
    b = env.reservation("b", pool.name, 10, ["t5-y"])
    c = env.reservation("c", pool.name, 8, ["t5-z"])
    env.reconcile()
    sa, sb, sc = (env.reservation_status(n) for n in (a, b, c))
    assert sa["admitted"] and sb["admitted"] and not sc["admitted"]
    assert "6 GPUs left, 8 asked" in sc["message"]
    admitted = next(x for x in sc["conditions"] if x["type"] == "Admitted")
    assert admitted["status"] == "False" and admitted["reason"] == "PoolOvercommitted"
    assert 16 + 10 <= 32
    table = env.stack.kubectl("get", "capacityreservations", a, b, c).stdout
    rows = {line.split()[0]: line.split() for line in table.splitlines()[1:]}
    assert rows[c][1:3] == [pool.name, "8"] and "false" in rows[c]
    assert rows[a][1:3] == [pool.name, "16"] and "true" in rows[a]
    # Removing a frees room: c fits now (the admitted ones still sum to at most the pool).
    env.stack.kubectl("delete", "capacityreservation", a)
    env.reconcile()
    assert env.reservation_status(c)["admitted"]


def test_quota_refuses_pods_beyond_reservation_plus_burst(env: Env) -> None:
    pool = env.pool("q", nodes=1, gpus=8)
    ns = env.namespace("q")
    env.reservation("q", pool.name, 2, [ns], burst=1)
    env.reconcile()
    quota = json.loads(env.stack.kubectl("get", "resourcequota", co.QUOTA_NAME, "-n", ns,
                                         "-o", "json").stdout)
    assert quota["spec"]["hard"] == {"requests.nvidia.com/gpu": "3"}
    # Until the quota controller has filled in status.hard the API server refuses every pod
    # ("status unknown for quota"); from then on the admission plugin counts synchronously.
    wait_for(lambda: json.loads(env.stack.kubectl(
        "get", "resourcequota", co.QUOTA_NAME, "-n", ns, "-o", "json").stdout).get(
            "status", {}).get("hard"), "quota status")
    assert env.gpu_pod(ns, "first", pool, 2, co.RESERVED_CLASS) == ""
    refused = env.gpu_pod(ns, "second", pool, 2, co.BURST_CLASS)
    assert "exceeded quota" in refused and co.QUOTA_NAME in refused
    assert env.gpu_pod(ns, "third", pool, 1, co.BURST_CLASS) == ""


def test_tenants_read_their_quota_and_models_but_no_reservation(env: Env) -> None:
    """A tenant's service accounts read their namespace's quota and ModelDeployments (the
    RoleBinding of dedicap-tenant-view the capacity reconcile writes) and no reservation at
    all: reservations are cluster-scoped, and reading one would expose every tenant's."""
    pool = env.pool("r", nodes=1, gpus=8)
    ns = env.namespace("r")
    name = env.reservation("r", pool.name, 1, [ns])
    env.reconcile()
    as_tenant = ["--as", f"system:serviceaccount:{ns}:default",
                 "--as-group", f"system:serviceaccounts:{ns}",
                 "--as-group", "system:serviceaccounts", "--as-group", "system:authenticated"]

    def can(*args: str) -> bool:
        proc = env.stack.kubectl("auth", "can-i", *args, *as_tenant, check=False)
        return proc.stdout.strip() == "yes"

    assert can("get", "resourcequotas", "-n", ns)
    assert can("list", "modeldeployments.dedicap.dev", "-n", ns)
    assert not can("list", "modeldeployments.dedicap.dev", "-n", "default")
    assert not can("get", f"capacityreservations.dedicap.dev/{name}")
    assert not can("list", "capacityreservations.dedicap.dev")
    for verb in ("create", "patch", "delete"):
        assert not can(verb, "capacityreservations.dedicap.dev")
        assert not can(verb, "resourcequotas", "-n", ns)
        assert not can(verb, "priorityclasses.scheduling.k8s.io")
    # And for real, not only as the authorizer's answer:
    proc = env.stack.kubectl("patch", "capacityreservation", name, "--type=merge", "-p",
                             '{"spec":{"gpus":8}}', *as_tenant, check=False)
    assert proc.returncode != 0 and "forbidden" in proc.stderr.lower()
    quota = env.stack.kubectl("get", "resourcequota", co.QUOTA_NAME, "-n", ns, "-o", "json",
                              *as_tenant)
    assert json.loads(quota.stdout)["metadata"]["annotations"][co.ANNOTATION_RESERVATIONS] == name


def _phase(env: Env, ns: str, name: str) -> tuple[str, str]:
    proc = env.stack.kubectl("get", "pod", name, "-n", ns, "-o", "json", check=False)
    if proc.returncode:
        return ("Gone", "")
    pod = json.loads(proc.stdout)
    return (pod.get("status", {}).get("phase", ""), pod.get("spec", {}).get("nodeName", ""))


def test_reserved_pod_preempts_burst_pods_and_burst_preempts_nobody(env: Env) -> None:
    pool = env.pool("p", nodes=2, gpus=8)  # 16 GPUs
    borrower, owner = env.namespace("borrow"), env.namespace("own")
    for i in range(2):
        assert env.gpu_pod(borrower, f"burst-{i}", pool, 8, co.BURST_CLASS) == ""
    for i in range(2):
        wait_for(lambda i=i: _phase(env, borrower, f"burst-{i}")[0] == "Running",  # type: ignore[misc]
                 f"burst-{i} Running")
    # A second borrower cannot push the first out: burst never preempts.
    assert env.gpu_pod(borrower, "burst-late", pool, 8, co.BURST_CLASS) == ""
    time.sleep(3)
    assert _phase(env, borrower, "burst-late")[1] == ""
    assert all(_phase(env, borrower, f"burst-{i}")[0] == "Running" for i in range(2))
    # The reservation holder takes its GPUs back: the scheduler evicts one burst pod.
    assert env.gpu_pod(owner, "reserved-0", pool, 8, co.RESERVED_CLASS) == ""
    wait_for(lambda: _phase(env, owner, "reserved-0")[0] == "Running", "reserved-0 Running",
             timeout=90)
    phases = [_phase(env, borrower, f"burst-{i}")[0] for i in range(2)]
    assert phases.count("Running") == 1, phases
    assert _phase(env, borrower, "burst-late")[1] == ""
