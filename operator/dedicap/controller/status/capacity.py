"""GPUPool and CapacityReservation status, from the capacity plan and the cluster state. Pure."""

from __future__ import annotations

from typing import Any

from dedicap.api import conditions as c
from dedicap.api.models import CapacityReservation, GPUPool
from dedicap.decide import reservations as rv
from dedicap.decide.cluster import PoolFigures

ADMITTED = "Admitted"
ACTIVE = "Active"


def pool_status(pool: GPUPool, figures: PoolFigures, reserved_gpus: int
                ) -> tuple[dict[str, Any], c.Cond]:
    """A pool's status fields (wire names) and its Ready condition."""
    fields = {
        "observedGeneration": int(pool.metadata.get("generation", 0) or 0),
        "nodes": figures.nodes,
        "readyNodes": figures.ready_nodes,
        "totalGPUs": figures.total,
        "allocatableGPUs": figures.allocatable,
        "allocatedGPUs": figures.allocated,
        "reservedGPUs": reserved_gpus,
        "freeGPUs": figures.free,
    }
    if figures.ready_nodes:
        cond = c.Cond(c.READY, "True", "NodesReady",
                      f"{figures.ready_nodes}/{figures.nodes} nodes Ready with "
                      f"{figures.allocatable} allocatable GPUs")
    else:
        cond = c.Cond(c.READY, "False", "NoReadyNodes", (
            f"no Ready node matches spec.nodeSelector {dict(pool.spec.node_selector)}"
            f" ({figures.nodes} match)"))
    return fields, cond


def reservation_status(cr: CapacityReservation, admission: rv.Admission,
                       usage: rv.ReservationUsage) -> tuple[dict[str, Any], list[c.Cond]]:
    """The status fields the reservation should carry (wire names) and its conditions."""
    in_effect = admission.active
    headroom = max(cr.spec.gpus - usage.reserved_gpus, 0) if in_effect else 0
    if admission.admitted and not in_effect:
        active = c.Cond(ACTIVE, "False", admission.reason, admission.message)
    elif in_effect:
        active = c.Cond(ACTIVE, "True", "InWindow",
                        f"{usage.reserved_gpus} of {cr.spec.gpus} reserved GPUs in use, "
                        f"{usage.burst_gpus} burst GPUs borrowed")
    else:
        active = c.Cond(ACTIVE, "False", admission.reason, "not admitted")
    admitted = c.Cond(ADMITTED, "True" if admission.admitted else "False", admission.reason,
                      admission.message)
    fields = {
        "observedGeneration": int(cr.metadata.get("generation", 0) or 0),
        "admitted": admission.admitted,
        "usedGPUs": usage.reserved_gpus,
        "burstGPUs": usage.burst_gpus,
        "headroomGPUs": headroom,
        "message": admission.message,
    }
    return fields, [admitted, active]

