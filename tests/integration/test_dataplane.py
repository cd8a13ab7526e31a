"""The local data plane on the real stack: every Running pod of a ModelDeployment on a simulated
GPU node gets a real tritonserver, scraped by the stack's Prometheus with the pod's labels; load
reaches every replica; a pod that goes away takes its process with it."""

from __future__ import annotations

import json
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from dedicap_local import dataplane as dp
from dedicap_local import loadgen, procs, prometheus, triton
from dedicap_local import stack as stk
from testkit import prom_query as query
from testkit import wait_for

pytestmark = pytest.mark.integration

MD = "chat"


@pytest.fixture
def namespace(stack: stk.Stack) -> Iterator[str]:
    name = f"dp-{uuid.uuid4().hex[:8]}"
    stack.kubectl("create", "namespace", name)
    yield name
    stack.kubectl("delete", "namespace", name, "--wait=false", check=False)


def model_pods(name: str, replicas: int, prestop_s: int | None = None) -> dict[str, Any]:
    """Pods as the operator renders them: labelled with their ModelDeployment and pool, bound
    to h100 GPU nodes, running Triton with --load-model (and a preStop pause, if given)."""
    lifecycle = ({} if prestop_s is None
                 else {"lifecycle": {"preStop": {"sleep": {"seconds": prestop_s}}}})
    labels = {"app": name, "dedicap.dev/modeldeployment": MD, "dedicap.dev/pool": "h100"}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": labels,
                             "annotations": {"dedicap.dev/sim-base-ms": "5",
                                             "dedicap.dev/sim-per-item-ms": "1"}},
                "spec": {
                    "nodeSelector": {"dedicap.dev/pool": "h100"},
                    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists",
                                     "effect": "NoSchedule"}],
                    "containers": [{
                        "name": "triton", "image": "nvcr.io/nvidia/tritonserver:24.10-py3",
                        "args": ["tritonserver", "--model-repository=s3://models",
                                 "--model-control-mode=explicit", f"--load-model={MD}-v1"],
                        "resources": {"limits": {"nvidia.com/gpu": "1"}},
                        **lifecycle,
                    }],
                },
            },
        },
    }


