"""The Helm chart on the local stack: rendering it with the stack's helm, and installing the
cluster-scoped objects it ships (PriorityClasses, tenant ClusterRoles) for an operator that runs
outside the chart (`dedicap run` in tests and the demo), so that both run against the same
objects from the same source."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from dedicap_local.kubelet import NODE_LABEL, container_processes
from dedicap_local.stack import LOCAL_DIR, Stack

CHART = LOCAL_DIR.parent.parent / "charts" / "dedicap"
KUBE_VERSION = "1.35.0"
# What an operator outside the chart relies on and cannot create itself.
CLUSTER_OBJECTS = ("templates/priorityclasses.yaml", "templates/tenant-clusterroles.yaml")


def helm(stack: Stack) -> str:
    return str(Path(stack.binary("kubectl")).parent / "helm")


def template(stack: Stack, release: str = "dedicap", namespace: str = "dedicap-system", *,
             show_only: Sequence[str] = (), values: Sequence[str] = (),
             check: bool = True) -> subprocess.CompletedProcess[str]:
    """`helm template` of the chart; `values` are `--set` expressions."""
    args = [helm(stack), "template", release, str(CHART), "--namespace", namespace,
            "--kube-version", KUBE_VERSION]
    for path in show_only:
        args += ["--show-only", path]
    for value in values:
        args += ["--set", value]
    proc = subprocess.run(args, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"helm template failed: {proc.stderr.strip()}")
    return proc


def install_cluster_objects(stack: Stack) -> None:
    """Apply the chart's PriorityClasses and tenant ClusterRoles (idempotent)."""
    stack.kubectl("apply", "-f", "-",
                  input=template(stack, show_only=CLUSTER_OBJECTS).stdout)


# --- a release on the process nodes (tests and benchmarks/failover.py) ------------------------

RELEASE = "dedicap"  # the chart's cluster-scoped objects have fixed names: one release a cluster


def local_values(stack: Stack, peering: str, lifetime_s: int) -> dict[str, Any]:
    """Values that put the operator's pods on the process nodes (which run them from the image)
    and point the autoscaler at the stack's Prometheus."""
    return {"nodeSelector": {NODE_LABEL: "true"},
            "tolerations": [{"key": NODE_LABEL, "operator": "Exists", "effect": "NoSchedule"}],
            "prometheus": {"url": stack.prometheus_url, "scrapeIntervalSeconds": 2},
            "peering": {"name": peering, "lifetimeSeconds": lifetime_s},
            "poolRefreshSeconds": 3, "terminationGracePeriodSeconds": 20}


def adopt(stack: Stack, rendered: str, namespace: str, release: str = RELEASE) -> None:
    """Cluster-scoped objects the chart renders that already exist (installed with kubectl, as
    `install_cluster_objects` does): mark them as the release's, as Helm asks before it takes
    an object over."""
    for doc in yaml.safe_load_all(rendered):
        if not doc or doc.get("metadata", {}).get("namespace"):
            continue
        kind = "crd" if doc["kind"] == "CustomResourceDefinition" else doc["kind"].lower()
        ref = f"{kind}/{doc['metadata']['name']}"
        if stack.kubectl("get", ref, check=False).returncode != 0:
            continue
        stack.kubectl("annotate", "--overwrite", ref, f"meta.helm.sh/release-name={release}",
                      f"meta.helm.sh/release-namespace={namespace}")
        stack.kubectl("label", "--overwrite", ref, "app.kubernetes.io/managed-by=Helm")


def pod_logs(run_dir: Path, namespace: str) -> dict[str, list[str]]:
    """Every operator container's output so far, by pod name (all restarts, in order), from the
    process nodes' log files (they outlive the pods)."""
    out: dict[str, list[str]] = {}
    for pod_dir in sorted((run_dir / "pods").glob(f"{namespace}_*")):
        name = pod_dir.name.split("_")[1]
        files = sorted(pod_dir.glob("*/*.log"), key=lambda p: int(p.stem))
        out[name] = [line for f in files for line in f.read_text(errors="replace").splitlines()]
    return out


# kopf's own log lines: a process starts acting, stops acting in favour of a peer, or begins a
# graceful stop (from then on it handles nothing new; its goodbye in the peering object follows).
ACTS = "Resuming operations after the pause"
PAUSES = "Pausing operations in favour of"
STOPPING = "Signal SIGTERM is received"
_STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]")


def stamp(line: str) -> datetime | None:
    """The time of an operator log line (kopf's format, the process's clock: UTC here)."""
    m = _STAMP.match(line)
    return (datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").replace(tzinfo=UTC)
            if m else None)


def acting_intervals(logs: dict[str, list[str]]
                     ) -> list[tuple[str, datetime, datetime | None]]:
    """(pod, from, until) of every stretch a process acted, from its own log; until None: still
    acting (or killed and not restarted); a process killed while acting ends when its
    container's next process starts."""
    out: list[tuple[str, datetime, datetime | None]] = []
    for pod, lines in logs.items():
        start: datetime | None = None
        for line in lines:
            when = stamp(line)
            if when is None:
                continue
            if ACTS in line and start is None:
                start = when
            elif start is not None and (PAUSES in line or STOPPING in line):
                out.append((pod, start, when))
                start = None
            elif start is not None and "dedicap operator" in line and " priority " in line:
                # A restart: the previous process died acting, at the latest by now.
                out.append((pod, start, when))
                start = None
        if start is not None:
            out.append((pod, start, None))
    return sorted(out, key=lambda x: x[1])


def operator_process(pod: dict[str, Any]) -> int:
    """The host pid of a pod's `dedicap run`, under the sandbox its container status names."""
    container_id = pod["status"]["containerStatuses"][0]["containerID"]
    for pid in container_processes(int(container_id.removeprefix("process://"))):
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if b"run" in argv and any(a.endswith(b"dedicap") for a in argv):
            return pid
    raise LookupError(f"no dedicap process in {container_id}")
