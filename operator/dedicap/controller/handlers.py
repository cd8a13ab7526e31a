"""kopf wiring: *when* reconciles run. What they do is in reconcile.py.

- every ModelDeployment watch event (including the initial listing after a start) reconciles
  that ModelDeployment; so does every event of a Deployment it owns (status follows
  readyReplicas, and a child deleted or edited by hand is put back);
- GPUPools: a timer recomputes each pool's status from Nodes and Pods; another re-reconciles
  the ModelDeployments that list the pool (capacity freed elsewhere, nodes added or removed);
  a new pool or a changed pool spec reconciles them at once.

Only event handlers and timers are used: no create/update handlers, so kopf keeps no progress
annotations, and ModelDeployments carry no finalizer (deleting one works with the operator
down; the garbage collector removes its children through their owner references). Timers need
a finalizer on their object, which is why they hang on the (administrator-owned) GPUPools.
"""

from __future__ import annotations

import fnmatch
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import kopf

from dedicap.api.models import GROUP, VERSION
from dedicap.controller.kube import KubeError
from dedicap.controller.reconcile import Reconciler, Recorder
from dedicap.decide.render import LABEL_MANAGED_BY, LABEL_MD, MANAGER

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HandlerConfig:
    namespaces: tuple[str, ...] = ()  # empty: all namespaces
    pool_refresh_seconds: float = 10.0
    resync_seconds: float = 30.0


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

    def served(namespace: str) -> bool:
        return not config.namespaces or any(
            fnmatch.fnmatchcase(namespace, pattern) for pattern in config.namespaces)

    def reconcile_many(mds: Sequence[Mapping[str, Any]]) -> None:
        for md in mds:
            if served(md["metadata"]["namespace"]):
                try:
                    reconciler.reconcile_modeldeployment(md, recorder_for(md))
                except KubeError as err:
                    log.warning("reconcile of %s/%s failed: %s", md["metadata"]["namespace"],
                                md["metadata"]["name"], err)

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
            reconcile_many(reconciler.modeldeployments_using(name))

    @kopf.timer(GROUP, VERSION, "gpupools", registry=registry, id="gpupool-status",
                interval=config.pool_refresh_seconds)
    def gpupool_status_timer(body: kopf.Body, **_: Any) -> None:
        reconciler.refresh_pool(body, recorder_for(body))

    @kopf.timer(GROUP, VERSION, "gpupools", registry=registry, id="gpupool-users-resync",
                interval=config.resync_seconds, initial_delay=config.resync_seconds)
    def gpupool_users_resync(body: kopf.Body, **_: Any) -> None:
        reconcile_many(reconciler.modeldeployments_using(body.metadata.name or ""))


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
    settings.persistence.finalizer = "dedicap.dev/timers"
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
