"""The Helm chart on the local stack: rendering it with the stack's helm, and installing the
cluster-scoped objects it ships (PriorityClasses, tenant ClusterRoles) for an operator that runs
outside the chart (`dedicap run` in tests and the demo), so that both run against the same
objects from the same source."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

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
