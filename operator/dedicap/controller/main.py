"""`dedicap run`: the operator.

    dedicap run                          all namespaces, peering through ClusterKopfPeering
                                         `dedicap` (created when missing)
    dedicap run --namespace acme -n 'team-*'
    dedicap run --standalone             no peering (a single operator you know is alone)

How it is built: one watch-backed view of the cluster (view.py) feeds a work queue of
ModelDeployment reconciles (dispatch.py, reconcile.py), the capacity loop (capacity.py) and the
autoscaler (autoscale.py); they read only the view and write only what differs. kopf runs the
process: logging in, peering with the other processes of this installation, the liveness
endpoint. No dedicap object carries a finalizer, so pools, reservations and ModelDeployments can
be deleted with no operator running.

Peering: every dedicap process announces itself in the ClusterKopfPeering object of its
installation. A process pauses while a live peer with a higher priority exists, and all pause
when two share a priority; so of several processes exactly one acts. Without `--priority` the
priority comes from the process's start time: the oldest process acts, a new one stands by. A
peer that dies without saying goodbye (SIGKILL) is considered gone after `--peering-lifetime`
seconds. Installations (other peering names, other namespaces) divide the work by their
namespaces (peering.py).

Probes (`--health-port`): /healthz (kopf's event loop answers) and /readyz (the API server
answers and this process acts or stands by), for a Deployment's liveness and readiness probes.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import socket
import sys
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

import kopf

from dedicap.api.models import GROUP
from dedicap.controller import autoscale, health
from dedicap.controller.accounting import Accountant
from dedicap.controller.capacity import CapacityLoop, missing_priority_classes
from dedicap.controller.dispatch import Dispatcher
from dedicap.controller.events import EventRecorder
from dedicap.controller.kube import Kube, load_config
from dedicap.controller.legacy import LEGACY_FINALIZER, release_legacy_finalizers
from dedicap.controller.peering import PeeringGate, ensure_peering_object, start_priority
from dedicap.controller.reconcile import CapacityPlanner, Reconciler
from dedicap.controller.view import ClusterView
from dedicap.decide.render import MANAGER, RenderOptions

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
                   help="GPUPool status follows every change at once; at the latest it is "
                   "recomputed this often")
    p.add_argument("--resync-seconds", type=float, default=300.0,
                   help="every ModelDeployment is reconciled at least this often, whatever the "
                   "events (a safety net: an unchanged one costs no API request)")
    p.add_argument("--cost-record-seconds", type=float, default=3600.0,
                   help="a ModelDeployment's status.cost (GPU-hours up to accountedAt) is "
                   "rewritten when its GPUs change or its status is written anyway, and at "
                   "least this often (the exported gpu_hours metric is always current)")
    p.add_argument("--monitoring-namespace", action="append", metavar="NAMESPACE",
                   default=None, help="namespaces whose pods may scrape Triton's metrics port "
                   "(repeatable; default: $DEDICAP_MONITORING_NAMESPACES or 'monitoring')")
    p.add_argument("--liveness", default=os.environ.get("DEDICAP_LIVENESS"), metavar="URL",
                   help="serve a liveness endpoint, e.g. http://0.0.0.0:8080/healthz")
    p.add_argument("--health-port", type=int, default=None, metavar="PORT",
                   help="serve /healthz (liveness) and /readyz (readiness) on this port")
    p.add_argument("--health-address", default="127.0.0.1", metavar="ADDRESS",
                   help="address of the probe server (default: %(default)s; in a pod: its IP)")
    p.add_argument("--workers", type=int, default=8, help="reconciles running at once")
    p.add_argument("--capacity-seconds", type=float, default=15.0,
                   help="admissions, quotas and pool figures follow every change at once; at "
                   "the latest they are recomputed this often (reservation windows)")
    p.add_argument("--no-capacity", dest="capacity", action="store_false",
                   help="no CapacityReservations: plain placement, no priority classes on "
                   "replicas, and no quotas or tenant RoleBindings written")
    autoscale.add_arguments(p)
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("--debug", action="store_true")
    return p.parse_args(list(argv))


def configure_kopf(settings: kopf.OperatorSettings, *, peering_name: str, priority: int,
                   lifetime: int, instance: str, standalone: bool) -> None:
    settings.peering.name = peering_name
    settings.peering.priority = priority
    settings.peering.lifetime = lifetime
    # One peering neighbourhood for every process of the installation, whatever it serves.
    settings.peering.clusterwide = True
    settings.peering.stealth = True
    settings.peering.standalone = standalone
    settings.peering.mandatory = not standalone
    settings.posting.reporting_component = MANAGER
    settings.posting.reporting_instance = instance
    settings.posting.event_name_prefix = "dedicap-"
    # kopf always has a finalizer name; this one is what older versions put on GPUPools, so
    # kopf recognizes it as its own and never adds it (no handler here needs one).
    settings.persistence.finalizer = LEGACY_FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration")


def kopf_registry(configure: Callable[[kopf.OperatorSettings], None]) -> kopf.OperatorRegistry:
    """kopf's part: settings at start-up and the login. It registers no resource handler: the
    view watches what the operator reads, and kopf only runs the process and its peering."""
    registry = kopf.OperatorRegistry()

    @kopf.on.startup(registry=registry, id="settings")
    def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        configure(settings)

    @kopf.on.login(registry=registry, id="login")
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # The official client's configuration: in-cluster service account or $KUBECONFIG.
        return kopf.login_via_client(**kwargs)

    return registry


def main(argv: Sequence[str] | None = None) -> int:
    started_at = time.time()
    args = parse_args(sys.argv[1:] if argv is None else argv)
    kopf.configure(verbose=args.verbose, debug=args.debug)
    if args.kubeconfig:
        # kopf logs in through the same client configuration.
        os.environ["KUBECONFIG"] = args.kubeconfig
    kube = Kube(load_config(args.kubeconfig))
    namespaces = tuple(args.namespace)
    priority = (args.priority if args.priority is not None
                else start_priority(started_at, random.getrandbits(16)))
    instance = f"{socket.gethostname()}-{os.getpid()}"
    monitoring = args.monitoring_namespace or _env_list(
        "DEDICAP_MONITORING_NAMESPACES", ["monitoring"])

    metrics = autoscale.metrics_from_args(args)
    kube.observers.append(metrics.observe_api)
    view = ClusterView(kube, capacity=args.capacity, namespaces=namespaces)
    view.count_restarts(lambda kind, cause: metrics.watch_restarts.labels(kind, cause).inc())
    # A standalone process has no peers, but is an installation among others, named by what it
    # serves (so a restarted one is the same installation).
    installation = (f"standalone:{','.join(namespaces) or '*'}" if args.standalone
                    else args.peering)
    gate = PeeringGate(kube, installation, priority, "operator", peering=not args.standalone,
                       namespaces=namespaces, instance=instance,
                       lifetime_s=args.peering_lifetime, read=view.peering_status)
    events = EventRecorder(kube, instance)
    metrics.events_pending.set_function(events.pending)
    planner = CapacityPlanner() if args.capacity else None
    reconciler = Reconciler(kube, view, events,
                            RenderOptions(monitoring_namespaces=tuple(monitoring),
                                          # Triton is scraped as often as the autoscaler
                                          # assumes (its staleness check relies on it).
                                          scrape_interval=f"{args.scrape_interval:g}s"),
                            capacity=planner, metrics=metrics,
                            accountant=Accountant(timedelta(seconds=args.cost_record_seconds)))
    capacity = CapacityLoop(kube, view, gate, events, planner=planner, metrics=metrics,
                            interval_s=min(args.capacity_seconds, args.pool_refresh_seconds))
    dispatcher = Dispatcher(view, reconciler, gate, capacity, workers=args.workers,
                            resync_s=args.resync_seconds)
    autoscaler = autoscale.Autoscaler(
        kube, view, reconciler, events, autoscale.client_from_args(args), metrics,
        autoscale.AutoscalerSettings(defaults=autoscale.defaults_from_args(args)), gate)

    if not args.standalone:
        ensure_peering_object(kube, args.peering)
    log.info("dedicap operator %s: %s, peering %s", instance,
             f"namespaces {list(namespaces)}" if namespaces else "all namespaces",
             "off (standalone)" if args.standalone else f"{args.peering!r} priority {priority}")
    # Pools an older version left undeletable without an operator: once, before anything runs.
    release_legacy_finalizers(kube)
    if args.capacity:
        missing = missing_priority_classes(kube)
        if missing:
            # Replicas name these classes: without them the API server refuses their pods.
            log.error("PriorityClasses %s do not exist: install them with the Helm chart "
                      "(capacity.enabled), or run with --no-capacity", ", ".join(missing))
    dispatcher.register()
    view.start()
    if not view.wait_synced(60):
        log.warning("the cluster view is not complete after 60s; work starts as it fills")
    loops = (dispatcher, capacity, autoscaler)
    for loop in loops:
        loop.start()

    def configure(settings: kopf.OperatorSettings) -> None:
        configure_kopf(settings, peering_name=args.peering, priority=priority,
                       lifetime=args.peering_lifetime, instance=instance,
                       standalone=args.standalone)

    registry = kopf_registry(configure)
    probes = None
    if args.health_port is not None:
        # Its own client with a short timeout: a probe must answer within the kubelet's.
        checks = health.Health(Kube(load_config(args.kubeconfig), timeout=2.0), gate)
        checks.register(registry)
        probes = health.serve(checks, args.health_address, args.health_port)
    try:
        kopf.run(registry=registry, clusterwide=not namespaces, namespaces=namespaces,
                 standalone=args.standalone, liveness_endpoint=args.liveness)
    finally:
        for loop in loops:
            loop.stop()
        events.flush(5)
        view.stop()
        gate.withdraw()
        health.shutdown(probes)
        log.info("dedicap operator %s stopped", instance)
    return 0


if __name__ == "__main__":
    sys.exit(main())
