"""dedicap's Grafana dashboards, as code (grafana-foundation-sdk). Pure: builders in, JSON out.

Three dashboards, each with a Prometheus data-source variable so they work in any Grafana:

- fleet: GPUs per pool (reserved / allocated / free), per-tenant GPUs and cost per hour,
  reservations admitted or refused;
- modeldeployment: one ModelDeployment (variables `namespace`, `modeldeployment`): request rate,
  latency at the SLO percentile against the target, error ratio by cause, replicas desired /
  ready per pool, queue time, batch fill, scale decisions as annotations, error budget left;
- operator: reconcile and evaluation latency, decisions by reason, Prometheus query errors, API
  errors.

The Triton queries come from `dedicap.metrics.promql` (the autoscaler's own builders), so a
panel shows exactly what the operator decides on; the SLO panels read the recorded series of
`dedicap.monitoring.rules`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import prometheus as prom
from grafana_foundation_sdk.builders import stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as dm

from dedicap.metrics import promql
from dedicap.monitoring import rules

DATASOURCE = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")
TAGS = ["dedicap"]
# The queries' range: Grafana's `$__rate_interval` (at least four scrape intervals).
RATE = "$__rate_interval"
_SENTINEL_S = 3_999_999  # a window the promql builders format as "3999999s", then replaced
MD_TARGET = promql.Target("$namespace", "$modeldeployment")
MD_MATCH = 'namespace="$namespace",modeldeployment="$modeldeployment"'
# Requests the API server did not answer with 2xx (code 0: no answer at all).
API_ERRORS = 'dedicap_api_requests_total{code!~"2.."}'


def windowed(build: Callable[[promql.Target, float], str], target: promql.Target = MD_TARGET
             ) -> str:
    """A promql builder's expression with Grafana's rate interval as its window."""
    return build(target, _SENTINEL_S).replace(f"{_SENTINEL_S}s", RATE)


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = ""


def _target(q: Query, ref: str) -> prom.Dataquery:
    t = prom.Dataquery().expr(q.expr).ref_id(ref).datasource(DATASOURCE).range()
    return t.legend_format(q.legend) if q.legend else t


def _ts(title: str, unit: str, *queries: Query, description: str = "",
        width: int = 12, stack: bool = False) -> timeseries.Panel:
    p = (timeseries.Panel().title(title).unit(unit).datasource(DATASOURCE).height(8)
         .span(width).line_width(1).fill_opacity(10))
    if description:
        p = p.description(description)
    if stack:
        from grafana_foundation_sdk.builders import common

        p = p.stacking(common.StackingConfig().mode(_stacking_normal()))
    for i, q in enumerate(queries):
        p = p.with_target(_target(q, chr(ord("A") + i)))
    return p


def _stacking_normal() -> Any:
    from grafana_foundation_sdk.models import common as cm

    return cm.StackingMode.NORMAL


def _stat(title: str, unit: str, q: Query, description: str = "", width: int = 6
          ) -> stat.Panel:
    p = (stat.Panel().title(title).unit(unit).datasource(DATASOURCE).height(4).span(width)
         .with_target(_target(q, "A")))
    return p.description(description) if description else p


def _datasource_variable() -> db.DatasourceVariable:
    return db.DatasourceVariable("datasource").label("Prometheus").type("prometheus")


def _query_variable(name: str, label: str, query: str) -> db.QueryVariable:
    return (db.QueryVariable(name).label(label).datasource(DATASOURCE).query(query)
            .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED).sort(
                dm.VariableSort.ALPHABETICAL_ASC))


def _base(uid: str, title: str, description: str) -> db.Dashboard:
    return (db.Dashboard(title).uid(uid).description(description).tags(TAGS)
            .refresh("30s").time("now-3h", "now").timezone("browser").editable()
            .with_variable(_datasource_variable()))


# --------------------------------------------------------------------------- fleet


def fleet() -> db.Dashboard:
    d = _base("dedicap-fleet", "dedicap / Fleet",
              "GPU pools, tenants' usage and cost, and capacity reservations.")
    d = d.with_row(db.Row("GPU pools"))
    d = d.with_panel(_ts(
        "GPUs per pool: reserved, allocated, free", "none",
        Query('max by (pool, state) (dedicap_gpupool_gpus{state=~"reserved|allocated|free"})',
              "{{pool}} {{state}}"),
        description="reserved: admitted reservations in effect; allocated: GPUs of bound "
                    "pods; free: allocatable minus allocated.", width=16))
    d = d.with_panel(_stat("GPUs free in all pools", "none", Query(
        'sum(max by (pool) (dedicap_gpupool_gpus{state="free"}))'), width=8))
    d = d.with_row(db.Row("Tenants"))
    d = d.with_panel(_ts("GPUs held per tenant", "none", Query(
        "sum by (namespace) (dedicap_modeldeployment_gpus)", "{{namespace}}"), stack=True))
    d = d.with_panel(_ts("Cost per hour per tenant", "currencyUSD", Query(
        "sum by (namespace) (dedicap_modeldeployment_hourly_cost)", "{{namespace}}"),
        description="GPUs held now x the pool's price per GPU-hour.", stack=True))
    d = d.with_row(db.Row("Reservations"))
    d = d.with_panel(_ts("Reservation GPUs: committed, used, burst", "none", Query(
        'max by (reservation, state) (dedicap_reservation_gpus{state=~"committed|used|burst"})',
        "{{reservation}} {{state}}"), width=16))
    d = d.with_panel(_stat("Reservations refused", "none", Query(
        "count(max by (pool, reservation) (dedicap_reservation_admitted) == 0) or vector(0)"),
        description="Reservations whose pool has no room for them (not admitted).", width=4))
    d = d.with_panel(_stat("Reservations admitted", "none", Query(
        "count(max by (pool, reservation) (dedicap_reservation_admitted) == 1) or vector(0)"),
        width=4))
    return d


# --------------------------------------------------------------------------- modeldeployment


def _md(metric: str) -> str:
    return f"max({metric}{{{MD_MATCH}}})"


def modeldeployment() -> db.Dashboard:
    t = MD_TARGET
    d = _base("dedicap-modeldeployment", "dedicap / ModelDeployment",
              "One ModelDeployment: traffic, latency against its SLO, errors, replicas, cost.")
    d = d.with_variable(_query_variable(
        "namespace", "Namespace", f"label_values({promql.SUCCESS}, namespace)"))
    d = d.with_variable(_query_variable(
        "modeldeployment", "ModelDeployment",
        f'label_values({promql.SUCCESS}{{namespace="$namespace"}}, modeldeployment)'))
    d = d.annotation(
        db.AnnotationQuery().name("Scale decisions").datasource(DATASOURCE).enable(True)
        .icon_color("orange").expr(
            # A change of the replica count (a decision counter's first increment is its
            # series' first sample, which increase() cannot see).
            f"max by (namespace, modeldeployment) (changes("
            f"dedicap_modeldeployment_desired_replicas{{{MD_MATCH}}}[{RATE}])) > 0"))
    d = d.with_row(db.Row("Service level"))
    d = d.with_panel(_ts(
        "Latency at the SLO percentile vs target", "s",
        Query(f"{rules.WORST_POD}{{{MD_MATCH}}}", "slowest pod"),
        Query(f"{rules.POD_QUANTILE}{{{MD_MATCH}}} * on (namespace, modeldeployment, quantile) "
              f"group_left () (0 * max by (namespace, modeldeployment, quantile) "
              f"({rules.LATENCY_TARGET}{{{MD_MATCH}}}) + 1)", "{{pod}}"),
        Query(_md(rules.LATENCY_TARGET), "target"),
        description="Each pod's Triton summary at the SLO's percentile (idle pods have none), "
                    "the slowest of them (what the SLO judges) and the target.", width=16))
    d = d.with_panel(_stat(
        "Latency budget left", "percentunit", Query(
            f"1 - (1 - avg_over_time({rules.SLICE_GOOD}{{{MD_MATCH}}}[$__range])) / on "
            f"(namespace, modeldeployment) {rules.LATENCY_BUDGET}{{{MD_MATCH}}}"),
        description="1 - (share of time slices over target in the range) / (share allowed).",
        width=4))
    offered = f'{{__name__=~"{promql.SUCCESS}|{promql.FAILURE}",{MD_MATCH}}}'
    d = d.with_panel(_stat(
        "Error budget left", "percentunit", Query(
            f"1 - (sum(increase({promql.FAILURE}{{{MD_MATCH}}}[$__range])) / "
            f"sum(increase({offered}[$__range]))) / "
            f"scalar({rules.ERROR_BUDGET}{{{MD_MATCH}}})"),
        description="1 - (failed / offered requests in the range) / (error objective).",
        width=4))
    d = d.with_panel(_ts("Request rate", "reqps",
                         Query(windowed(promql.request_rate), "offered"),
                         Query(windowed(promql.success_rate), "succeeded")))
    d = d.with_panel(_ts(
        "Error ratio by cause", "percentunit", Query(
            f"sum by (reason) (rate({promql.FAILURE}{{{MD_MATCH}}}[{RATE}])) / ignoring "
            f"(reason) group_left () sum(rate({offered}[{RATE}]))", "{{reason}}"),
        description="REJECTED: queue timeouts (capacity); BACKEND: the model fails (replicas "
                    "do not help); CANCELED: clients gave up."))
    d = d.with_row(db.Row("Replicas and capacity"))
    d = d.with_panel(_ts(
        "Replicas desired / ready", "none",
        Query(_md("dedicap_modeldeployment_desired_replicas"), "desired"),
        Query(_md("dedicap_modeldeployment_ready_replicas"), "ready"),
        Query(f"max by (pool) (dedicap_modeldeployment_replicas{{{MD_MATCH}}})", "{{pool}}"),
        Query(f"count by (pool) ({promql.SUCCESS}{{{MD_MATCH}}})", "{{pool}} serving")))
    d = d.with_panel(_ts(
        "GPUs and cost per hour", "none",
        Query(f"sum(dedicap_modeldeployment_gpus{{{MD_MATCH}}})", "GPUs"),
        Query(f"sum(dedicap_modeldeployment_hourly_cost{{{MD_MATCH}}})", "cost per hour")))
    d = d.with_row(db.Row("Inside Triton"))
    d = d.with_panel(_ts("Mean queue time", "ms",
                         Query(windowed(promql.mean_queue_ms), "queue"),
                         Query(windowed(promql.mean_compute_ms), "compute"), width=8))
    d = d.with_panel(_ts("Queue depth", "none",
                         Query(promql.queue_depth(t), "pending requests"), width=8))
    d = d.with_panel(_ts("Batch fill", "none",
                         Query(windowed(promql.mean_batch_size), "rows per batch"),
                         Query(windowed(promql.mean_request_rows), "rows per request"),
                         width=8))
    d = d.with_panel(_ts(
        "Scale decisions by reason", "none", Query(
            f"sum by (direction, reason) (increase(dedicap_scale_decisions_total{{{MD_MATCH}}}"
            f"[{RATE}]))", "{{direction}} {{reason}}"), width=24))
    return d


# --------------------------------------------------------------------------- operator


def operator() -> db.Dashboard:
    d = _base("dedicap-operator", "dedicap / Operator",
              "The operator itself: how fast it reconciles and evaluates, and what fails.")
    d = d.with_panel(_stat("Operators scraped", "none", Query(
        "count(dedicap_build_info) or vector(0)"), width=6))
    d = d.with_panel(_stat("ModelDeployments without metrics", "none", Query(
        "count(max by (namespace, modeldeployment) (dedicap_modeldeployment_metrics_available)"
        " == 0) or vector(0)"), width=6))
    d = d.with_panel(_stat("Prometheus query errors (range)", "none", Query(
        "sum(increase(dedicap_prometheus_query_errors_total[$__range])) or vector(0)"),
        width=6))
    d = d.with_panel(_stat("API errors (range)", "none", Query(
        f"sum(increase({API_ERRORS}[$__range])) or vector(0)"),
        description="Kubernetes API answers other than 2xx (code 0: no answer).", width=6))
    for title, metric in (("Reconcile latency", "dedicap_reconcile_duration_seconds"),
                          ("Autoscaling evaluation latency",
                           "dedicap_evaluation_duration_seconds")):
        d = d.with_panel(_ts(title, "s", *(
            Query(f"histogram_quantile({q}, sum by (le) (rate({metric}_bucket[{RATE}])))",
                  f"p{round(q * 100)}") for q in (0.5, 0.95, 0.99))))
    d = d.with_panel(_ts("Decisions by reason", "none", Query(
        f"sum by (direction, reason) (increase(dedicap_scale_decisions_total[{RATE}]))",
        "{{direction}} {{reason}}")))
    d = d.with_panel(_ts("Prometheus query errors", "none", Query(
        f"sum by (kind) (increase(dedicap_prometheus_query_errors_total[{RATE}]))", "{{kind}}")))
    d = d.with_panel(_ts("Kubernetes API errors", "none", Query(
        f"sum by (verb, code) (increase({API_ERRORS}[{RATE}])) or vector(0)",
        "{{verb}} {{code}}"), width=24))
    return d


DASHBOARDS: dict[str, Callable[[], db.Dashboard]] = {
    "dedicap-fleet": fleet,
    "dedicap-modeldeployment": modeldeployment,
    "dedicap-operator": operator,
}


def as_json(board: db.Dashboard) -> dict[str, Any]:
    """The dashboard model as Grafana's JSON."""
    data: dict[str, Any] = json.loads(json.dumps(board.build(), cls=JSONEncoder))
    # Stable panel ids (Grafana links and the sidecar's diffs rely on them).
    for i, panel in enumerate(data.get("panels", []), start=1):
        panel["id"] = i
    return data


def render_all() -> dict[str, dict[str, Any]]:
    """Every dashboard's JSON, by file stem."""
    return {name: as_json(build()) for name, build in DASHBOARDS.items()}


def queries(board: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, PromQL) of every panel target and annotation of a dashboard's JSON; template
    variables' `label_values(<selector>, label)` give their selector."""
    for panel in board.get("panels", []):
        for target in panel.get("targets", []) or []:
            if target.get("expr"):
                yield f"panel {panel.get('title')!r} {target.get('refId')}", target["expr"]
    for ann in (board.get("annotations") or {}).get("list", []):
        if ann.get("expr"):
            yield f"annotation {ann.get('name')!r}", ann["expr"]
    for var in (board.get("templating") or {}).get("list", []):
        query = var.get("query")
        if var.get("type") == "query" and isinstance(query, str):
            inner = query.removeprefix("label_values(").rsplit(",", 1)[0]
            yield f"variable {var.get('name')!r}", inner
