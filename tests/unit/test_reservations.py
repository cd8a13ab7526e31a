"""Reservation admission, quotas, reservation-aware placement and accounting (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from dedicap.api.models import CapacityReservation, GPUPool
from dedicap.decide import placement as pl
from dedicap.decide import reservations as rv
from dedicap.decide.accounting import accumulate, hourly_cost
from dedicap.decide.cluster import ClusterState, NodeInfo, PodInfo
from dedicap.decide.placement import (
    Entitlement,
    NodeState,
    PlacementRequest,
    PoolState,
    place,
)
from dedicap.decide.reservations import (
    ReservationView,
    admit,
    entitlement,
    namespace_quotas,
    reservation_usage,
)


def GPUPod(namespace: str, name: str, node: str, gpus: int, priority: int = 0,
           owner: str = "", reservation: str = "", capacity: str = "",
           bound: bool = True) -> PodInfo:
    """A pod holding GPUs, as the one pod parser describes it."""
    return PodInfo(namespace, name, node, gpus, bound, priority,
                   owner.split("/", 1)[1] if owner else "", reservation, capacity)

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
T0 = datetime(2025, 1, 1, tzinfo=UTC)


def _r(name: str, gpus: int, pool: str = "h100", *, ns: tuple[str, ...] = ("acme",),
       created: int = 0, burst: int = 0, burst_pools: tuple[str, ...] = (),
       nb: datetime | None = None, na: datetime | None = None, generation: int = 1,
       admitted_generation: int | None = None) -> ReservationView:
    return ReservationView(name, pool, gpus, ns, burst, burst_pools, nb, na,
                           T0 + timedelta(minutes=created), generation, admitted_generation)


def _pool(name: str, nodes: list[tuple[int, int]] | list[tuple[int, int, int]],
          memory: float = 80.0, price: float = 2.5, zones: int = 2) -> PoolState:
    states = []
    for i, n in enumerate(nodes):
        alloc, used, protected = (n[0], n[1], n[2]) if len(n) == 3 else (n[0], n[1], n[1])
        states.append(NodeState(f"{name}-{i}", f"zone-{'ab'[i % zones]}", alloc, used, protected))
    return PoolState(name, memory, tuple(states), price)


H100 = _pool("h100", [(8, 0)] * 4)
A10G = _pool("a10g", [(1, 0)] * 6, memory=24, price=0.75)


# ----------------------------------------------------------------------------- admission


def test_overcommitting_reservation_is_refused_with_what_is_left() -> None:
    rs = [_r("a", 16, created=1), _r("b", 10, created=2), _r("c", 8, created=3)]
    adm = admit(rs, {"h100": 32}, NOW)
    assert adm["a"].admitted and adm["b"].admitted and not adm["c"].admitted
    assert adm["c"].reason == rv.OVERCOMMITTED and adm["c"].left_gpus == 6
    assert "6 GPUs left, 8 asked" in adm["c"].message
    assert "a, b" in adm["c"].message
    assert adm["b"].left_gpus == 6 and "6 GPUs of the pool left" in adm["b"].message


def test_admission_order_is_creation_then_name_not_input_order() -> None:
    rs = [_r("z", 20, created=1), _r("y", 20, created=1), _r("x", 20, created=0)]
    adm = admit(list(reversed(rs)), {"h100": 32}, NOW)
    assert [n for n, a in sorted(adm.items()) if a.admitted] == ["x"]
    rs = [_r("z", 20, created=1), _r("y", 20, created=1)]
    assert admit(rs, {"h100": 32}, NOW)["y"].admitted


def test_growing_an_old_reservation_cannot_push_out_a_newer_admitted_one() -> None:
    # "old" was admitted with 16 at generation 1 and is edited to 24 (generation 2); "new" holds
    # 16 and was admitted at its generation: the edit is refused, not the newer reservation.
    old = _r("old", 24, created=0, generation=2, admitted_generation=1)
    new = _r("new", 16, created=5, generation=1, admitted_generation=1)
    adm = admit([old, new], {"h100": 32}, NOW)
    assert adm["new"].admitted and not adm["old"].admitted
    assert "16 GPUs left, 24 asked" in adm["old"].message


def test_unknown_pool_and_expired_window_are_not_admitted_and_hold_nothing() -> None:
    rs = [_r("gone", 32, na=NOW - timedelta(hours=1), created=0),
          _r("typo", 4, pool="h1000", created=1), _r("ok", 32, created=2)]
    adm = admit(rs, {"h100": 32}, NOW)
    assert adm["gone"].reason == rv.EXPIRED and adm["typo"].reason == rv.POOL_NOT_FOUND
    assert adm["ok"].admitted and adm["ok"].active


def test_windows_that_do_not_overlap_share_the_pool() -> None:
    day = timedelta(days=1)
    march = _r("march", 32, nb=NOW - day, na=NOW + 10 * day, created=0)
    april = _r("april", 32, nb=NOW + 10 * day, na=NOW + 40 * day, created=1)
    overlap = _r("overlap", 1, nb=NOW + 5 * day, na=NOW + 11 * day, created=2)
    adm = admit([march, april, overlap], {"h100": 32}, NOW)
    assert adm["march"].active and adm["april"].admitted and not adm["april"].active
    assert adm["april"].reason == rv.NOT_YET_ACTIVE
    assert not adm["overlap"].admitted and adm["overlap"].left_gpus == 0


def test_reservation_view_reads_the_api_object() -> None:
    cr = CapacityReservation.model_validate({
        "metadata": {"name": "acme-h100", "creationTimestamp": "2025-01-01T00:00:00Z",
                     "generation": 3},
        "spec": {"namespaces": ["acme"], "pool": "h100", "gpus": 16,
                 "burst": {"maxGPUs": 8, "pools": ["h100", "a10g"]},
                 "window": {"notBefore": "2025-01-01T00:00:00Z"}},
        "status": {"admitted": True, "observedGeneration": 3}})
    v = ReservationView.of(cr)
    assert (v.name, v.pool, v.gpus, v.burst_max, v.borrow_pools) == (
        "acme-h100", "h100", 16, 8, ("h100", "a10g"))
    assert v.created == T0 and v.admitted_generation == 3 and v.generation == 3


# ----------------------------------------------------------------------------- quotas


def test_quota_is_reservations_plus_burst_in_effect_per_namespace() -> None:
    rs = [_r("a1", 16, ns=("acme", "acme-dev"), burst=8, created=0),
          _r("a2", 2, pool="a10g", ns=("acme",), created=1),
          _r("late", 4, ns=("acme",), nb=NOW + timedelta(days=1), created=2),
          _r("b", 0, ns=("beta",), burst=16, created=3),
          _r("c", 40, ns=("gamma",), created=4)]
    quotas = namespace_quotas(rs, admit(rs, {"h100": 32, "a10g": 6}, NOW))
    assert quotas["acme"].gpus == 16 + 8 + 2
    assert quotas["acme"].reservations == ("a1", "a2", "late")
    assert quotas["acme"].in_effect == ("a1", "a2")
    assert quotas["acme-dev"].gpus == 24 and quotas["beta"].gpus == 16
    assert quotas["gamma"].gpus == 0  # refused: over-committed


# ----------------------------------------------------------------------------- state and usage


def test_pool_states_leave_out_own_pods_and_split_protected() -> None:
    pods = [GPUPod("acme", "p1", "n0", 2, rv_priority(True), "acme/chat", "r", rv.RESERVED),
            GPUPod("beta", "p2", "n0", 3, rv_priority(False), "beta/x", "b", rv.BURST),
            GPUPod("ops", "p3", "n1", 1, 0)]
    pool = GPUPool.model_validate({"metadata": {"name": "h100"}, "spec": {
        "nodeSelector": {"p": "h100"}, "gpu": {"product": "H100", "memoryGiB": 80}}})
    state = ClusterState({"h100": pool}, tuple(
        NodeInfo(name, {"p": "h100", "topology.kubernetes.io/zone": zone}, 8, 8, True, False)
        for name, zone in (("n1", "zone-b"), ("n0", "zone-a"))), tuple(pods))
    nodes = state.pool_states("acme/chat", protected_priority=1_000_000)["h100"].nodes
    assert [(n.name, n.zone) for n in nodes] == [("n0", "zone-a"), ("n1", "zone-b")]
    assert (nodes[0].used, nodes[0].used_protected, nodes[0].free, nodes[0].reclaimable) == (
        3, 0, 5, 8)
    assert nodes[1].free == 7 and nodes[1].reclaimable == 8


def rv_priority(reserved: bool) -> int:
    return 1_000_000 if reserved else 1_000


def test_usage_counts_labelled_replicas_of_the_tenant_only() -> None:
    r = _r("acme-h100", 16, ns=("acme",), burst=8)
    pods = [GPUPod("acme", "a", "n0", 2, 0, "acme/chat", "acme-h100", rv.RESERVED),
            GPUPod("acme", "b", "n1", 1, 0, "acme/chat", "acme-h100", rv.BURST),
            GPUPod("acme", "c", "n1", 4, 0, "acme/bot", "acme-h100", rv.RESERVED),
            GPUPod("evil", "d", "n1", 4, 0, "evil/x", "acme-h100", rv.RESERVED)]
    u = reservation_usage(r, pods)
    assert (u.reserved_gpus, u.burst_gpus) == (6, 1)
    assert u.others("acme/chat") == (4, 0) and u.others("acme/bot") == (2, 1)


def test_entitlement_subtracts_what_other_deployments_use() -> None:
    r = _r("acme-h100", 16, burst=8)
    adm = admit([r], {"h100": 32}, NOW)
    pods = [GPUPod("acme", "c", "n1", 4, 0, "acme/bot", "acme-h100", rv.RESERVED),
            GPUPod("acme", "d", "n1", 3, 0, "acme/bot", "acme-h100", rv.BURST)]
    usage = {"acme-h100": reservation_usage(r, pods)}
    e = entitlement("acme", "acme/chat", "acme-h100", {r.name: r}, adm, usage)
    assert (e.pool, e.reserved_gpus, e.burst_gpus, e.burst_pools) == ("h100", 12, 5, ("h100",))
    # Naming a reservation of another tenant, a missing one, or one not in effect: burst only.
    for ns, name in (("evil", "acme-h100"), ("acme", "nope")):
        e = entitlement(ns, f"{ns}/x", name, {r.name: r}, adm, usage)
        assert e.pool is None and e.reserved_gpus == 0 and e.note
    late = _r("late", 4, nb=NOW + timedelta(days=1))
    e = entitlement("acme", "acme/x", "late", {"late": late}, admit([late], {"h100": 32}, NOW), {})
    assert e.pool is None and "NotYetActive" in e.note


# ----------------------------------------------------------------------------- placement


def _req(n: int, pools: tuple[str, ...] = ("h100", "a10g"), gpr: int = 1,
         mem: float = 20.0) -> PlacementRequest:
    return PlacementRequest(n, gpr, mem, pools)


def test_reserved_headroom_first_then_burst_then_next_pool() -> None:
    ent = Entitlement("acme-h100", "h100", 4, 3, ("h100", "a10g"), 16)
    pools = {"h100": _pool("h100", [(8, 2), (8, 8)]), "a10g": A10G}  # 6 free on h100
    p = place(_req(9), pools, ent)
    assert (p.on("h100").reserved, p.on("h100").burst, p.on("a10g").replicas) == (4, 2, 1)
    assert p.placed == 7 and p.reason == pl.BURST_LIMIT
    assert "wanted 9 replicas" in p.message and "burst" in p.message

    ent = Entitlement("acme-h100", "h100", 4, 10, ("h100", "a10g"), 16)
    p = place(_req(9), pools, ent)
    assert (p.on("h100").reserved, p.on("h100").burst, p.on("a10g").burst) == (4, 2, 3)
    assert not p.constrained and p.message == ""


def test_reserved_replicas_reclaim_burst_gpus_but_burst_does_not() -> None:
    # Every GPU held by another tenant's burst replicas (preemptible): reserved replicas may
    # take them (the scheduler preempts), burst replicas of the same request may not.
    full_of_burst = _pool("h100", [(8, 8, 0)] * 4)
    ent = Entitlement("acme-h100", "h100", 16, 8, ("h100",), 16)
    p = place(_req(20, ("h100",)), {"h100": full_of_burst}, ent)
    assert (p.on("h100").reserved, p.on("h100").burst) == (16, 0)
    assert p.reason == pl.INSUFFICIENT_CAPACITY
    assert "free 0/32 GPUs" in p.message and "reserved headroom 16" in p.message
    # The same pool seen by a tenant without a reservation: nothing.
    p = place(_req(2, ("h100",)), {"h100": full_of_burst})
    assert p.placed == 0 and p.constrained


def test_reserved_replicas_prefer_free_gpus_to_preempting() -> None:
    pool = _pool("h100", [(8, 8, 0), (8, 0, 0)])  # node 0 full of burst, node 1 empty
    p = place(_req(8, ("h100",)), {"h100": pool}, Entitlement("r", "h100", 8, 0, ("h100",), 8))
    assert p.on("h100").reserved == 8 and not p.constrained
    p = place(_req(9, ("h100",)), {"h100": pool}, Entitlement("r", "h100", 9, 0, ("h100",), 9))
    assert p.on("h100").reserved == 9  # the ninth preempts


def test_gpu_memory_and_node_size_and_unknown_pools_are_explained() -> None:
    pools = {"h100": _pool("h100", [(8, 8)] * 4), "a10g": A10G}
    p = place(_req(3, ("h100", "a10g", "tpu"), mem=40), pools)
    assert p.placed == 0 and p.reason == pl.INSUFFICIENT_CAPACITY
    reasons = {r.pool: r.reason for r in p.pools}
    assert reasons == {"h100": "Eligible", "a10g": "InsufficientGPUMemory", "tpu": "UnknownPool"}
    assert "a10g: GPU memory 24 GiB < 40 GiB needed" in p.message
    assert "tpu: no GPUPool named 'tpu'" in p.message
    p = place(_req(1, ("a10g",), gpr=2), pools)
    assert p.reason == pl.NO_ELIGIBLE_POOL and "no node has 2 allocatable GPUs" in p.message


def test_fallback_to_a10g_when_h100_is_exhausted() -> None:
    pools = {"h100": _pool("h100", [(8, 8)] * 4), "a10g": A10G}
    p = place(_req(4), pools)
    assert [(a.pool, a.replicas) for a in p.assignments] == [("h100", 0), ("a10g", 4)]


def test_multi_gpu_replicas_fit_whole_nodes_only() -> None:
    pool = _pool("h100", [(8, 5), (8, 5), (8, 3)])  # free 3, 3, 5: one 4-GPU replica fits
    p = place(_req(3, ("h100",), gpr=4), {"h100": pool})
    assert p.placed == 1 and p.constrained


def test_replicas_spread_over_zones() -> None:
    ent = Entitlement("r", "h100", 4, 0, ("h100",), 4)
    nodes = pl._Nodes(H100.nodes)
    for _ in range(4):
        assert nodes.take(1, reclaim=True)
    assert nodes.mine_zone == {"zone-a": 2, "zone-b": 2} and len(nodes.mine) == 4
    assert place(_req(4, ("h100",)), {"h100": H100}, ent).on("h100").reserved == 4


# ----------------------------------------------------------------------------- accounting


def test_gpu_hours_integrate_the_count_held_between_observations() -> None:
    u = accumulate(None, 4, NOW)
    u = accumulate(u, 8, NOW + timedelta(minutes=30))  # 4 GPUs for half an hour
    u = accumulate(u, 0, NOW + timedelta(hours=2))  # 8 GPUs for 1.5 hours
    assert u.gpu_hours == 4 * 0.5 + 8 * 1.5 and u.since == NOW and u.gpus == 0
    back = accumulate(u, 0, NOW)  # the clock went backwards: no negative charge
    assert back.gpu_hours == u.gpu_hours


def test_hourly_cost_uses_each_pools_price() -> None:
    pools = {"h100": H100, "a10g": A10G}
    assert hourly_cost({"h100": 4, "a10g": 2}, pools) == (4 * 2.5 + 2 * 0.75, "USD")
    eur = PoolState("eu", 80, (), 2.0, "EUR")
    assert hourly_cost({"h100": 1, "eu": 1}, {**pools, "eu": eur})[1] is None
    assert hourly_cost({}, pools) == (0.0, None)


def test_accountant_integrates_per_deployment_and_pool_and_resumes_from_status() -> None:
    from dedicap.controller.accounting import Accountant

    pools = {"h100": H100, "a10g": A10G}
    acc = Accountant()
    acc.observe("acme", "chat", {"h100": 4}, pools, NOW)
    r = acc.observe("acme", "chat", {"h100": 4, "a10g": 2}, pools, NOW + timedelta(hours=1))
    assert r.gpu_hours == 4.0 and r.gpus == 6 and r.hourly_cost == 4 * 2.5 + 2 * 0.75
    r = acc.observe("acme", "chat", {"a10g": 2}, pools, NOW + timedelta(hours=2))
    assert r.gpu_hours == 10.0 and r.by_pool["h100"].gpu_hours == 8.0
    assert r.by_pool["a10g"].gpu_hours == 2.0 and r.since == NOW
    assert r.status()["since"] == "2025-03-01T12:00:00Z"
    # A new operator process continues from the status it finds, and charges the 3 hours it
    # was down at the 2 GPUs held when the status was written.
    fresh = Accountant()
    r2 = fresh.observe("acme", "chat", {"a10g": 2}, pools, NOW + timedelta(hours=5),
                       previous_cost=r.status())
    assert r2.gpu_hours == 16.0 and r2.since == NOW
    r2 = fresh.observe("acme", "chat", {"a10g": 2}, pools, NOW + timedelta(hours=6))
    assert r2.gpu_hours == 18.0


def test_a_reservation_on_a_pool_the_deployment_does_not_accept_is_explained() -> None:
    ent = Entitlement("acme-h100", "h100", 8, 0, ("h100",), 8)
    p = place(_req(2, ("a10g",)), {"h100": H100, "a10g": A10G}, ent)
    assert p.placed == 0 and "its pool h100 is not in spec.placement.pools" in p.message
