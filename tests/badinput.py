"""Generated GPUPools, CapacityReservations and ModelDeployments for the bad-input campaign, and
the operator's own pipeline for one object (importable: pytest puts tests/ on the path).

`objects()` draws an object of one of the three kinds from the *valid* space the API documents
(names at their length limits, unicode text at its limits, the largest counts, every optional
part present or not), then applies zero to three *mutations* from `MUTATIONS`, each of which
breaks one field in a way the API must refuse and names that field. So every drawn case says
what the API server must answer: accept (no mutation) or refuse naming one of the mutated
fields.

`through_operator(obj)` runs what the operator does with an object the API server accepted:
parse it with the operator's models, place and render a ModelDeployment's children (with every
pool it names present), render a pool's and a reservation's status through the capacity plan,
and compute the status a ModelDeployment would get. It returns the children, for the API server
to judge as well; any exception is an operator crash.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import strategies as st
from pydantic import ValidationError

from dedicap.api.models import (
    MAX_MODELDEPLOYMENT_NAME,
    MAX_POOL_NAME,
    CapacityReservation,
    GPUPool,
    ModelDeployment,
    ModelDeploymentStatus,
)
from dedicap.controller.policy_config import AutoscalerDefaults, evaluation_interval, policy_config
from dedicap.controller.status.capacity import pool_status, reservation_status
from dedicap.controller.status.replicas import compute
from dedicap.decide import capacity as cap
from dedicap.decide.capacity_objects import tenant_objects
from dedicap.decide.cluster import ClusterState, NodeInfo, PodInfo
from dedicap.decide.render import RenderOptions, render

API = "dedicap.dev/v1alpha1"
# Text that JSON and UTF-8 can carry: every code point but the surrogates.
UNICODE = st.characters(exclude_categories=("Cs",))
# Astral-plane code points (4 bytes in UTF-8, 2 UTF-16 units) at a length limit.
ASTRAL = st.characters(min_codepoint=0x1F300, max_codepoint=0x1FAFF)


def text(limit: int, *, min_size: int = 0) -> st.SearchStrategy[str]:
    """Unicode text within `limit` characters, often exactly at it (a drawn head padded with
    one- to four-byte characters)."""
    return st.one_of(
        st.text(UNICODE, min_size=min_size, max_size=min(limit, 40)),
        st.builds(lambda head, pad: (head + pad * limit)[:limit],
                  st.text(st.one_of(UNICODE, ASTRAL), max_size=20),
                  st.sampled_from(["x", "é", "€", "🦀"])),
    )


def dns_label(limit: int) -> st.SearchStrategy[str]:
    """A DNS-1035 label of at most `limit` characters, often exactly that long."""
    inner = limit - 2
    return st.one_of(
        st.from_regex(rf"\A[a-z]([-a-z0-9]{{0,{min(inner, 10)}}}[a-z0-9])?\Z"),
        st.from_regex(rf"\A[a-z][-a-z0-9]{{{inner}}}[a-z0-9]\Z"),
    )


def namespace_name() -> st.SearchStrategy[str]:
    return st.one_of(st.from_regex(r"\A[a-z0-9]([-a-z0-9]{0,10}[a-z0-9])?\Z"),
                     st.from_regex(r"\A[a-z0-9][-a-z0-9]{61}[a-z0-9]\Z"))


# Kubernetes label syntax: an optional DNS-subdomain prefix and a name of at most 63 characters.
LABEL_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,20}[A-Za-z0-9])?"


def label_key() -> st.SearchStrategy[str]:
    return st.one_of(
        st.from_regex(rf"\A{LABEL_NAME}\Z"),
        st.from_regex(rf"\A[a-z0-9]([-a-z0-9]{{0,8}}[a-z0-9])?(\.[a-z]{{2,6}}){{0,2}}/"
                      rf"{LABEL_NAME}\Z"),
        st.from_regex(r"\A[a-z][-a-z0-9]{61}[a-z0-9]\Z"))


def label_value() -> st.SearchStrategy[str]:
    return st.one_of(st.just(""), st.from_regex(rf"\A{LABEL_NAME}\Z"),
                     st.from_regex(r"\A[A-Za-z0-9][-A-Za-z0-9_.]{61}[A-Za-z0-9]\Z"))


def labels(max_size: int = 16) -> st.SearchStrategy[dict[str, str]]:
    return st.dictionaries(label_key(), label_value(), min_size=1, max_size=max_size)


def quantity() -> st.SearchStrategy[str]:
    """Non-negative Kubernetes quantities in their usual spellings."""
    number = st.one_of(st.integers(0, 10**6).map(str),
                       st.decimals(0, 1000, places=3, allow_nan=False).map(str))
    suffix = st.sampled_from(["", "m", "k", "M", "G", "Ki", "Mi", "Gi", "Ti", "e3", "E-2"])
    return st.builds(lambda n, s: f"{n}{s}", number, suffix)


def repository() -> st.SearchStrategy[str]:
    path = st.from_regex(r"\A[A-Za-z0-9_.-]{1,30}(/[A-Za-z0-9_.@-]{1,30}){0,3}\Z")
    return st.one_of(
        st.builds(lambda s, p: f"{s}{p}", st.sampled_from(["s3://", "gs://", "as://"]), path),
        # Triton's s3://host:port/bucket form.
        st.builds(lambda p: f"s3://minio.local:9000/{p}", path),
        st.builds(lambda c, p: f"pvc://{c}/{p}", dns_label(40), path),
        st.builds(lambda p: f"/{p}", path))


def toleration() -> st.SearchStrategy[dict[str, Any]]:
    def build(key: str | None, exists: bool, value: str, effect: str | None,
              seconds: int | None) -> dict[str, Any]:
        t: dict[str, Any] = {"operator": "Exists" if exists or key is None else "Equal"}
        if key is not None:
            t["key"] = key
        if t["operator"] == "Equal":
            t["value"] = value
        if effect is not None:
            t["effect"] = effect
        if seconds is not None and effect == "NoExecute":
            t["tolerationSeconds"] = seconds
        return t
    return st.builds(build, st.none() | label_key(), st.booleans(), label_value(),
                     st.none() | st.sampled_from(["NoSchedule", "PreferNoSchedule",
                                                   "NoExecute"]),
                     st.none() | st.integers(0, 10**6))


def maybe(d: dict[str, Any], key: str, value: Any) -> None:
    """Set `key` unless the drawn value is None (an absent optional field)."""
    if value is not None:
        d[key] = value


def optional(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | strategy


@st.composite
def gpupool(draw: st.DrawFn) -> dict[str, Any]:
    gpu: dict[str, Any] = {"product": draw(text(128, min_size=1).filter(bool)),
                           "memoryGiB": draw(st.floats(0.001, 4096, allow_nan=False))}
    maybe(gpu, "perNode", draw(optional(st.integers(1, 64))))
    spec: dict[str, Any] = {"nodeSelector": draw(labels()), "gpu": gpu}
    maybe(spec, "tolerations", draw(optional(st.lists(toleration(), max_size=16))))
    maybe(spec, "pricePerGPUHour", draw(optional(st.floats(0, 10**6, allow_nan=False))))
    maybe(spec, "currency", draw(optional(st.from_regex(r"\A[A-Z]{3}\Z"))))
    return {"apiVersion": API, "kind": "GPUPool",
            "metadata": {"name": draw(dns_label(MAX_POOL_NAME))}, "spec": spec}


@st.composite
def reservation(draw: st.DrawFn) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "namespaces": draw(st.lists(namespace_name(), min_size=1, max_size=64, unique=True)),
        "pool": draw(dns_label(MAX_POOL_NAME)), "gpus": draw(st.integers(0, 100_000))}
    if draw(st.booleans()):
        burst: dict[str, Any] = {"maxGPUs": draw(st.integers(0, 100_000))}
        maybe(burst, "pools", draw(optional(st.lists(dns_label(MAX_POOL_NAME), max_size=8,
                                                     unique=True))))
        spec["burst"] = burst
    if draw(st.booleans()):
        start = draw(st.datetimes(datetime(2000, 1, 1), datetime(2100, 1, 1)))
        window: dict[str, Any] = {}
        if draw(st.booleans()):
            window["notBefore"] = _stamp(start)
        if draw(st.booleans()):
            window["notAfter"] = _stamp(start + timedelta(seconds=draw(st.integers(1, 10**9))))
        spec["window"] = window
    return {"apiVersion": API, "kind": "CapacityReservation",
            "metadata": {"name": draw(dns_label(63))}, "spec": spec}


def _stamp(t: datetime) -> str:
    return t.replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


@st.composite
def modeldeployment(draw: st.DrawFn) -> dict[str, Any]:
    model: dict[str, Any] = {
        "name": draw(st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,20}\Z")
                     | st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{127}\Z")),
        "repository": draw(repository())}
    maybe(model, "version", draw(optional(st.from_regex(r"\A[0-9]{1,32}\Z"))))
    maybe(model, "backend", draw(optional(st.from_regex(r"\A[a-z][a-z0-9_]{0,20}\Z"))))
    spec: dict[str, Any] = {
        "model": model,
        "placement": {"pools": draw(st.lists(dns_label(MAX_POOL_NAME), min_size=1, max_size=8,
                                             unique=True))}}
    if draw(st.booleans()):
        spread: dict[str, Any] = {}
        maybe(spread, "maxSkew", draw(optional(st.integers(1, 100))))
        maybe(spread, "whenUnsatisfiable", draw(optional(st.sampled_from(
            ["ScheduleAnyway", "DoNotSchedule"]))))
        spec["placement"]["spread"] = spread
    if draw(st.booleans()):
        triton: dict[str, Any] = {}
        maybe(triton, "image", draw(optional(st.from_regex(r"\A[a-z0-9./:@_-]{1,80}\Z"))))
        maybe(triton, "imagePullPolicy", draw(optional(st.sampled_from(
            ["Always", "IfNotPresent", "Never"]))))
        maybe(triton, "args", draw(optional(st.lists(text(1024), max_size=64))))
        maybe(triton, "env", draw(optional(st.lists(
            st.fixed_dictionaries({"name": st.from_regex(r"\A[-._a-zA-Z][-._a-zA-Z0-9]{0,30}\Z")},
                                  optional={"value": text(4096)}),
            max_size=64, unique_by=lambda e: e["name"]))))
        maybe(triton, "envFromSecret", draw(optional(dns_label(63))))
        maybe(triton, "startupTimeoutSeconds", draw(optional(st.integers(30, 7200))))
        spec["triton"] = triton
    if draw(st.booleans()):
        resources: dict[str, Any] = {}
        maybe(resources, "gpusPerReplica", draw(optional(st.integers(1, 16))))
        maybe(resources, "gpuMemoryGiB", draw(optional(st.floats(0, 4096, allow_nan=False))))
        maybe(resources, "cpu", draw(optional(quantity())))
        maybe(resources, "memory", draw(optional(quantity())))
        spec["resources"] = resources
    maybe(spec, "reservation", draw(optional(dns_label(63))))
    autoscaled = draw(st.booleans())
    if autoscaled:
        lo = draw(st.integers(0, 1000))
        hi = draw(st.integers(max(lo, 1), 1000))
        slo: dict[str, Any] = {}
        kinds = draw(st.sampled_from(["latency", "errorRate", "both"]))
        if kinds in ("latency", "both"):
            slo["latency"] = {"targetMs": draw(st.floats(0.001, 3_600_000, allow_nan=False))}
            maybe(slo["latency"], "percentile",
                  draw(optional(st.floats(0.001, 99.999, allow_nan=False))))
        if kinds in ("errorRate", "both"):
            slo["errorRate"] = {"max": draw(st.floats(0, 1, allow_nan=False))}
        autoscaling: dict[str, Any] = {"minReplicas": lo, "maxReplicas": hi, "slo": slo}
        if draw(st.booleans()):
            rules = st.fixed_dictionaries({}, optional={
                "stabilizationWindowSeconds": st.integers(0, 3600),
                "maxStepReplicas": st.integers(1, 1000), "maxStepPercent": st.integers(1, 1000)})
            autoscaling["behavior"] = draw(st.fixed_dictionaries({}, optional={
                "scaleUp": rules, "scaleDown": rules,
                "evaluationIntervalSeconds": st.integers(5, 600)}))
        spec["autoscaling"] = autoscaling
        maybe(spec, "replicas", draw(optional(st.integers(lo, hi))))
    else:
        maybe(spec, "replicas", draw(optional(st.integers(0, 1000))))
    if draw(st.booleans()):
        access: dict[str, Any] = {}
        maybe(access, "namespaces", draw(optional(st.lists(namespace_name(), max_size=64,
                                                           unique=True))))
        if draw(st.booleans()):
            access["namespaceSelector"] = {"matchLabels": draw(labels())}
        spec["access"] = access
    metadata: dict[str, Any] = {"name": draw(dns_label(MAX_MODELDEPLOYMENT_NAME))}
    if draw(st.integers(0, 9)) == 0:
        # A large annotation, under the API server's 256 KiB for all of them.
        metadata["annotations"] = {"example.com/notes": draw(st.sampled_from(
            ["é", "🦀", "x"])) * draw(st.integers(1, 60_000))}
    return {"apiVersion": API, "kind": "ModelDeployment", "metadata": metadata, "spec": spec}


# ----------------------------------------------------------------------------- mutations


@dataclass(frozen=True)
class Mutation:
    """One way to break a field: the API server must refuse it and name `path`."""

    kind: str
    name: str
    path: str  # what the refusal must name (a dotted field path, as the API server prints it)
    apply: Callable[[dict[str, Any]], None]
    # Refused by the API server only: the operator's models coerce types ("3" -> 3) and do not
    # judge metadata, unknown fields or repeated list items, none of which can be stored.
    api_only: bool = False


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def apply(obj: dict[str, Any]) -> None:
        *parents, leaf = path.split(".")
        node = obj
        for key in parents:
            child = node.get(key)
            if not isinstance(child, dict):
                child = node[key] = {}
            node = child
        node[leaf] = copy.deepcopy(value)
    return apply


def _m(kind: str, name: str, path: str, value: Any, at: str | None = None, *,
       api_only: bool = False) -> Mutation:
    api_only = api_only or path.startswith(("metadata", "unknown field"))
    return Mutation(kind, name, path, _set(at or path, value), api_only)


_MD, _POOL, _CR = "ModelDeployment", "GPUPool", "CapacityReservation"


def _replicas_as_text(obj: dict[str, Any]) -> None:
    spec = obj.setdefault("spec", {})
    scaling = spec.get("autoscaling")
    low = scaling.get("minReplicas", 1) if isinstance(scaling, dict) else 3
    spec["replicas"] = str(low)

_BIG = 2**53
# The credentials of a repository URI, never to be stored, logged or copied anywhere.
SECRET = "s3cr3t-Pa55w0rd"

MUTATIONS: list[Mutation] = [
    # ModelDeployment
    _m(_MD, "replicas negative", "spec.replicas", -1),
    _m(_MD, "replicas huge", "spec.replicas", _BIG),
    # a count the spec allows, as text: only its type is wrong (the parser would read "3" as
    # 3, out of range for an autoscaling of 4 to 4)
    Mutation(_MD, "replicas a string", "spec.replicas", _replicas_as_text, api_only=True),
    _m(_MD, "replicas fractional", "spec.replicas", 1.5),
    _m(_MD, "no GPU per replica", "spec.resources.gpusPerReplica", 0),
    _m(_MD, "17 GPUs per replica", "spec.resources.gpusPerReplica", 17),
    _m(_MD, "GPU memory huge", "spec.resources.gpuMemoryGiB", 1e300),
    _m(_MD, "cpu a word", "spec.resources.cpu", "two"),
    _m(_MD, "cpu negative", "spec.resources.cpu", "-1"),
    _m(_MD, "memory negative", "spec.resources.memory", "-8Gi"),
    _m(_MD, "memory with a space", "spec.resources.memory", "8 Gi"),
    _m(_MD, "model name empty", "spec.model.name", ""),
    _m(_MD, "model name a path", "spec.model.name", "../etc"),
    _m(_MD, "model name too long", "spec.model.name", "m" * 129),
    _m(_MD, "repository scheme", "spec.model.repository", "ftp://host/models"),
    _m(_MD, "repository relative", "spec.model.repository", "models/triton"),
    _m(_MD, "repository with credentials", "spec.model.repository",
       f"s3://AKIAEXAMPLE:{SECRET}@bucket/models"),
    _m(_MD, "repository with a token", "spec.model.repository",
       f"as://account/container/models?sv=2024&sig={SECRET}"),
    _m(_MD, "version not a number", "spec.model.version", "v1"),
    _m(_MD, "no pools", "spec.placement.pools", []),
    _m(_MD, "pool not a label", "spec.placement.pools", ["H100_pool"]),
    _m(_MD, "pool repeated", "spec.placement.pools", ["h100", "h100"], api_only=True),
    _m(_MD, "nine pools", "spec.placement.pools", [f"p{i}" for i in range(9)]),
    _m(_MD, "placement a string", "spec.placement", "h100"),
    _m(_MD, "min above max", "spec.autoscaling.minReplicas",
       {"minReplicas": 5, "maxReplicas": 2, "slo": {"errorRate": {"max": 0.1}}},
       at="spec.autoscaling"),
    _m(_MD, "percentile 100", "spec.autoscaling.slo.latency.percentile",
       {"minReplicas": 1, "maxReplicas": 2,
        "slo": {"latency": {"percentile": 100, "targetMs": 100}}}, at="spec.autoscaling"),
    _m(_MD, "empty SLO", "spec.autoscaling.slo",
       {"minReplicas": 1, "maxReplicas": 2, "slo": {}}, at="spec.autoscaling"),
    _m(_MD, "error ratio above 1", "spec.autoscaling.slo.errorRate.max",
       {"minReplicas": 1, "maxReplicas": 2, "slo": {"errorRate": {"max": 2}}},
       at="spec.autoscaling"),
    _m(_MD, "access namespace not a name", "spec.access.namespaces", ["Bad_NS"]),
    _m(_MD, "access selector key", "spec.access.namespaceSelector",
       {"matchLabels": {"team name!": "a"}}, at="spec.access.namespaceSelector"),
    _m(_MD, "access selector value", "spec.access.namespaceSelector",
       {"matchLabels": {"team": "ä b"}}, at="spec.access.namespaceSelector"),
    _m(_MD, "unknown field", 'unknown field "spec.gpus"', 4, at="spec.gpus"),
    _m(_MD, "unknown nested field", 'unknown field "spec.resources.gpu"', 1,
       at="spec.resources.gpu"),
    _m(_MD, "startup timeout short", "spec.triton.startupTimeoutSeconds", 5),
    _m(_MD, "pull policy", "spec.triton.imagePullPolicy", "Sometimes"),
    _m(_MD, "image with a space", "spec.triton.image", "triton server"),
    _m(_MD, "env name", "spec.triton.env[0].name", [{"name": "1=X", "value": "v"}],
       at="spec.triton.env"),
    _m(_MD, "env repeated", "spec.triton.env[1]",
       [{"name": "X", "value": "1"}, {"name": "X", "value": "2"}], at="spec.triton.env",
       api_only=True),
    _m(_MD, "arg too long", "spec.triton.args[0]", ["a" * 1025], at="spec.triton.args"),
    _m(_MD, "name too long", "metadata.name", "m" * (MAX_MODELDEPLOYMENT_NAME + 1)),
    _m(_MD, "name upper case", "metadata.name", "Chat"),
    _m(_MD, "1 MiB annotation", "metadata.annotations",
       {"example.com/notes": "x" * (1 << 20)}, at="metadata.annotations"),
    # GPUPool
    _m(_POOL, "no node selector", "spec.nodeSelector", {}),
    _m(_POOL, "node selector key", "spec.nodeSelector", {"gpu type": "h100"}),
    _m(_POOL, "node selector value", "spec.nodeSelector", {"gpu": "h100 80GB"}),
    _m(_POOL, "node selector value long", "spec.nodeSelector", {"gpu": "x" * 64}),
    _m(_POOL, "memory zero", "spec.gpu.memoryGiB", 0),
    _m(_POOL, "memory huge", "spec.gpu.memoryGiB", 1e9),
    _m(_POOL, "per node zero", "spec.gpu.perNode", 0),
    _m(_POOL, "price negative", "spec.pricePerGPUHour", -1),
    _m(_POOL, "price huge", "spec.pricePerGPUHour", 1e308),
    _m(_POOL, "currency lower case", "spec.currency", "usd"),
    _m(_POOL, "toleration operator", "spec.tolerations[0].operator",
       [{"key": "k", "operator": "Maybe"}], at="spec.tolerations"),
    _m(_POOL, "toleration Exists with a value", "spec.tolerations[0]",
       [{"key": "k", "operator": "Exists", "value": "v"}], at="spec.tolerations"),
    _m(_POOL, "toleration seconds without NoExecute", "spec.tolerations[0]",
       [{"key": "k", "operator": "Equal", "value": "v", "effect": "NoSchedule",
         "tolerationSeconds": 5}], at="spec.tolerations"),
    _m(_POOL, "toleration Equal without a key", "spec.tolerations[0]",
       [{"operator": "Equal", "value": "v"}], at="spec.tolerations"),
    _m(_POOL, "toleration key", "spec.tolerations[0]",
       [{"key": "bad key", "operator": "Exists"}], at="spec.tolerations"),
    _m(_POOL, "pool name too long", "metadata.name", "p" * (MAX_POOL_NAME + 1)),
    _m(_POOL, "gpu missing", "spec.gpu", None, at="spec.gpu"),
    # CapacityReservation
    _m(_CR, "no namespaces", "spec.namespaces", []),
    _m(_CR, "namespace not a name", "spec.namespaces", ["Acme"]),
    _m(_CR, "gpus negative", "spec.gpus", -1),
    _m(_CR, "gpus huge", "spec.gpus", _BIG),
    _m(_CR, "pool not a label", "spec.pool", "H100"),
    _m(_CR, "burst negative", "spec.burst.maxGPUs", {"maxGPUs": -1}, at="spec.burst"),
    _m(_CR, "window reversed", "spec.window.notAfter",
       {"notBefore": "2030-01-02T00:00:00Z", "notAfter": "2030-01-01T00:00:00Z"},
       at="spec.window"),
    _m(_CR, "window not a time", "spec.window.notBefore", {"notBefore": "next week"},
       at="spec.window"),
]


@dataclass(frozen=True)
class Case:
    """One generated object and what the API server must answer."""

    obj: dict[str, Any]
    mutations: tuple[Mutation, ...]

    @property
    def kind(self) -> str:
        return str(self.obj["kind"])

    @property
    def valid(self) -> bool:
        return not self.mutations

    def names_a_mutated_field(self, message: str) -> bool:
        return any(m.path in message for m in self.mutations)

    @property
    def parser_refuses(self) -> bool:
        """Whether the operator's own models refuse it too (they do not judge metadata, and
        ignore unknown fields the API server has already refused)."""
        return any(not m.api_only for m in self.mutations)


GENERATORS: Mapping[str, Callable[[], st.SearchStrategy[dict[str, Any]]]] = {
    _MD: modeldeployment, _POOL: gpupool, _CR: reservation}


@st.composite
def cases(draw: st.DrawFn, namespace: str = "default") -> Case:
    kind = draw(st.sampled_from(sorted(GENERATORS)))
    obj = draw(GENERATORS[kind]())
    mutations = draw(st.lists(st.sampled_from([m for m in MUTATIONS if m.kind == kind]),
                              max_size=3, unique_by=lambda m: m.path))
    for m in mutations:
        m.apply(obj)
    if kind == _MD:
        obj["metadata"]["namespace"] = namespace
    # "gpu missing" is the one mutation that removes a field.
    spec = obj.get("spec")
    if isinstance(spec, dict) and spec.get("gpu", ...) is None:
        del spec["gpu"]
    return Case(obj, tuple(mutations))


# ----------------------------------------------------------------------------- the operator


def _node(pool: GPUPool, i: int) -> NodeInfo:
    return NodeInfo(name=f"{pool.name}-{i}", labels=dict(pool.spec.node_selector),
                    capacity_gpus=16, allocatable_gpus=16, ready=True, unschedulable=False)


def _finite_json(what: str, value: Any) -> None:
    """Status must be JSON the API server reads: no NaN, no infinity."""
    try:
        json.dumps(value, allow_nan=False)
    except ValueError as err:
        raise AssertionError(f"{what} is not valid JSON: {err}: {value}") from err


SAMPLE_MD = {"apiVersion": API, "kind": "ModelDeployment",
             "metadata": {"name": "probe", "namespace": "default", "uid": "u-probe"},
             "spec": {"model": {"name": "m", "repository": "s3://bucket/m"},
                      "placement": {"pools": ["p"]}, "replicas": 1}}
NOW = datetime(2030, 1, 1, tzinfo=UTC)


def through_operator(obj: Mapping[str, Any]) -> list[dict[str, Any]]:
    """What the operator does with an accepted object (see the module docstring); the children
    it would write."""
    kind = obj["kind"]
    if kind == _POOL:
        pool = GPUPool.model_validate(obj)
        nodes = (_node(pool, 0), _node(pool, 1))
        state = ClusterState(pools={pool.name: pool}, nodes=nodes, pods=())
        fields, _ = pool_status(pool, state.pool_figures(pool.name), 0)
        _finite_json("pool status", fields)
        # A ModelDeployment placed on it: the pool's selector and tolerations reach its pods.
        try:
            md = ModelDeployment.model_validate({**SAMPLE_MD, "spec": {
                **SAMPLE_MD["spec"], "placement": {"pools": [pool.name]}}})
        except ValidationError:
            # only the name varies: one the API server refuses (too long, not a label) can
            # name no pool of a ModelDeployment either
            return []
        return _render(md, state)
    if kind == _CR:
        cr = CapacityReservation.model_validate(obj)
        pool = GPUPool.model_validate({"apiVersion": API, "kind": "GPUPool",
                                       "metadata": {"name": cr.spec.pool},
                                       "spec": {"nodeSelector": {"pool": "x"},
                                                "gpu": {"product": "X", "memoryGiB": 80}}})
        state = ClusterState(pools={pool.name: pool}, nodes=(_node(pool, 0),), pods=(),
                             reservations={cr.name: cr},
                             namespaces=frozenset(cr.spec.namespaces))
        plan = cap.plan(state, NOW)
        fields, _ = reservation_status(cr, plan.admissions[cr.name], plan.usage[cr.name])
        _finite_json("reservation status", fields)
        tenant_objects({ns: (q.gpus, q.reservations) for ns, q in plan.quotas.items()})
        return []
    md = ModelDeployment.model_validate(obj)
    if md.spec.autoscaling is not None:
        evaluation_interval(md.spec.autoscaling, AutoscalerDefaults())
        policy_config(md.spec.autoscaling, AutoscalerDefaults())
    pools = {}
    for name in md.spec.placement.pools:
        pools[name] = GPUPool.model_validate({
            "apiVersion": API, "kind": "GPUPool", "metadata": {"name": name},
            "spec": {"nodeSelector": {"dedicap.dev/pool": name},
                     "gpu": {"product": "X", "memoryGiB": 4096}, "pricePerGPUHour": 2.5}})
    nodes = tuple(_node(p, i) for p in pools.values() for i in range(2))
    return _render(md, ClusterState(pools=pools, nodes=nodes, pods=()))


def _render(md: ModelDeployment, state: ClusterState) -> list[dict[str, Any]]:
    placement = cap.placement(md, state, None)
    if not placement.eligible:
        return []
    children = render(md, placement, {n: p.spec for n, p in state.pools.items()},
                      RenderOptions())
    deployments = [c for c in children if c["kind"] == "Deployment"]
    pods = [PodInfo(md.namespace, f"{d['metadata']['name']}-0", "", 0, bound=False,
                    modeldeployment=md.name, phase="Pending", ready=False) for d in deployments]
    report = compute(md, placement, None, deployments, pods,
                     {n: p.spec for n, p in state.pools.items()})
    _finite_json("ModelDeployment status", report.fields)
    ModelDeploymentStatus.model_validate(report.fields)
    return children


def printable(obj: Mapping[str, Any], limit: int = 400) -> str:
    """An object for an assertion message: short, and without the big annotation."""
    text_ = json.dumps(obj, ensure_ascii=True)
    return text_ if len(text_) <= limit else text_[:limit] + "..."

