"""kopf wiring: *when* reconciles run. What they do is in reconcile.py.

- every ModelDeployment watch event (including the initial listing after a start) reconciles
  that ModelDeployment; so does every event of a Deployment it owns (status follows
  readyReplicas, and a child deleted or edited by hand is put back);
- GPUPools: every event recomputes the pool's status; a new pool or a changed pool spec
  reconciles the ModelDeployments that list it at once.

What happens on a schedule (pool status from Nodes and Pods, the pools' users re-reconciled,
the capacity reconcile) is resync.py's thread, not kopf timers.

Only event handlers are used: no create/update handlers, so kopf keeps no progress
annotations, and no timers or daemons, so kopf puts no finalizer on any object (deleting a
ModelDeployment or a GPUPool works with the operator down; the garbage collector removes a
ModelDeployment's children through their owner references).
"""

from __future__ import annotations

import fnmatch
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import kopf

from dedicap.api.models import GROUP, VERSION
from dedicap.controller.kube import KubeError
from dedicap.controller.reconcile import Reconciler, Recorder
from dedicap.decide.render import LABEL_MANAGED_BY, LABEL_MD, MANAGER

log = logging.getLogger(__name__)


# The finalizer kopf's timers put on GPUPools before the periodic work moved to resync.py.
LEGACY_FINALIZER = "dedicap.dev/timers"


@dataclass(frozen=True)
class HandlerConfig:
    namespaces: tuple[str, ...] = ()  # empty: all namespaces


def serves(namespaces: Iterable[str], namespace: str) -> bool:
    """Whether a ModelDeployment of `namespace` is this operator's (glob patterns; none: all)."""
    patterns = tuple(namespaces)
    return not patterns or any(fnmatch.fnmatchcase(namespace, p) for p in patterns)


def reconcile_each(reconciler: Reconciler, mds: Iterable[Mapping[str, Any]],
                   namespaces: Iterable[str],
                   record_for: Callable[[Mapping[str, Any]], Recorder]) -> None:
    """Reconcile the served ModelDeployments among `mds`; one failing does not stop the rest."""
    patterns = tuple(namespaces)
    for md in mds:
        if serves(patterns, md["metadata"]["namespace"]):
            try:
                reconciler.reconcile_modeldeployment(md, record_for(md))
            except KubeError as err:
                log.warning("reconcile of %s/%s failed: %s", md["metadata"]["namespace"],
                            md["metadata"]["name"], err)


def recorder_for(body: Mapping[str, Any]) -> Recorder:
    def record(type: str, reason: str, message: str) -> None:
        log.info("%s/%s: %s %s: %s", body["metadata"].get("namespace", ""),
                 body["metadata"].get("name"), type, reason, message)
        kopf.event(kopf.Body(cast(kopf.RawBody, dict(body))), type=type, reason=reason,
                   message=message[:1024])
    return record


def register(registry: kopf.OperatorRegistry, reconciler: Reconciler,
             config: HandlerConfig) -> None:
    """Register dedicap's handlers on `registry`."""
    pool_generations: dict[str, int] = {}
    pool_generations_lock = threading.Lock()

    @kopf.on.event(GROUP, VERSION, "modeldeployments", registry=registry,
                   id="modeldeployment")
    def modeldeployment_event(type: str | None, body: kopf.Body, **_: Any) -> None:
        if type == "DELETED":
            reconciler.forget(body.metadata.namespace or "", body.metadata.name or "")
            return
        reconciler.reconcile_modeldeployment(body, recorder_for(body))

    @kopf.on.event("apps", "v1", "deployments", registry=registry, id="child-deployment",
                   labels={LABEL_MANAGED_BY: MANAGER, LABEL_MD: kopf.PRESENT})
    def child_deployment_event(body: kopf.Body, **_: Any) -> None:
        namespace = body.metadata.namespace or ""
        owner = body.metadata.labels.get(LABEL_MD, "")
        md = reconciler.kube.get("ModelDeployment", owner, namespace)
        if md is not None:
            reconciler.reconcile_modeldeployment(md, recorder_for(md))

    @kopf.on.event(GROUP, VERSION, "gpupools", registry=registry, id="gpupool")
    def gpupool_event(type: str | None, body: kopf.Body, **_: Any) -> None:
        if type == "DELETED":
            return
        name = body.metadata.name or ""
        generation = int(body.metadata.get("generation", 0))
        with pool_generations_lock:
            changed = pool_generations.get(name) != generation
            pool_generations[name] = generation
        reconciler.refresh_pool(body, recorder_for(body))
        if changed and type is not None:
            # A new pool, or new tolerations / selector: its users re-render now.
            reconcile_each(reconciler, reconciler.modeldeployments_using(name),
                           config.namespaces, recorder_for)


def configure_settings(settings: kopf.OperatorSettings, *, peering_name: str,
                       priority: int, lifetime: int, instance: str,
                       max_workers: int = 8) -> None:
    settings.peering.name = peering_name
    settings.peering.priority = priority
    settings.peering.lifetime = lifetime
    # One peering neighbourhood for every dedicap, whatever namespaces each one serves.
    settings.peering.clusterwide = True
    settings.peering.stealth = True
    settings.posting.reporting_component = MANAGER
    settings.posting.reporting_instance = instance
    settings.posting.event_name_prefix = "dedicap-"
    # No dedicap handler needs a finalizer (no timers, daemons or deletion handlers), so kopf
    # adds none. kopf always has a finalizer name; this one is what older versions put on
    # GPUPools, so kopf also recognizes it as its own and drops it where it is not needed.
    settings.persistence.finalizer = LEGACY_FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration")
    settings.execution.max_workers = max_workers
    # Watches are restarted now and then, so a silently dropped connection heals.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 10


def startup_handler(configure: Callable[[kopf.OperatorSettings], None],
                    registry: kopf.OperatorRegistry) -> None:
    @kopf.on.startup(registry=registry, id="settings")
    def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        configure(settings)

    @kopf.on.login(registry=registry, id="login")
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # The official client's configuration: in-cluster service account or $KUBECONFIG.
        return kopf.login_via_client(**kwargs)
