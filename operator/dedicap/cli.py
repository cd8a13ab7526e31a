"""The `dedicap` command: the top floor, which only parses arguments and dispatches.

Each subcommand lives in the module that owns it and is imported lazily, so `dedicap plan`
does not pay for kopf and `dedicap run` does not pay for matplotlib.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# subcommand -> (module, one-line help). Each module exposes `main(argv: list[str]) -> int`.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "run": ("dedicap.controller.main", "run the operator (kopf) against the current kubeconfig"),
    "crds": ("dedicap.manifests", "write or check the CRDs and the Helm chart's generated "
             "templates"),
    "plan": ("dedicap.sim.plan", "replay a trace through the autoscaler; recommend a reservation"),
    "monitoring": ("dedicap.monitoring.generate",
                   "write or check the generated Prometheus rules and Grafana dashboards"),
    "report": ("dedicap.monitoring.report",
               "draw a ModelDeployment's timeline (PNG) and summary from Prometheus"),
}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="dedicap",
        description="Dedicated GPU capacity for model serving on Kubernetes.",
        usage="dedicap {" + ",".join(SUBCOMMANDS) + "} [options]",
    )
    parser.add_argument("command", choices=sorted(SUBCOMMANDS), help="; ".join(
        f"{name}: {text}" for name, (_, text) in SUBCOMMANDS.items()))
    if not args or args[0] in ("-h", "--help"):
        parser.print_help()
        return 0 if args else 2
    ns = parser.parse_args(args[:1])
    module = importlib.import_module(SUBCOMMANDS[ns.command][0])
    return int(module.main(args[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
