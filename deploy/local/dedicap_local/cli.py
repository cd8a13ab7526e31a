"""`dedicap-local`: build, start, inspect and stop the local stack."""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Sequence

from dedicap_local import stack as stk

BUILD_SCRIPT = stk.LOCAL_DIR / "build-binaries.sh"


def build() -> None:
    """Build (or find cached) the pinned control-plane binaries; fail loudly on a failed step."""
    subprocess.run(["bash", str(BUILD_SCRIPT)], check=True)


def show(stack: stk.Stack) -> None:
    """Print the simulated GPU nodes and a per-pool summary, as a platform engineer would look."""
    print(stack.kubectl(
        "get", "nodes", "-L", "dedicap.dev/pool", "-L", "topology.kubernetes.io/zone",
        "-L", "nvidia.com/gpu.product",
        "-o", "custom-columns=NAME:.metadata.name,"
        "READY:.status.conditions[?(@.type==\"Ready\")].status,"
        "POOL:.metadata.labels.dedicap\\.dev/pool,ZONE:.metadata.labels.topology\\.kubernetes\\.io/zone,"
        "GPU:.metadata.labels.nvidia\\.com/gpu\\.product,GPUS:.status.allocatable.nvidia\\.com/gpu",
    ).stdout)
    print(f"{'POOL':<8} {'NODES':>5} {'GPUS':>5}  PRODUCT")
    for pool in stk.load_pools():
        gpu = pool.get("gpu") or {}
        print(f"{pool['name']:<8} {pool['nodes']:>5} {pool['nodes'] * gpu.get('perNode', 0):>5}  "
              f"{gpu.get('product', '-')}")
    print(f"\nkubeconfig: {stack.kubeconfig}\nprometheus: {stack.prometheus_url}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dedicap-local", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("build", help="build or reuse the pinned control-plane binaries")
    p_up = sub.add_parser("up", help="build if needed, start the stack, show nodes and pools")
    p_up.add_argument("--no-dataplane", action="store_true",
                      help="do not run real Triton processes for model pods")
    p_up.add_argument("--monitoring", action="store_true",
                      help="also run prometheus-operator, its Prometheus and Alertmanager "
                      "(docs/monitoring.md)")
    p_down = sub.add_parser("down", help="stop every process of the stack")
    p_down.add_argument("--purge", action="store_true", help="also delete its state (etcd, certs)")
    sub.add_parser("status", help="which components run")
    sub.add_parser("show", help="show the simulated GPU nodes and pools")
    p_load = sub.add_parser("load-image", help="make an OCI archive's image runnable by the "
                            "process nodes (as a container runtime would pull it)")
    p_load.add_argument("archive", help="an OCI archive, e.g. dist/dedicap_0.1.0.oci.tar")
    p_load.add_argument("--name", help="the image reference pods use (default: the chart's "
                        "repository with the archive's tag)")
    p_demo = sub.add_parser("demo", help="up, then run dedicap on the stack and show what it does")
    p_demo.add_argument("--no-load", action="store_true", help="deploy and show, without load")
    args = parser.parse_args(argv)

    stack = stk.Stack()
    if args.cmd == "build":
        build()
    elif args.cmd == "up":
        build()
        stk.up(stack, with_dataplane=not args.no_dataplane)
        if args.monitoring:
            from dedicap_local import monitoring

            print(f"monitoring prometheus: {monitoring.up(stack)}")
        show(stack)
    elif args.cmd == "down":
        stk.down(stack, purge=args.purge)
    elif args.cmd == "status":
        states = stk.status(stack)
        for name, running in states.items():
            print(f"{name:<24} {'running' if running else 'stopped'}")
        return 0 if all(states.values()) else 1
    elif args.cmd == "show":
        show(stack)
    elif args.cmd == "load-image":
        from pathlib import Path

        from dedicap_local import images

        image = images.load(stack.run_dir, Path(args.archive), args.name)
        print(f"{image.reference}: {image.digest} ({image.rootfs})")
    elif args.cmd == "demo":
        from dedicap_local import demo

        build()
        show(stk.up(stack))
        demo.run(stack, with_load=not args.no_load)
    return 0


if __name__ == "__main__":
    sys.exit(main())
