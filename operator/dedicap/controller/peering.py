"""Who acts: of several processes of one installation, and of several installations.

**Within an installation** (processes sharing a peering name, e.g. the replicas of one Helm
release) kopf's peering decides: every process announces itself in the ClusterKopfPeering
object `<peering>` with a priority, and only the process that no other live peer outranks or
ties acts (`peering_allows`). kopf applies that rule to its own machinery; the operator's loops
apply it through `PeeringGate`.

**Between installations** (another Helm release, a developer's `dedicap run`, the demo's
operator beside a test run), which may use other peering names and serve other namespaces, the
rule must keep two from ever acting on the same object. Every process also announces its
installation and the namespaces it serves in one cluster-wide registry, the
ClusterKopfPeering object `dedicap-installations`, and:

- a ModelDeployment in namespace N belongs to the live installation whose scope names N most
  specifically: an exact name beats a pattern (`team-*`), a pattern beats "all namespaces";
  two installations equally specific about N (a misconfiguration) are ordered by peering name,
  and the loser says so in its log;
- cluster-scoped work (GPUPool status, reservations, quotas) belongs to one installation in the
  cluster: the one serving all namespaces if any, else the broadest scope, then by peering name.

So an installation serving `team-a` and one serving everything coexist: the first acts for
`team-a`, the second for every other namespace and for the pools. A process announces itself
every `lifetime / 3` seconds; an entry older than its `lifetime` is dead (a process killed
without a goodbye stops counting after that long).
"""

from __future__ import annotations

import fnmatch
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from dedicap.controller.kube import Kube, KubeError

log = logging.getLogger(__name__)

PEERING_KIND = "ClusterKopfPeering"
REGISTRY = "dedicap-installations"


def serves(namespaces: Iterable[str], namespace: str) -> bool:
    """Whether `namespace` is in a scope (glob patterns; none: all namespaces)."""
    patterns = tuple(namespaces)
    return not patterns or any(fnmatch.fnmatchcase(namespace, p) for p in patterns)


def ensure_peering_object(kube: Kube, name: str) -> None:
    """kopf needs the peering object to exist; create it, tolerating a racing creator."""
    if kube.get(PEERING_KIND, name) is not None:
        return
    try:
        kube.create({"apiVersion": "kopf.dev/v1", "kind": PEERING_KIND,
                     "metadata": {"name": name,
                                  "labels": {"app.kubernetes.io/managed-by": "dedicap"}}})
    except KubeError as err:
        if err.status != 409:
            raise


def _alive(info: Mapping[str, Any], now: datetime) -> bool:
    try:
        seen = datetime.fromisoformat(str(info["lastseen"]))
        lifetime = timedelta(seconds=int(info.get("lifetime", 60)))
    except (KeyError, TypeError, ValueError):
        return False
    if seen.tzinfo is None:
        seen = seen.replace(tzinfo=now.tzinfo)
    return seen + lifetime > now


def peering_allows(peers: Mapping[str, Any] | None, priority: int, now: datetime) -> bool:
    """kopf's rule, from the ClusterKopfPeering object's status: act only while no other live
    peer has a higher or the same priority. This process's own entry has our priority, so
    exactly one live entry may have it; none means kopf has not announced us yet: wait."""
    if not peers:
        return False
    same = 0
    for info in peers.values():
        if not isinstance(info, Mapping) or not _alive(info, now):
            continue
        try:
            prio = int(info.get("priority", 0))
        except (TypeError, ValueError):
            continue
        if prio > priority:
            return False
        if prio == priority:
            same += 1
    return same == 1


@dataclass(frozen=True)
class Installation:
    """A live installation as the registry shows it: its peering name and scope."""

    peering: str
    namespaces: tuple[str, ...]  # glob patterns; empty: all namespaces


def installations(registry: Mapping[str, Any] | None, now: datetime) -> list[Installation]:
    """The live installations in the registry's status (one entry per process)."""
    found: dict[str, Installation] = {}
    for info in (registry or {}).values():
        if not isinstance(info, Mapping) or not _alive(info, now):
            continue
        peering = info.get("peering")
        scope = info.get("namespaces")
        if not isinstance(peering, str) or not isinstance(scope, list):
            continue
        found[peering] = Installation(peering, tuple(sorted(str(s) for s in scope)))
    return sorted(found.values(), key=lambda i: i.peering)


def _specificity(scope: tuple[str, ...], namespace: str) -> int | None:
    """How specifically `scope` names `namespace`: 2 exactly, 1 by a pattern, 0 as "all";
    None when it does not serve it."""
    if not scope:
        return 0
    best = None
    for pattern in scope:
        if pattern == namespace:
            return 2
        if fnmatch.fnmatchcase(namespace, pattern):
            best = 1
    return best


def owner_of(namespace: str, live: Iterable[Installation]) -> str | None:
    """The peering name of the installation that acts for `namespace` (module rules)."""
    ranked = [(-spec, i.peering) for i in live
              if (spec := _specificity(i.namespaces, namespace)) is not None]
    return min(ranked)[1] if ranked else None


def cluster_owner(live: Iterable[Installation]) -> str | None:
    """The peering name of the installation that does the cluster-scoped work."""
    ranked = [(0 if not i.namespaces else 1, -len(i.namespaces), i.peering) for i in live]
    return min(ranked)[2] if ranked else None


PeersReader = Callable[[str], Mapping[str, Any] | None]