def running_pods(stack: stk.Stack, ns: str) -> set[str]:
    out = json.loads(stack.kubectl("get", "pods", "-n", ns, "-o", "json").stdout)
    return {p["metadata"]["name"] for p in out["items"]
            if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")}


def scraped_pods(stack: stk.Stack, ns: str) -> dict[str, dict[str, str]]:
    series = query(stack.prometheus_url,
                   f'nv_inference_request_success{{namespace="{ns}",modeldeployment="{MD}"}}')
    return {s["metric"]["pod"]: s["metric"] for s in series}


def test_a_tritonserver_per_running_pod(stack: stk.Stack, namespace: str) -> None:
    assert stk.status(stack)["dataplane"], "the stack runs the data plane"
    stack.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(model_pods("chat", 2)))
    pods = wait_for(lambda: (p := running_pods(stack, namespace)) and len(p) == 2 and p,
                      "2 Running pods", timeout=90)

    # One scraped tritonserver per pod, with the pod's identity as labels.
    scraped = wait_for(lambda: (s := scraped_pods(stack, namespace)) and set(s) == pods and s,
                         "Prometheus scraping one Triton per pod", timeout=90)
    for name, labels in scraped.items():
        assert labels["modeldeployment"] == MD and labels["pool"] == "h100"
        assert labels["namespace"] == namespace and labels["pod"] == name
        assert labels["model"] == f"{MD}-v1"
        assert labels["node"].startswith("h100-")

    # Load through the endpoints reaches both replicas and shows up in Prometheus.
    endpoints = loadgen.endpoints_for(namespace, MD, stack.run_dir)
    assert {e["pod"] for e in endpoints.current()} == pods
    report = loadgen.run_profile(endpoints, [loadgen.Step(3, 10)], seed=3, timeout_s=10)
    assert report.sent > 10 and report.failed == 0, report.summary()
    assert set(report.per_endpoint) == pods
    total = f'sum(nv_inference_request_success{{namespace="{namespace}",modeldeployment="{MD}"}})'
    wait_for(lambda: (r := query(stack.prometheus_url, total))
               and float(r[0]["value"][1]) == report.succeeded, "Prometheus counting the load",
               timeout=90)

    # A deleted pod takes its process, its target and its endpoint with it; its replacement
    # gets its own.
    victim = sorted(pods)[0]
    key = dp.instance_key(namespace, victim)
    handle = triton.find_triton(stack.run_dir, key)
    assert handle is not None and handle.pid is not None
    stack.kubectl("delete", "pod", "-n", namespace, victim, "--wait=false")
    wait_for(lambda: triton.find_triton(stack.run_dir, key) is None, "the process to stop",
             timeout=90)
    assert key not in prometheus.list_targets(stack.run_dir)
    assert not procs.port_open(handle.http_port)
    new_pods = wait_for(lambda: (p := running_pods(stack, namespace)) and len(p) == 2
                          and victim not in p and p, "a replacement pod", timeout=90)
    wait_for(lambda: set(scraped_pods(stack, namespace)) == new_pods
               and {e["pod"] for e in dp.read_endpoints(stack.run_dir, namespace, MD)} == new_pods,
               "the replacement scraped and routed", timeout=90)

    # Scaled to zero: nothing of it stays running.
    stack.kubectl("scale", "deployment", "-n", namespace, "chat", "--replicas=0")
    wait_for(lambda: not any(h.name.startswith(f"pod.{namespace}.")
                               for h in triton.list_instances(stack.run_dir)),
               "every process to stop", timeout=90)
    wait_for(lambda: not dp.endpoints_file(stack.run_dir, namespace, MD).exists(),
               "the endpoints to go", timeout=90)


def served(handle: triton.TritonHandle) -> float:
    """Requests the server answered so far, from its own metrics page."""
    with urllib.request.urlopen(handle.metrics_url, timeout=5) as response:
        text = response.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("nv_inference_request_success{"))


def test_a_scale_down_under_load_loses_no_request(stack: stk.Stack, namespace: str) -> None:
    """Replicas removed while clients call: they leave the endpoints first and stop after their
    preStop pause, so no request is sent to a server that is gone."""
    stack.kubectl("apply", "-n", namespace, "-f", "-",
                  input=json.dumps(model_pods("chat", 3, prestop_s=3)))
    wait_for(lambda: len(dp.read_endpoints(stack.run_dir, namespace, MD)) == 3,
             "3 replicas routed", timeout=120)
    endpoints = loadgen.endpoints_for(namespace, MD, stack.run_dir)
    load = loadgen.Background(endpoints, [loadgen.Step(120, 30)], seed=5, timeout_s=10)
    handles = [h for h in triton.list_instances(stack.run_dir)
               if h.name.startswith(f"pod.{namespace}.")]
    wait_for(lambda: all(served(h) > 0 for h in handles), "every replica serving the load",
             timeout=60)
    stack.kubectl("scale", "deployment", "-n", namespace, "chat", "--replicas=1")

    def one_left() -> bool:
        return (len(dp.read_endpoints(stack.run_dir, namespace, MD)) == 1
                and sum(h.name.startswith(f"pod.{namespace}.")
                        for h in triton.list_instances(stack.run_dir)) == 1)

    wait_for(one_left, "the removed replicas drained and stopped", timeout=90)
    assert load.running(), "the load outlasted the scale-down"
    report = load.stop()
    assert report.sent > 100, report.summary()
    assert report.failed == 0 and report.no_endpoints == 0, report.summary()
    assert len(report.per_endpoint) == 3, "every replica took load before it went"
