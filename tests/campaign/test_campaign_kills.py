"""The operator SIGKILLed at random points across create / update / scale / delete cycles, on the
real local stack.

Each cycle makes one change (a seeded random choice: create a ModelDeployment, update its model
version, pools or access, scale it, delete it), waits a random 0-1.5 s, SIGKILLs the operator
(sometimes twice: the second kill lands during its restart), starts it again and waits until
everything converges:

- every ModelDeployment has exactly its children: one Deployment per pool in use with the
  wanted replicas, one Service, PodDisruptionBudget and NetworkPolicy, all owned by it; its pods
  number what it wants (no duplicate left by an interrupted rollout);
- nothing is orphaned: every dedicap child in the namespace belongs to a live ModelDeployment;
- status agrees with the children (replicas, ready, desired, observedGeneration) and the Events
  with the status: the Ready condition's transition is in an Event of this very object, and no
  process posted the same Event twice instead of counting it.

The tenant namespace is labelled Pod Security `restricted`: every replica is admitted by the
real PodSecurity plugin. The operator runs standalone: the campaign is about what a crash leaves
behind, not about the election (tests/integration/test_chart.py and benchmarks/failover.py).
"""

from __future__ import annotations

import json
import statistics
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import faults
from testkit import OperatorProcess, install_api, kget, small_md, tenant_namespace, wait_for

pytestmark = pytest.mark.integration

PREFIX = "dcp-ckill"
NAMES = ("m0", "m1", "m2")
POOLS = (["h100"], ["a10g", "h100"], ["h100", "a10g"])
WRITES = ('"PATCH ', '"POST ', '"DELETE ', '"PUT ')


@pytest.fixture(scope="module")
def namespace(stack: Any) -> Iterator[str]:
    install_api(stack)
    name = tenant_namespace(stack, f"{PREFIX}-{uuid.uuid4().hex[:6]}")
    yield name
    stack.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="module")
