"""`dedicap run`: the operator.

    dedicap run                          all namespaces, peering through ClusterKopfPeering
                                         `dedicap` (created when missing)
    dedicap run --namespace acme -n 'team-*'
    dedicap run --standalone             no peering (a single operator you know is alone)

Peering: every dedicap process announces itself in the ClusterKopfPeering object. A process
pauses while a live peer with a higher priority exists, and all pause when two share a
priority; so of several processes exactly one acts. Without `--priority` each process draws a
random one, which makes the rule pick one of them. A peer that dies without saying goodbye
(SIGKILL) is considered gone after `--peering-lifetime` seconds.

Periodic work (pool status, the pools' users re-reconciled, capacity) runs on a thread beside
kopf and follows the same peering; no dedicap object carries a finalizer, so pools,
reservations and ModelDeployments can be deleted with no operator running.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import socket
import sys
from collections.abc import Sequence

import kopf

from dedicap.controller import autoscale, capacity, handlers, resync
from dedicap.controller.kube import Kube, load_config
from dedicap.controller.observe import ClusterObserver
from dedicap.controller.peering import PeeringGate, ensure_peering_object
from dedicap.controller.reconcile import Reconciler
from dedicap.decide.render import RenderOptions

log = logging.getLogger("dedicap")


def _env_list(name: str, default: Sequence[str]) -> list[str]:
    value = os.environ.get(name)
    return [v for v in value.split(",") if v] if value else list(default)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="dedicap run", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[2:]))
    scope = p.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", action="append", default=[], metavar="PATTERN",
                       help="serve ModelDeployments of this namespace (glob; repeatable)")
    scope.add_argument("-A", "--all-namespaces", action="store_true",
                       help="serve every namespace (the default)")
    p.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, then $KUBECONFIG)")
    p.add_argument("--standalone", action="store_true", help="run without peering")
    p.add_argument("--peering", default=os.environ.get("DEDICAP_PEERING", "dedicap"),
                   help="name of the ClusterKopfPeering object (default: %(default)s)")
    p.add_argument("--priority", type=int, default=None,
                   help="peering priority (default: random, so one of several processes acts)")
    p.add_argument("--peering-lifetime", type=int, default=30, metavar="SECONDS",
                   help="after this long without a keep-alive a peer counts as gone")
    p.add_argument("--pool-refresh-seconds", type=float, default=10.0,
                   help="how often each GPUPool's status is recomputed")
    p.add_argument("--resync-seconds", type=float, default=30.0,
                   help="how often the ModelDeployments that list an existing GPUPool are "
                   "re-reconciled regardless of events")
    p.add_argument("--monitoring-namespace", action="append", metavar="NAMESPACE",
                   default=None, help="namespaces whose pods may scrape Triton's metrics port "
                   "(repeatable; default: $DEDICAP_MONITORING_NAMESPACES or 'monitoring')")
    p.add_argument("--liveness", default=os.environ.get("DEDICAP_LIVENESS"), metavar="URL",
                   help="serve a liveness endpoint, e.g. http://0.0.0.0:8080/healthz")
    p.add_argument("--workers", type=int, default=8, help="reconciles running at once")
    p.add_argument("--tenant-group", action="append", metavar="GROUP",
                   default=_env_list("DEDICAP_TENANT_GROUPS", []),
                   help="a group of tenant users who may read reservations and pools "
                   "(repeatable; default: $DEDICAP_TENANT_GROUPS, comma-separated)")
    p.add_argument("--capacity-seconds", type=float, default=15.0,
                   help="how often admissions, quotas and pool figures are recomputed")
    p.add_argument("--no-capacity", dest="capacity", action="store_false",
                   help="no CapacityReservations: plain placement, and no quotas, priority "
                   "classes or tenant RBAC written (for clusters where the operator may not)")
    autoscale.add_arguments(p)
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("--debug", action="store_true")
    return p.parse_args(list(argv))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    kopf.configure(verbose=args.verbose, debug=args.debug)
    if args.kubeconfig:
        # kopf logs in through the same client configuration.
        os.environ["KUBECONFIG"] = args.kubeconfig
    kube = Kube(load_config(args.kubeconfig))
    monitoring = args.monitoring_namespace or _env_list(
        "DEDICAP_MONITORING_NAMESPACES", ["monitoring"])
    planner = capacity.CapacityPlanner(kube) if args.capacity else None
    reconciler = Reconciler(kube, ClusterObserver(kube),
                            RenderOptions(monitoring_namespaces=tuple(monitoring),
                                          # Triton is scraped as often as the autoscaler
                                          # assumes (its staleness check relies on it).
                                          scrape_interval=f"{args.scrape_interval:g}s"),
                            capacity=planner)
    namespaces = tuple(args.namespace)
    registry = kopf.OperatorRegistry()
    handlers.register(registry, reconciler, handlers.HandlerConfig(namespaces=namespaces))
    capacity_controller = None
    if planner is not None:
        capacity_controller = capacity.CapacityController(
            kube, tenant_groups=tuple(args.tenant_group), on_outcome=planner.export)
        capacity.register(registry, capacity_controller)
    priority = args.priority if args.priority is not None else random.randint(1, 2**30)
    instance = f"{socket.gethostname()}-{os.getpid()}"
    if not args.standalone:
        ensure_peering_object(kube, args.peering)
    log.info("dedicap operator %s: %s, peering %s", instance,
             f"namespaces {list(namespaces)}" if namespaces else "all namespaces",
             "off (standalone)" if args.standalone else f"{args.peering!r} priority {priority}")

    def configure(settings: kopf.OperatorSettings) -> None:
        handlers.configure_settings(settings, peering_name=args.peering, priority=priority,
                                    lifetime=args.peering_lifetime, instance=instance,
                                    max_workers=args.workers)
        settings.peering.standalone = args.standalone
        settings.peering.mandatory = not args.standalone

    handlers.startup_handler(configure, registry)
    # The autoscaler and the periodic resync run beside kopf, each in a thread of its own, and
    # follow the same peering.
    autoscaler = autoscale.from_args(args, kube, reconciler, namespaces=namespaces,
                                     priority=priority, instance=instance)
    if planner is not None:
        planner.metrics = autoscaler.metrics  # one registry for every dedicap_* series
    reconciler.metrics = autoscaler.metrics
    kube.on_error = autoscaler.metrics.record_api_error
    periodic = resync.PeriodicResync(
        kube, reconciler,
        PeeringGate(kube, None if args.standalone else args.peering, priority, "resync"),
        resync.ResyncIntervals(pool_status_s=args.pool_refresh_seconds,
                               pool_users_s=args.resync_seconds,
                               capacity_s=args.capacity_seconds),
        capacity=capacity_controller, namespaces=namespaces, instance=instance)
    # Pools an older version left undeletable without an operator: once, before anything runs.
    resync.release_legacy_finalizers(kube)
    autoscaler.start()
    periodic.start()
    try:
        kopf.run(registry=registry, clusterwide=not namespaces, namespaces=namespaces,
                 standalone=args.standalone, liveness_endpoint=args.liveness)
    finally:
        periodic.stop()
        autoscaler.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
