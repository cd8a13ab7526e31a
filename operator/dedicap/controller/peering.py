"""Which of several dedicap processes acts, for the threads that run beside kopf.

kopf pauses its own handlers while a peer outranks this process. The operator's own loops (the
autoscaler, the periodic resync) are not kopf handlers, so each round they read the
ClusterKopfPeering object themselves and apply kopf's rule (`peering_allows`):
of several processes sharing a peering object only the one kopf lets act does anything. This
needs no finalizer and no kopf timer on any object.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from dedicap.controller.kube import Kube, KubeError

log = logging.getLogger(__name__)

PEERING_KIND = "ClusterKopfPeering"


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


def peering_allows(peers: Mapping[str, Any] | None, priority: int, now: datetime) -> bool:
    """kopf's rule, from the ClusterKopfPeering object's status: act only while no other live
    peer has a higher or the same priority. This process's own entry has our priority, so
    exactly one live entry may have it; none means kopf has not announced us yet: wait."""
    if not peers:
        return False
    same = 0
    for info in peers.values():
        if not isinstance(info, Mapping):
            continue
        try:
            seen = datetime.fromisoformat(str(info["lastseen"]))
            lifetime = timedelta(seconds=int(info.get("lifetime", 60)))
            prio = int(info.get("priority", 0))
        except (KeyError, TypeError, ValueError):
            continue
        if seen.tzinfo is None:
            seen = seen.replace(tzinfo=now.tzinfo)
        if seen + lifetime <= now:
            continue  # dead
        if prio > priority:
            return False
        if prio == priority:
            same += 1
    return same == 1


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass
class PeeringGate:
    """Asks the peering object whether this process may act now.

    `name` None means standalone: always act. An unreadable peering object means wait, as kopf
    does when it cannot tell who else is there. `loop` names the caller in the log line written
    when the answer changes."""

    kube: Kube
    name: str | None
    priority: int
    loop: str
    clock: Callable[[], datetime] = _now
    _was_active: bool | None = field(default=None, init=False)

    def allows(self) -> bool:
        if self.name is None:
            return True
        try:
            obj = self.kube.get(PEERING_KIND, self.name)
        except KubeError as err:
            log.warning("cannot read peering %s: %s", self.name, err)
            return False
        peers = (obj or {}).get("status")
        return peering_allows(peers if isinstance(peers, Mapping) else None, self.priority,
                              self.clock())

    def active(self) -> bool:
        """`allows()`, logging when this process starts or stops acting."""
        active = self.allows()
        if active != self._was_active:
            log.info("%s %s", self.loop, "active" if active else "paused (peering)")
            self._was_active = active
        return active


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