@dataclass
class PeeringGate:
    """Asks the peering objects whether this process may act now.

    `name` is the installation's peering name; `peering` False (`--standalone`) means no peers
    inside the installation: the process always acts for it, and is still one installation
    among others in the registry (a standalone process beside a Helm release takes only the
    namespaces it names more specifically). `read(name)` returns a peering object's status (the
    view's copy); an unreadable object means wait, as kopf does when it cannot tell who else is
    there. `loop` names the caller in the log lines written when the answers change."""

    kube: Kube
    name: str
    priority: int
    loop: str
    peering: bool = True
    namespaces: tuple[str, ...] = ()
    instance: str = ""
    lifetime_s: int = 30
    read: PeersReader | None = None
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    _was_active: dict[str, bool] = field(default_factory=dict, init=False)
    _announced: datetime | None = field(default=None, init=False)
    _conflicts: set[str] = field(default_factory=set, init=False)
    _cluster_owner: str | None = field(default=None, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def _status(self, name: str) -> Mapping[str, Any] | None:
        if self.read is not None:
            return self.read(name)
        try:
            obj = self.kube.get(PEERING_KIND, name)
        except KubeError as err:
            log.warning("cannot read peering %s: %s", name, err)
            return None
        status = (obj or {}).get("status")
        return status if isinstance(status, Mapping) else None

    def peers(self) -> Mapping[str, Any] | None:
        """The processes announced in this installation's peering object."""
        return self._status(self.name)

    def allows(self) -> bool:
        """Whether this process acts within its installation."""
        if not self.peering:
            return True
        return peering_allows(self._status(self.name), self.priority, self.clock())

    def active(self, loop: str | None = None) -> bool:
        """`allows()`, logging when this process starts or stops acting (per loop)."""
        active = self.allows()
        name = loop or self.loop
        if active != self._was_active.get(name):
            log.info("%s %s", name, "active" if active else "paused (peering)")
            self._was_active[name] = active
        return active

    # ----------------------------------------------------------------- installations

    def _live(self) -> list[Installation]:
        return installations(self._status(REGISTRY), self.clock())

    def acts_for(self, namespace: str) -> bool:
        """Whether this installation, not another one, acts for `namespace`."""
        if not serves(self.namespaces, namespace):
            return False
        live = self._live()
        if not any(i.peering == self.name for i in live):
            return True  # not announced yet (or the registry unreadable): our scope decides
        owner = owner_of(namespace, live)
        if owner != self.name:
            self._note_conflict(namespace, owner, live)
            return False
        return True

    def acts_for_cluster(self) -> bool:
        """Whether this installation does the cluster-scoped work."""
        live = self._live()
        owner = cluster_owner(live) if any(i.peering == self.name for i in live) else self.name
        if owner != self._cluster_owner:
            log.info("cluster-scoped work (pools, reservations, quotas): %s",
                     "this installation" if owner == self.name else f"installation {owner!r}")
            self._cluster_owner = owner
        return owner == self.name

    def _note_conflict(self, namespace: str, owner: str | None,
                       live: list[Installation]) -> None:
        mine = next((i for i in live if i.peering == self.name), None)
        theirs = next((i for i in live if i.peering == owner), None)
        if mine is None or theirs is None:
            return
        same = _specificity(mine.namespaces, namespace) == _specificity(
            theirs.namespaces, namespace)
        with self._lock:
            if owner in self._conflicts:
                return
            self._conflicts.add(str(owner))
        if same:
            log.warning("installation %r serves namespaces %s as specifically as %r does "
                        "(%s): %r acts there, this one does not; give the installations "
                        "disjoint watchNamespaces", self.name, list(mine.namespaces) or "all",
                        owner, list(theirs.namespaces) or "all", owner)
        else:
            log.info("installation %r leaves namespace %s (and others it names as "
                     "specifically) to %r, which names it more specifically", self.name,
                     namespace, owner)

    def announce(self) -> None:
        """Write this process's entry into the registry (every lifetime / 3 seconds)."""
        now = self.clock()
        if self._announced is not None and now - self._announced < timedelta(
                seconds=self.lifetime_s / 3):
            return
        if self._announced is None:
            ensure_peering_object(self.kube, REGISTRY)
        entry = {"priority": self.priority, "lifetime": self.lifetime_s,
                 "lastseen": now.isoformat(), "peering": self.name,
                 "namespaces": list(self.namespaces)}
        patch: dict[str, Any] = {self.instance: entry}
        # Drop entries dead for ten lifetimes: processes killed long ago.
        for key, info in (self._status(REGISTRY) or {}).items():
            if key != self.instance and isinstance(info, Mapping) and not _alive(
                    {**info, "lifetime": int(info.get("lifetime", 60)) * 10}, now):
                patch[key] = None
        self.kube.patch_merge(PEERING_KIND, REGISTRY, {"status": patch})
        self._announced = now

    def withdraw(self) -> None:
        """Remove this process's entry (a clean stop)."""
        try:
            self.kube.patch_merge(PEERING_KIND, REGISTRY, {"status": {self.instance: None}})
        except KubeError as err:
            log.info("cannot withdraw from %s: %s", REGISTRY, err)


# Start times in milliseconds fit in 42 bits until the year 2109; 10 random bits below them keep
# two processes started in the same millisecond apart (kopf pauses every peer on a tie).
_START_BITS = 42
_TIE_BITS = 10


def start_priority(started_at: float, tie_breaker: int) -> int:
    """The peering priority of a process started at `started_at` (Unix seconds): the earlier,
    the higher. So the oldest live process acts: a newly started one (a rolling update's new
    pod, a restarted container) stands by instead of taking over, and the standby that has run
    longest takes over when the acting one goes. `tie_breaker` is any number (random)."""
    started_ms = min(max(int(started_at * 1000), 0), (1 << _START_BITS) - 1)
    return (((1 << _START_BITS) - 1 - started_ms) << _TIE_BITS) | (tie_breaker % (1 << _TIE_BITS))
