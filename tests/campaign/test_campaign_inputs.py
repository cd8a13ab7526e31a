"""Bad input, on the real API server and through the operator's own code.

Generated GPUPools, CapacityReservations and ModelDeployments (tests/badinput.py: the valid
space at its limits, then zero to three mutations that each break one named field) go through
server-side dry-run with strict field validation:

- every mutated one is refused, and the answer names a mutated field;
- every unmutated one is accepted; the object the API server returns (defaults filled in) goes
  through the operator's parsers, placement, renderers and status code without an exception,
  and every child it would write passes the API server's own dry-run too;
- some of the accepted ModelDeployments are created for real in a namespace a live operator
  serves (pools rewritten to one that exists, no replicas): each gets a status for its
  generation, none reports a refused child, and the operator logs no traceback.

Hostile values ride along: the largest counts, 1 MiB annotations, unicode at length limits, and
a repository URI with credentials, which must appear nowhere afterwards: not in an Event, a
status, a child, the operator's log or the API server's.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, seed, settings

import faults
from badinput import SECRET, Case, cases, printable, through_operator
from dedicap.controller.kube import KINDS, Kube, KubeError, load_config
from testkit import (
    OperatorProcess,
    install_api,
    kget,
    release_operator_state,
    tenant_namespace,
    wait_for,
)

pytestmark = pytest.mark.integration

PREFIX = "dcp-cin"


@pytest.fixture(scope="module")
def kube(stack: Any) -> Kube:
    install_api(stack)
    return Kube(load_config(str(stack.kubeconfig)))


@pytest.fixture(scope="module")
def namespace(stack: Any) -> Iterator[str]:
    name = tenant_namespace(stack, f"{PREFIX}-{uuid.uuid4().hex[:6]}")
    # Belt and braces: whatever is created for real here starts no pod.
    stack.kubectl("create", "quota", "no-pods", "-n", name, "--hard=pods=0")
    yield name
    stack.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="module")
def operator(stack: Any, kube: Kube, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[OperatorProcess]:
    op = OperatorProcess(stack, tmp_path_factory.mktemp("inputs"), [
        "--namespace", f"{PREFIX}-*", "--peering-lifetime", "6", "--resync-seconds", "30",
        "--verbose"], peering=f"dedicap-cin-{uuid.uuid4().hex[:6]}")
    op.start()
    yield op
    op.stop()
    release_operator_state(stack, op.peering)


def dry_run(kube: Kube, obj: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """Create `obj` with dryRun=All and strict field validation: (the object the API server
    would store, "") or (None, its answer)."""
    kind = KINDS[obj["kind"]]
    path = kind.path((obj.get("metadata") or {}).get("namespace"))
    try:
        return dict(kube.request("POST", path, query={"dryRun": "All",
                                                      "fieldValidation": "Strict"},
                                 body=obj)), ""
    except KubeError as err:
        assert err.status in (400, 422), f"{err.status}: {err}"
        body = err.body if isinstance(err.body, dict) else {"message": str(err.body)}
        causes = (body.get("details") or {}).get("causes") or []
        return None, "\n".join([str(body.get("message", "")), *(
            f"{c.get('field', '')}: {c.get('message', '')}" for c in causes)])


def for_real(obj: dict[str, Any]) -> dict[str, Any]:
    """An accepted ModelDeployment as it is created for real: on a pool that exists, with no
    replica (so no pod starts), everything else as generated."""
    spec = obj["spec"]
    pools = ["h100", *[p for p in spec["placement"]["pools"] if p != "h100"]][:8]
    spec["placement"]["pools"] = pools
    spec["replicas"] = 0
    if "autoscaling" in spec:
        spec["autoscaling"]["minReplicas"] = 0
    return obj


def test_generated_objects_are_refused_naming_a_field_or_accepted_and_served(
        stack: Any, kube: Kube, namespace: str, operator: OperatorProcess) -> None:
    tally: Counter[str] = Counter()
    mutations: Counter[str] = Counter()
    real: list[str] = []

    @seed(faults.SEED)
    @settings(max_examples=faults.SCALE.inputs, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(cases(namespace))
    def one(case: Case) -> None:
        tally[f"{case.kind} {'valid' if case.valid else 'mutated'}"] += 1
        mutations.update(m.name for m in case.mutations)
        stored, answer = dry_run(kube, case.obj)
        if not case.valid:
            assert stored is None, f"accepted: {[m.name for m in case.mutations]}: " \
                                   f"{printable(case.obj)}"
            assert case.names_a_mutated_field(answer), (
                f"the refusal names none of {[m.path for m in case.mutations]}: {answer[:600]}")
            assert SECRET not in answer, f"the refusal repeats a credential: {answer[:600]}"
            tally["refused naming the field"] += 1
            return
        assert stored is not None, f"a valid {case.kind} refused: {answer[:800]}\n" \
                                   f"{printable(case.obj)}"
        tally["accepted"] += 1
        children = through_operator(stored)
        for child in children:
            child["metadata"]["namespace"] = namespace
            written, why = dry_run(kube, child)
            assert written is not None, (
                f"the API server refuses the {child['kind']} the operator renders for an "
                f"accepted {case.kind}: {why[:800]}\n{printable(stored)}")
            tally["children accepted"] += 1
        if case.kind == "ModelDeployment" and len(real) < faults.SCALE.real_inputs:
            obj = for_real(json.loads(json.dumps(case.obj)))
            obj["metadata"]["name"] = f"in-{len(real)}"
            created, why = dry_run(kube, obj)
            assert created is not None, why[:800]
            kube.request("POST", KINDS["ModelDeployment"].path(namespace), body=obj)
            real.append(obj["metadata"]["name"])

    one()
    # Every ModelDeployment created for real gets its status, none a refused child.
    def served() -> list[str]:
        items = kget(stack, "md", "-n", namespace)["items"]
        waiting = [i["metadata"]["name"] for i in items if (i.get("status") or {}).get(
            "observedGeneration") != i["metadata"]["generation"]]
        return [] if waiting or len(items) < len(real) else items
    items = wait_for(served, "a status on every ModelDeployment created", timeout=300,
                     interval=2)
    failed = [(i["metadata"]["name"], c["message"]) for i in items
              for c in i["status"].get("conditions") or [] if c["reason"] in (
                  "ApplyFailed", "InvalidSpec")]
    assert not failed, failed[:5]
    log = operator.log.read_text(errors="replace")
    assert "Traceback" not in log, operator.log_tail(80)
    faults.record("bad input", generated=sum(tally[k] for k in tally if " " in k and (
        k.endswith("valid") or k.endswith("mutated"))), **dict(tally),
        created_for_real=len(real), mutations_used=len(mutations),
        most_used_mutations=dict(mutations.most_common(5)))
    print(json.dumps({"tally": tally, "real": len(real)}))


def test_a_repository_with_credentials_is_never_stored_logged_or_copied(
        stack: Any, kube: Kube, namespace: str, operator: OperatorProcess) -> None:
    doc = {"apiVersion": "dedicap.dev/v1alpha1", "kind": "ModelDeployment",
           "metadata": {"name": "leaky", "namespace": namespace},
           "spec": {"model": {"name": "m", "repository":
                              f"s3://AKIAEXAMPLE:{SECRET}@bucket/models"},
                    "placement": {"pools": ["h100"]}, "replicas": 0}}
    proc = stack.kubectl("apply", "-f", "-", input=json.dumps(doc), check=False)
    assert proc.returncode != 0 and "spec.model.repository" in proc.stderr, proc.stderr
    assert "envFromSecret" in proc.stderr and SECRET not in proc.stderr, proc.stderr
    # The same with the credentials in a query string, and through a patch of a stored one.
    doc["spec"]["model"]["repository"] = "s3://bucket/models"
    stack.kubectl("apply", "-f", "-", input=json.dumps(doc))
    for uri in (f"as://acct/c/models?sig={SECRET}", f"gs://u:{SECRET}@bucket/m"):
        proc = stack.kubectl("patch", "md", "leaky", "-n", namespace, "--type=merge", "-p",
                             json.dumps({"spec": {"model": {"repository": uri}}}), check=False)
        assert proc.returncode != 0 and SECRET not in proc.stderr, proc.stderr
    wait_for(lambda: (kget(stack, "md", "leaky", "-n", namespace).get("status") or {}).get(
        "observedGeneration") == 1, "the stored one served", timeout=60)
    # Nowhere afterwards: every object of the namespace, its Events, both logs.
    seen = stack.kubectl("get", "all,events,networkpolicies,poddisruptionbudgets,"
                         "modeldeployments", "-n", namespace, "-o", "json").stdout
    assert SECRET not in seen
    assert SECRET not in operator.log.read_text(errors="replace")
    apiserver_log = stack.run_dir / "logs" / "kube-apiserver.log"
    assert SECRET not in apiserver_log.read_text(errors="replace")
    faults.record("bad input", credentials_refused=3, credentials_found_afterwards=0)


def test_the_largest_values_are_served_or_refused_whole(
        stack: Any, kube: Kube, namespace: str, operator: OperatorProcess,
        tmp_path: Path) -> None:
    # At every limit at once: a name of 42, a model name of 128, 64 arguments of 1024
    # characters of four-byte unicode, 64 access namespaces of 63, an annotation of 200 KiB;
    # and characters YAML will not take raw (DEL, C1 controls, NEL, the Unicode line and
    # paragraph separators, a byte-order mark), which JSON carries as they are.
    doc: dict[str, Any] = {
        "apiVersion": "dedicap.dev/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": "x" * 42, "namespace": namespace,
                     "annotations": {"example.com/notes": "🦀" * 50_000}},
        "spec": {"model": {"name": "m" * 128, "repository": "s3://" + "b" * 1019},
                 "triton": {"args": ["🦀" * 1024] * 64,
                            "env": [{"name": f"V{i}", "value": "é" * 4096} for i in range(63)]
                            + [{"name": "ODD", "value": "a\x7fb\x85c\x9fd\u2028e\u2029f"
                                                         "\ufeffg\tq\x01"}]},
                 "placement": {"pools": ["h100", *[f"p{i}" for i in range(7)]]},
                 "access": {"namespaces": [f"{i:02d}" + "n" * 61 for i in range(64)]},
                 "replicas": 0}}
    path = tmp_path / "big.json"
    path.write_text(json.dumps(doc))
    # (Created as JSON: kubectl's own server-side apply sends such characters raw and is
    # refused by the same YAML reader.)
    stack.kubectl("create", "-f", str(path))
    status = wait_for(lambda: (kget(stack, "md", "x" * 42, "-n", namespace).get("status")
                               or {}).get("observedGeneration") == 1 and kget(
        stack, "md", "x" * 42, "-n", namespace)["status"], "the largest one served",
        timeout=60)
    assert not [c for c in status["conditions"] if c["reason"] in ("ApplyFailed",
                                                                    "InvalidSpec")], status
    # Every character arrives as written.
    deployment = kget(stack, "deployment", f"{'x' * 42}-h100", "-n", namespace)
    env = {e["name"]: e["value"] for e in deployment["spec"]["template"]["spec"][
        "containers"][0]["env"]}
    assert env["ODD"] == doc["spec"]["triton"]["env"][-1]["value"], ascii(env["ODD"])
    # One more byte of annotation than the API server allows is refused whole, at its field.
    doc["metadata"]["annotations"] = {"example.com/notes": "x" * (1 << 20)}
    path.write_text(json.dumps(doc))
    proc = stack.kubectl("replace", "-f", str(path), check=False)
    assert proc.returncode != 0 and "metadata.annotations" in proc.stderr, proc.stderr[:500]
    assert "Traceback" not in operator.log.read_text(errors="replace")
    faults.record("bad input", largest_object_served=True)
