"""The operator (`dedicap run`, a real process) against the real local stack.

It serves only this module's namespaces (`dcp-op-*`) and uses a peering object of its own, so
an operator someone else runs on the same stack neither pauses it nor is paused by it. The
example GPUPools of deploy/examples are applied as they are (h100: 4 nodes x 8 GPUs, a10g: 6
nodes x 1 GPU); each test uses a few GPUs only.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testkit import OperatorProcess as Operator
from testkit import install_api, kget, release_operator_state, wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "deploy" / "examples"
CHILD_KINDS = "deployments,services,poddisruptionbudgets,networkpolicies"


@pytest.fixture(scope="module")
def operator(stack: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    install_api(stack)
    op = Operator(stack, tmp_path_factory.mktemp("operator"), [
        "--namespace", "dcp-op-*", "--peering-lifetime", "6",
        "--pool-refresh-seconds", "2", "--resync-seconds", "5", "--verbose",
    ], peering=f"dedicap-test-{uuid.uuid4().hex[:6]}")
    op.start()
    yield op
    op.stop()
    release_operator_state(stack, op.peering)


@pytest.fixture
def namespace(stack: Any, operator: Operator) -> Iterator[str]:
    name = f"dcp-op-{uuid.uuid4().hex[:6]}"
    stack.kubectl("create", "namespace", name)
    yield name
    stack.kubectl("delete", "namespace", name, "--wait=false", check=False)


def apply_example(stack: Any, namespace: str, example: str = "modeldeployment-fixed.yaml",
                  **spec_changes: Any) -> dict[str, Any]:
    import yaml

    doc = yaml.safe_load((EXAMPLES / example).read_text())
    doc["metadata"]["namespace"] = namespace
    doc["spec"].update(spec_changes)
    stack.kubectl("apply", "-f", "-", input=json.dumps(doc))
    return dict(doc)


def children(stack: Any, namespace: str) -> dict[str, list[str]]:
    items = kget(stack, CHILD_KINDS, "-n", namespace,
                 "-l", "app.kubernetes.io/managed-by=dedicap")["items"]
    out: dict[str, list[str]] = {}
    for item in items:
        out.setdefault(item["kind"], []).append(item["metadata"]["name"])
    return {k: sorted(v) for k, v in out.items()}


def md_status(stack: Any, namespace: str, name: str = "chat") -> dict[str, Any]:
    return dict(kget(stack, "md", name, "-n", namespace).get("status") or {})


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions", []) if c["type"] == type_), {})


def running_pods(stack: Any, namespace: str) -> list[dict[str, Any]]:
    pods = kget(stack, "pods", "-n", namespace,
                "-l", "dedicap.dev/modeldeployment=chat")["items"]
    return [p for p in pods if p["status"].get("phase") == "Running"
            and not p["metadata"].get("deletionTimestamp")]


def node_pools(stack: Any) -> dict[str, str]:
    return {n["metadata"]["name"]: n["metadata"]["labels"].get("dedicap.dev/pool", "")
            for n in kget(stack, "nodes")["items"]}


def test_example_creates_triton_children_and_becomes_ready(stack: Any, namespace: str,
                                                            operator: Operator) -> None:
    apply_example(stack, namespace)
    stack.kubectl("wait", "--for=condition=Ready", "md/chat", "-n", namespace, "--timeout=90s")
    assert children(stack, namespace) == {
        "Deployment": ["chat-h100"], "NetworkPolicy": ["chat"], "PodDisruptionBudget": ["chat"],
        "Service": ["chat"]}
    md = kget(stack, "md", "chat", "-n", namespace)
    dep = kget(stack, "deployment", "chat-h100", "-n", namespace)
    assert dep["metadata"]["ownerReferences"][0]["uid"] == md["metadata"]["uid"]
    pod = dep["spec"]["template"]["spec"]
    (triton,) = pod["containers"]
    assert "--model-control-mode=explicit" in triton["args"]
    assert "--load-model=chat" in triton["args"]
    assert "--metrics-config=summary_latencies=true" in triton["args"]
    assert triton["readinessProbe"]["httpGet"]["path"] == "/v2/models/chat/ready"
    assert triton["startupProbe"]["httpGet"]["path"] == "/v2/models/chat/ready"
    assert triton["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert triton["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert {c["topologyKey"] for c in pod["topologySpreadConstraints"]} == {
        "kubernetes.io/hostname", "topology.kubernetes.io/zone"}
    svc = kget(stack, "service", "chat", "-n", namespace)
    assert {p["name"]: p["port"] for p in svc["spec"]["ports"]} == {
        "http": 8000, "grpc": 8001, "metrics": 8002}
    netpol = kget(stack, "networkpolicy", "chat", "-n", namespace)
    peers = [p for rule in netpol["spec"]["ingress"] for p in rule["from"]]
    assert {"podSelector": {}} in peers
    assert {"namespaceSelector": {"matchLabels": {
        "kubernetes.io/metadata.name": "frontend"}}} in peers
    pdb = kget(stack, "pdb", "chat", "-n", namespace)
    assert pdb["spec"]["maxUnavailable"] == 1
    # The replicas run on simulated nodes of the h100 pool.
    pools = node_pools(stack)
    pods = running_pods(stack, namespace)
    assert len(pods) == 2 and {pools[p["spec"]["nodeName"]] for p in pods} == {"h100"}
    # `kubectl get md` shows the columns.
    table = stack.kubectl("get", "md", "-n", namespace).stdout.splitlines()
    assert table[0].split()[:8] == ["NAME", "READY", "REPLICAS", "POOL", "P95", "TTFT", "ERRORS",
                                    "SLO"]
    assert table[1].split()[:4] == ["chat", "2", "2", "h100"]
    status = md_status(stack, namespace)
    assert status["selector"] == "dedicap.dev/modeldeployment=chat"
    assert condition(status, "Ready")["observedGeneration"] == md["metadata"]["generation"]
    events = kget(stack, "events", "-n", namespace,
                  "--field-selector", "involvedObject.kind=ModelDeployment")["items"]
    assert {"Created", "Placed"} <= {e["reason"] for e in events}


def test_reapplying_an_unchanged_spec_changes_nothing(stack: Any, namespace: str,
                                                      operator: Operator) -> None:
    apply_example(stack, namespace)
    stack.kubectl("wait", "--for=condition=Ready", "md/chat", "-n", namespace, "--timeout=90s")
    time.sleep(2)

    def versions() -> dict[str, str]:
        items = kget(stack, CHILD_KINDS, "-n", namespace)["items"]
        return {f"{i['kind']}/{i['metadata']['name']}": i["metadata"]["resourceVersion"]
                for i in items}
    before = versions()
    # Touch the ModelDeployment (a label) to trigger reconciles, and sit through a resync.
    stack.kubectl("label", "md/chat", "-n", namespace, "touched=yes")
    time.sleep(7)
    assert versions() == before


def test_kubectl_scale_goes_through_the_scale_subresource(stack: Any, namespace: str,
                                                          operator: Operator) -> None:
    apply_example(stack, namespace)
    stack.kubectl("wait", "--for=condition=Ready", "md/chat", "-n", namespace, "--timeout=90s")
    stack.kubectl("scale", "md/chat", "-n", namespace, "--replicas=3")
    wait_for(lambda: kget(stack, "deployment", "chat-h100", "-n", namespace)["status"].get(
        "readyReplicas") == 3, "the Triton Deployment to run 3 ready replicas")
    wait_for(lambda: md_status(stack, namespace).get("replicas") == 3, "status.replicas == 3")
    scale = kget(stack, "md", "chat", "-n", namespace, "--subresource=scale")
    assert scale["spec"]["replicas"] == 3 and scale["status"]["replicas"] == 3
    assert scale["status"]["selector"] == "dedicap.dev/modeldeployment=chat"


def test_spec_edits_roll_the_children(stack: Any, namespace: str, operator: Operator) -> None:
    apply_example(stack, namespace)
    stack.kubectl("wait", "--for=condition=Ready", "md/chat", "-n", namespace, "--timeout=90s")

    def template(name: str = "chat-h100") -> dict[str, Any]:
        return dict(kget(stack, "deployment", name, "-n", namespace)["spec"]["template"])

    def rolled_out(name: str) -> bool:
        dep = kget(stack, "deployment", name, "-n", namespace)
        st = dep["status"]
        return bool(st.get("observedGeneration", 0) >= dep["metadata"]["generation"]
                    and st.get("updatedReplicas") == st.get("replicas") == dep["spec"]["replicas"]
                    == st.get("readyReplicas"))

    # Image tag.
    stack.kubectl("patch", "md/chat", "-n", namespace, "--type=merge", "-p", json.dumps(
        {"spec": {"triton": {"image": "nvcr.io/nvidia/tritonserver:25.02-py3"}}}))
    wait_for(lambda: template()["spec"]["containers"][0]["image"].endswith(":25.02-py3"),
             "the new image in the pod template")
    wait_for(lambda: rolled_out("chat-h100"), "the image rollout")
    pods = running_pods(stack, namespace)
    assert {p["spec"]["containers"][0]["image"].split(":")[-1] for p in pods} == {"25.02-py3"}

    # GPUs per replica.
    stack.kubectl("patch", "md/chat", "-n", namespace, "--type=merge", "-p",
                  json.dumps({"spec": {"resources": {"gpusPerReplica": 2}}}))
    wait_for(lambda: template()["spec"]["containers"][0]["resources"]["requests"][
        "nvidia.com/gpu"] == "2", "2 GPUs per replica in the pod template")
    wait_for(lambda: rolled_out("chat-h100"), "the GPU rollout")

    # Pool: h100 -> a10g (1 GPU per replica fits its nodes); make-before-break.
    stack.kubectl("patch", "md/chat", "-n", namespace, "--type=merge", "-p", json.dumps(
        {"spec": {"resources": {"gpusPerReplica": 1}, "placement": {"pools": ["a10g"]}}}))
    wait_for(lambda: children(stack, namespace).get("Deployment") == ["chat-a10g"],
             "chat-a10g to replace chat-h100", timeout=90)
    pools = node_pools(stack)
    wait_for(lambda: [pools[p["spec"]["nodeName"]] for p in running_pods(stack, namespace)]
             == ["a10g", "a10g"], "both replicas on a10g nodes", timeout=60)
    stack.kubectl("wait", "--for=condition=Ready", "md/chat", "-n", namespace, "--timeout=60s")
    status = md_status(stack, namespace)
    assert status["pools"] == "a10g"
    assert [p["pool"] for p in status["placement"]] == ["a10g"]
    events = kget(stack, "events", "-n", namespace,
                  "--field-selector", "involvedObject.name=chat")["items"]
    reasons = {e["reason"] for e in events}
    assert {"RollingUpdate", "Deleted"} <= reasons, reasons


def test_deleting_the_modeldeployment_garbage_collects_children(
        stack: Any, namespace: str, operator: Operator) -> None:
    apply_example(stack, namespace)
    stack.kubectl("wait", "--for=condition=Ready", "md/chat", "-n", namespace, "--timeout=90s")
    stack.kubectl("delete", "md/chat", "-n", namespace, "--wait=true", "--timeout=30s")
    wait_for(lambda: children(stack, namespace) == {}, "the garbage collector", timeout=60)
    wait_for(lambda: not kget(stack, "pods", "-n", namespace)["items"], "pods to go", timeout=60)


def test_unplaceable_specs_say_what_to_change(stack: Any, namespace: str,
                                              operator: Operator) -> None:
    cases = {
        "UnknownPool": ({"placement": {"pools": ["nosuchpool"]}}, "spec.placement.pools"),
        "ReplicaDoesNotFitNode": ({"placement": {"pools": ["h100"]},
                                   "resources": {"gpusPerReplica": 16}}, "gpusPerReplica=16"),
        "InsufficientGPUMemory": ({"placement": {"pools": ["a10g"]},
                                   "resources": {"gpuMemoryGiB": 40}}, "gpuMemoryGiB"),
    }
    import yaml

    base = yaml.safe_load((EXAMPLES / "modeldeployment-fixed.yaml").read_text())
    for i, (spec, _) in enumerate(cases.values()):
        doc = json.loads(json.dumps(base))
        doc["metadata"] = {"name": f"bad{i}", "namespace": namespace}
        doc["spec"].update(spec)
        stack.kubectl("apply", "-f", "-", input=json.dumps(doc))
    for i, (reason, (_, hint)) in enumerate(cases.items()):
        ready = wait_for(lambda i=i, reason=reason: (
            (c := condition(md_status(stack, namespace, f"bad{i}"), "Ready")).get("reason")
            == reason and c), f"Ready=False reason {reason}")
        assert ready["status"] == "False" and hint in ready["message"], ready
        degraded = condition(md_status(stack, namespace, f"bad{i}"), "Degraded")
        assert degraded["status"] == "True"
    assert "Deployment" not in children(stack, namespace)
    warnings = kget(stack, "events", "-n", namespace, "--field-selector", "type=Warning")["items"]
    assert set(cases) <= {e["reason"] for e in warnings}


def test_sigkill_mid_reconcile_then_restart_converges_without_duplicates(
        stack: Any, namespace: str, operator: Operator) -> None:
    rng = random.Random(7)
    apply_example(stack, namespace)
    edits = [
        {"replicas": 3},
        {"triton": {"image": "nvcr.io/nvidia/tritonserver:25.02-py3"}},
        {"placement": {"pools": ["a10g", "h100"]}, "replicas": 2},
        {"replicas": 4, "placement": {"pools": ["h100", "a10g"]}},
    ]
    for edit in edits:
        stack.kubectl("patch", "md/chat", "-n", namespace, "--type=merge", "-p",
                      json.dumps({"spec": edit}))
        # Kill while the operator is applying children and writing status.
        time.sleep(rng.uniform(0.05, 0.6))
        operator.kill()
        operator.start()
    stack.kubectl("wait", "--for=condition=Ready", "md/chat", "-n", namespace, "--timeout=120s")

    def converged() -> bool:
        dep = kget(stack, "deployment", "chat-h100", "-n", namespace)
        st = dep["status"]
        return bool(children(stack, namespace) == {
            "Deployment": ["chat-h100"], "NetworkPolicy": ["chat"],
            "PodDisruptionBudget": ["chat"], "Service": ["chat"]}
            and dep["spec"]["replicas"] == 4 and st.get("updatedReplicas") == 4
            and st.get("replicas") == 4 and len(running_pods(stack, namespace)) == 4)
    wait_for(converged, "exactly one set of children with 4 replicas", timeout=120,
             interval=1.0)
    dep = kget(stack, "deployment", "chat-h100", "-n", namespace)
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"].endswith(":25.02-py3")
    # Every child is owned once, by the live ModelDeployment; no same-named twins exist.
    uid = kget(stack, "md", "chat", "-n", namespace)["metadata"]["uid"]
    for item in kget(stack, CHILD_KINDS, "-n", namespace)["items"]:
        assert [r["uid"] for r in item["metadata"]["ownerReferences"]] == [uid]
    assert md_status(stack, namespace)["replicas"] == 4


def test_gpupool_status_matches_the_pods_bound_to_its_nodes(
        stack: Any, namespace: str, operator: Operator) -> None:
    apply_example(stack, namespace, replicas=3)
    stack.kubectl("wait", "--for=condition=Ready", "md/chat", "-n", namespace, "--timeout=90s")

    def bound() -> dict[str, int]:
        pools = node_pools(stack)
        out = {"h100": 0, "a10g": 0}
        for pod in kget(stack, "pods", "-A")["items"]:
            node = pod["spec"].get("nodeName")
            if not node or pod["status"].get("phase") in ("Succeeded", "Failed"):
                continue
            gpus = sum(int(c.get("resources", {}).get("requests", {}).get("nvidia.com/gpu", 0))
                       for c in pod["spec"]["containers"])
            if pools.get(node) in out:
                out[pools[node]] += gpus
        return out

    def matches() -> bool:
        expected = bound()
        table = {line.split()[0]: line.split() for line in stack.kubectl(
            "get", "gpupools", "--no-headers").stdout.splitlines()}
        # NAME GPU NODES GPUS ALLOCATED FREE AGE
        ok = all(int(table[p][4]) == expected[p] and int(table[p][5]) == int(table[p][3])
                 - expected[p] for p in expected)
        return ok and bound() == expected  # no pod moved while we looked
    wait_for(matches, "GPUPool ALLOCATED/FREE to match the bound pods", timeout=30)
    assert bound()["h100"] >= 3
    header = stack.kubectl("get", "gpupools").stdout.splitlines()[0].split()
    assert header[:6] == ["NAME", "GPU", "NODES", "GPUS", "ALLOCATED", "FREE"]


def test_peering_lets_one_of_two_operators_act(stack: Any, namespace: str,
                                              operator: Operator, tmp_path: Path) -> None:
    """A second operator with a lower priority stays paused while the first lives, and takes
    over when the first goes away."""
    assert operator.peering
    second = Operator(stack, tmp_path, ["--namespace", "dcp-op-*", "--priority", "0",
                                        "--peering-lifetime", "6"], peering=operator.peering)

    def second_acted() -> bool:
        return f"{namespace}/chat" in second.log.read_text(errors="replace")

    def peers() -> int:
        got = stack.kubectl("get", "clusterkopfpeering", operator.peering, "-o", "json",
                            check=False)
        return len(json.loads(got.stdout).get("status") or {}) if got.returncode == 0 else 0

    second.start()
    try:
        wait_for(lambda: peers() >= 2, "both operators in the peering object", timeout=30)
        apply_example(stack, namespace)
        stack.kubectl("wait", "--for=condition=Ready", "md/chat", "-n", namespace,
                      "--timeout=90s")
        time.sleep(2)
        assert not second_acted(), "the lower-priority operator acted while paused"
        # The first one leaves (and says so in the peering object): the second takes over.
        operator.stop()
        stack.kubectl("scale", "md/chat", "-n", namespace, "--replicas=3")
        wait_for(lambda: kget(stack, "deployment", "chat-h100", "-n", namespace)["spec"][
            "replicas"] == 3, "the second operator to scale the Deployment", timeout=60)
        # its log names the ModelDeployment once its status pass ends, just after the scale
        wait_for(second_acted, "the second operator's log to name the ModelDeployment",
                 timeout=15)
    finally:
        second.stop()
        if operator.proc is None:
            operator.start()