def operator(stack: Any, namespace: str, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[OperatorProcess]:
    op = OperatorProcess(stack, tmp_path_factory.mktemp("kills"), [
        "--standalone", "--namespace", f"{PREFIX}-*", "--resync-seconds", "10",
        "--no-capacity", "--verbose"])
    op.start()
    yield op
    op.stop()


def md_doc(namespace: str, name: str, spec: dict[str, Any]) -> str:
    return small_md(namespace, name, replicas=spec["replicas"], pools=spec["pools"],
                    model={"name": name, "repository": "s3://models/triton",
                           "version": str(spec["version"])},
                    access={"namespaces": spec["access"]})


def change(stack: Any, namespace: str, wanted: dict[str, dict[str, Any]],
           rand: Any) -> str:
    """One random change, made through kubectl as a user would; returns what it was."""
    absent = [n for n in NAMES if n not in wanted]
    present = sorted(wanted)
    ops = (["create"] * 2 if absent else []) + (
        ["update", "scale", "scale", "delete"] if present else [])
    op = rand.choice(ops)
    if op == "create":
        name = rand.choice(absent)
        wanted[name] = {"version": 1, "pools": rand.choice(POOLS),
                        "replicas": rand.randint(0, 2), "access": []}
        stack.kubectl("apply", "-f", "-", input=md_doc(namespace, name, wanted[name]))
        return op
    name = rand.choice(present)
    spec = wanted[name]
    if op == "update":
        what = rand.choice(["version", "pools", "access"])
        if what == "version":
            spec["version"] += 1
        elif what == "pools":
            spec["pools"] = rand.choice([p for p in POOLS if p != spec["pools"]])
        else:
            spec["access"] = [] if spec["access"] else [f"caller-{rand.randint(0, 9)}"]
        stack.kubectl("apply", "-f", "-", input=md_doc(namespace, name, spec))
        return f"update {what}"
    if op == "scale":
        spec["replicas"] = rand.choice([r for r in range(4) if r != spec["replicas"]])
        stack.kubectl("scale", "md", name, "-n", namespace, f"--replicas={spec['replicas']}")
        return op
    del wanted[name]
    stack.kubectl("delete", "md", name, "-n", namespace, "--wait=false")
    return op


def _owner(obj: dict[str, Any]) -> str:
    refs = obj["metadata"].get("ownerReferences") or []
    return next((r["uid"] for r in refs if r.get("controller")), "")


def problems(stack: Any, namespace: str, wanted: dict[str, dict[str, Any]]) -> list[str]:
    """Everything that does not agree yet; empty once the cycle converged."""
    got = json.loads(stack.kubectl(
        "get", "modeldeployments,deployments,services,poddisruptionbudgets,networkpolicies,"
        "pods", "-n", namespace, "-o", "json").stdout)["items"]
    mds = {o["metadata"]["name"]: o for o in got if o["kind"] == "ModelDeployment"
           and not o["metadata"].get("deletionTimestamp")}
    children = [o for o in got if o["kind"] != "ModelDeployment" and o["kind"] != "Pod"
                and (o["metadata"].get("labels") or {}).get("app.kubernetes.io/managed-by")
                == "dedicap"]
    pods = [o for o in got if o["kind"] == "Pod" and not o["metadata"].get("deletionTimestamp")]
    out: list[str] = []
    if set(mds) != set(wanted):
        out.append(f"ModelDeployments {sorted(mds)} != {sorted(wanted)}")
    uids = {o["metadata"]["uid"]: n for n, o in mds.items()}
    for child in children:
        if _owner(child) not in uids:
            out.append(f"orphan {child['kind']} {child['metadata']['name']}")
    for name, spec in wanted.items():
        md = mds.get(name)
        if md is None:
            continue
        uid, st = md["metadata"]["uid"], md.get("status") or {}
        mine = Counter(c["kind"] for c in children if _owner(c) == uid)
        deployments = {c["metadata"]["name"]: c for c in children
                       if c["kind"] == "Deployment" and _owner(c) == uid}
        # Every replica fits the first pool listed (a10g: 6 nodes of 1 GPU; h100: 32 GPUs).
        want_deploys = {f"{name}-{spec['pools'][0]}"}
        if set(deployments) != want_deploys:
            out.append(f"{name}: Deployments {sorted(deployments)} != {sorted(want_deploys)}")
        for kind in ("Service", "PodDisruptionBudget", "NetworkPolicy"):
            if mine[kind] != 1:
                out.append(f"{name}: {mine[kind]} {kind}")
        for d in deployments.values():
            ds = d.get("status") or {}
            if d["spec"]["replicas"] != spec["replicas"] or ds.get("replicas", 0) != spec[
                    "replicas"] or ds.get("readyReplicas", 0) != spec["replicas"]:
                out.append(f"{name}: {d['metadata']['name']} {d['spec']['replicas']} wanted, "
                           f"{ds.get('replicas', 0)} exist, {ds.get('readyReplicas', 0)} ready")
            image_version = d["spec"]["template"]["metadata"]["annotations"].get(
                "dedicap.dev/model-version")
            if image_version != str(spec["version"]):
                out.append(f"{name}: version {image_version} != {spec['version']}")
        mine_pods = [p for p in pods if p["metadata"]["labels"].get(
            "dedicap.dev/modeldeployment") == name]
        if len(mine_pods) != spec["replicas"]:
            out.append(f"{name}: {len(mine_pods)} pods for {spec['replicas']} replicas")
        if st.get("observedGeneration") != md["metadata"]["generation"]:
            out.append(f"{name}: status of generation {st.get('observedGeneration')}")
        elif (st.get("replicas"), st.get("readyReplicas"), st.get("desiredReplicas")) != (
                spec["replicas"],) * 3:
            out.append(f"{name}: status {st.get('replicas')}/{st.get('readyReplicas')}/"
                       f"{st.get('desiredReplicas')} for {spec['replicas']}")
        ready = next((c for c in st.get("conditions") or [] if c["type"] == "Ready"), {})
        if ready.get("status") != "True":
            out.append(f"{name}: Ready {ready.get('status')} ({ready.get('message')})")
    return out


def event_problems(stack: Any, namespace: str) -> list[str]:
    """The Events agree with the status: no Event about an object claims a Ready state after
    the status's own last transition that the status does not hold (a crash between an Event and
    the status write it explains must not leave a false claim behind), and no process posted one
    Event twice instead of counting it."""
    items = kget(stack, "events", "-n", namespace)["items"]
    mds = {o["metadata"]["name"]: o for o in kget(stack, "md", "-n", namespace)["items"]}
    out = []
    for name, md in mds.items():
        ready = next(c for c in md["status"]["conditions"] if c["type"] == "Ready")
        claims = [(e["lastTimestamp"], e["message"]) for e in items
                  if e["involvedObject"].get("uid") == md["metadata"]["uid"]
                  and e["message"].startswith("Ready is ")
                  and e["lastTimestamp"] > ready["lastTransitionTime"]
                  and not e["message"].startswith(f"Ready is {ready['status']}")]
        if claims:
            out.append(f"{name}: Ready is {ready['status']} since "
                       f"{ready['lastTransitionTime']}, but later Events say {claims}")
    seen = Counter((e["involvedObject"].get("uid"), e.get("reportingInstance"), e["type"],
                    e["reason"], e["message"]) for e in items
                   if e.get("reportingComponent") == "dedicap")
    out += [f"posted {n} times: {key[3]}: {key[4]}" for key, n in seen.items() if n > 1]
    return out


def _writes_after_start(log: Path, namespace: str) -> int:
    return sum(1 for line in log.read_text(errors="replace").splitlines()
               if any(w in line for w in WRITES) and f"/namespaces/{namespace}/" in line
               and "/events" not in line)


def test_every_cycle_converges_whatever_line_the_operator_was_killed_at(
        stack: Any, namespace: str, operator: OperatorProcess) -> None:
    rand = faults.rng("kills")
    wanted: dict[str, dict[str, Any]] = {}
    kills = 0
    cut_short = 0
    converge_s: list[float] = []
    ops: Counter[str] = Counter()
    for cycle in range(faults.SCALE.kill_cycles):
        ops[change(stack, namespace, wanted, rand)] += 1
        time.sleep(rand.uniform(0, 1.5))  # the kill lands anywhere in the work that follows
        operator.kill()
        kills += 1
        operator.start()
        if rand.random() < 0.25:  # and now and then again while the new process starts
            time.sleep(rand.uniform(0.5, 4))
            operator.kill()
            kills += 1
            operator.start()
        t0 = time.monotonic()
        wait_for(lambda: not problems(stack, namespace, wanted),
                 f"cycle {cycle} ({ops}) to converge; problems: "
                 f"{problems(stack, namespace, wanted)}", timeout=120, interval=0.5)
        converge_s.append(time.monotonic() - t0)
        # The process that came up had to finish what its predecessor left undone.
        if _writes_after_start(operator.log, namespace):
            cut_short += 1
        assert not event_problems(stack, namespace), event_problems(stack, namespace)
    log = "\n".join(operator.log_dir.joinpath(f"operator-{i}.log").read_text(errors="replace")
                    for i in range(1, operator.starts + 1))
    assert "Traceback" not in log
    figures = {"cycles": faults.SCALE.kill_cycles, "kills": kills,
               "kills_that_left_work_for_the_next_process": cut_short,
               "changes": dict(ops),
               "converged_after_restart_median_s": round(statistics.median(converge_s), 1),
               "converged_after_restart_max_s": round(max(converge_s), 1),
               "duplicated_children": 0, "orphaned_children": 0}
    faults.record("operator SIGKILLed", **figures)
    print(json.dumps(figures))
