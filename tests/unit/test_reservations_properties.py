"""Properties of admission and placement, over generated pools, reservations and requests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from dedicap.decide.placement import Entitlement, NodeState, PlacementRequest, PoolState, place
from dedicap.decide.reservations import ReservationView, admit, namespace_quotas

NOW = datetime(2025, 3, 1, tzinfo=UTC)
POOLS = ("h100", "a10g", "l4")


@st.composite
def reservation_sets(draw: st.DrawFn) -> list[ReservationView]:
    n = draw(st.integers(0, 8))
    out = []
    for i in range(n):
        start = draw(st.one_of(st.none(), st.integers(-10, 10)))
        length = draw(st.integers(1, 15))
        out.append(ReservationView(
            name=f"r{i}", pool=draw(st.sampled_from(POOLS)), gpus=draw(st.integers(0, 40)),
            namespaces=(draw(st.sampled_from(("a", "b", "c"))),),
            burst_max=draw(st.integers(0, 8)),
            not_before=None if start is None else NOW + timedelta(days=start),
            not_after=None if start is None else NOW + timedelta(days=start + length),
            created=NOW - timedelta(minutes=draw(st.integers(0, 5))),
            generation=1, admitted_generation=draw(st.sampled_from((None, 1)))))
    return out


pool_sizes = st.fixed_dictionaries({p: st.integers(0, 48) for p in POOLS[:2]})


@settings(max_examples=300, deadline=None)
@given(reservation_sets(), pool_sizes, st.integers(-12, 30))
def test_admitted_reservations_never_exceed_the_pool_at_any_instant(
        rs: list[ReservationView], sizes: dict[str, int], day: int) -> None:
    adm = admit(rs, sizes, NOW)
    t = NOW + timedelta(days=day, hours=1)
    for pool, size in sizes.items():
        at_t = sum(r.gpus for r in rs if r.pool == pool and adm[r.name].admitted
                   and r.in_window(t))
        assert at_t <= size
    for r in rs:
        a = adm[r.name]
        if r.pool not in sizes:
            assert not a.admitted
        if not a.admitted and a.reason == "PoolOvercommitted":
            assert a.left_gpus < r.gpus and f"{a.left_gpus} GPUs left" in a.message
    # Deterministic and independent of the input order.
    assert admit(list(reversed(rs)), sizes, NOW) == adm


@settings(max_examples=200, deadline=None)
@given(reservation_sets(), pool_sizes)
def test_quota_is_the_sum_over_reservations_in_effect(
        rs: list[ReservationView], sizes: dict[str, int]) -> None:
    adm = admit(rs, sizes, NOW)
    quotas = namespace_quotas(rs, adm)
    for ns, q in quotas.items():
        assert q.gpus == sum(r.gpus + r.burst_max for r in rs
                             if ns in r.namespaces and adm[r.name].active)


@st.composite
def pool_states(draw: st.DrawFn) -> dict[str, PoolState]:
    out = {}
    for name in draw(st.lists(st.sampled_from(POOLS), unique=True, max_size=3)):
        nodes = []
        for i in range(draw(st.integers(0, 5))):
            alloc = draw(st.integers(0, 8))
            used = draw(st.integers(0, 10))
            protected = draw(st.integers(0, used))
            nodes.append(NodeState(f"{name}-{i}", f"z{i % 2}", alloc, used, protected))
        out[name] = PoolState(name, draw(st.sampled_from((16.0, 24.0, 80.0))), tuple(nodes))
    return out


@st.composite
def entitlements(draw: st.DrawFn) -> Entitlement:
    if draw(st.booleans()):
        return Entitlement()
    pool = draw(st.sampled_from(POOLS))
    burst_pools = tuple(draw(st.lists(st.sampled_from(POOLS), unique=True, max_size=3)))
    return Entitlement("r", pool, draw(st.integers(0, 24)), draw(st.integers(0, 16)),
                       burst_pools or (pool,), 24)


@settings(max_examples=400, deadline=None)
@given(pool_states(), entitlements(), st.integers(0, 40), st.integers(1, 4),
       st.sampled_from((0.0, 20.0, 40.0)),
       st.lists(st.sampled_from(POOLS), unique=True, min_size=1, max_size=3))
def test_placement_never_exceeds_free_reserved_or_burst(
        pools: dict[str, PoolState], ent: Entitlement, n: int, gpr: int, mem: float,
        prefs: list[str]) -> None:
    req = PlacementRequest(n, gpr, mem, tuple(prefs))
    p = place(req, pools, ent)
    assert 0 <= p.placed <= n
    reserved = sum(a.reserved for a in p.assignments)
    burst = sum(a.burst for a in p.assignments)
    assert reserved * gpr <= ent.reserved_gpus
    if ent.burst_gpus is not None:
        assert burst * gpr <= ent.burst_gpus
    for a in p.assignments:
        pool = pools[a.pool]
        assert pool.gpu_memory_gib >= mem
        assert a.pool in prefs
        if a.reserved:
            assert a.pool == ent.pool
        if a.burst and ent.burst_pools is not None:
            assert a.pool in ent.burst_pools
        # Burst only takes free GPUs; everything fits what reserved replicas may reclaim, node by
        # node (a replica never straddles nodes).
        assert a.burst * gpr <= sum(nd.free // gpr * gpr for nd in pool.nodes)
        assert a.replicas <= sum(nd.reclaimable // gpr for nd in pool.nodes)
    assert p.constrained == (p.placed < n)
    assert bool(p.message) == p.constrained
    if p.constrained:
        assert f"wanted {n} replicas" in p.message
    assert place(req, pools, ent) == p


@settings(max_examples=200, deadline=None)
@given(pool_states(), st.integers(0, 30), st.integers(1, 3))
def test_without_limits_placement_takes_every_free_slot_it_accepts(
        pools: dict[str, PoolState], n: int, gpr: int) -> None:
    prefs = tuple(pools)
    p = place(PlacementRequest(n, gpr, 0.0, prefs), pools)
    slots = sum(nd.free // gpr for pool in pools.values() for nd in pool.nodes)
    assert p.placed == min(n, slots)
