"""dedicap's Prometheus recording and alerting rules, generated from this one source. Pure.

The same groups become the plain rule file (`deploy/prometheus/dedicap.rules.yml`) and the
chart's PrometheusRule; `Windows.compressed(f)` divides every window and `for` by `f`, so a
live test can watch a burn-rate alert fire in minutes instead of hours (promtool's `test rules`
checks the real windows).

Every rule serves every ModelDeployment: the objectives are the operator's own series, joined
on (namespace, modeldeployment), so no per-object rule is ever written.

- `dedicap_modeldeployment_latency_target_seconds{quantile}`: spec...slo.latency (the target at
  the SLO's percentile; `quantile` is Triton's spelling of it, e.g. `0.95`);
- `dedicap_modeldeployment_latency_objective_ratio`: the share of time slices that must meet
  the target (an operator-level default; the API has no field for it);
- `dedicap_modeldeployment_error_ratio_objective`: spec...slo.errorRate.max.

The latency SLI is a time slice: at each evaluation of the SLI group, the slowest pod's quantile
(Triton's per-pod summary, NaN dropped) is within the target or not. Idle slices (no pod has a
quantile) are neither good nor bad: they are absent. The error SLI counts requests: failed /
offered, every failure reason. See docs/monitoring.md for what these can and cannot tell.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

from dedicap.metrics.promql import (
    FAILURE,
    LABEL_MODELDEPLOYMENT,
    LABEL_NAMESPACE,
    LABEL_POD,
    REQUEST_SUMMARY,
    SUCCESS,
)

MD = f"{LABEL_NAMESPACE}, {LABEL_MODELDEPLOYMENT}"
RUNBOOK_BASE = "https://github.com/dedicap/dedicap/blob/main/docs/runbooks.md"

# The operator's series the rules join on (dedicap.metrics.exporter).
LATENCY_TARGET = "dedicap_modeldeployment_latency_target_seconds"
LATENCY_OBJECTIVE = "dedicap_modeldeployment_latency_objective_ratio"
ERROR_OBJECTIVE = "dedicap_modeldeployment_error_ratio_objective"
METRICS_AVAILABLE = "dedicap_modeldeployment_metrics_available"
DESIRED_REPLICAS = "dedicap_modeldeployment_desired_replicas"
READY_REPLICAS = "dedicap_modeldeployment_ready_replicas"
RESERVATION_ADMITTED = "dedicap_reservation_admitted"
BUILD_INFO = "dedicap_build_info"

# Recorded series (level:metric:operation).
POD_QUANTILE = "dedicap:triton_pod_latency_quantile:seconds"
WORST_POD = "dedicap:slo_latency_worst_pod:seconds"
SLICE_GOOD = "dedicap:slo_latency_slice_good"
LATENCY_BUDGET = "dedicap:slo_latency_budget:ratio"
ERROR_BUDGET = "dedicap:slo_errors_budget:ratio"


def bad_slices(window: str) -> str:
    """Recorded share of the window's time slices whose worst pod missed the target."""
    return f"dedicap:slo_latency_bad_slices:ratio_{window}"


def error_ratio(window: str) -> str:
    """Recorded failed / offered requests over the window."""
    return f"dedicap:slo_errors:ratio_rate{window}"


_UNITS = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))


def prom_duration(seconds: float) -> str:
    """A Prometheus duration in the largest unit that divides it: 300 -> `5m`, 90 -> `90s`."""
    if seconds <= 0:
        raise ValueError(f"a duration must be positive, got {seconds!r}")
    ms = round(seconds * 1000)
    if ms % 1000:
        return f"{ms}ms"
    whole = ms // 1000
    for unit, size in _UNITS:
        if whole % size == 0:
            return f"{whole // size}{unit}"
    raise AssertionError("unreachable")  # pragma: no cover


_DURATION = re.compile(r"^(\d+)(ms|s|m|h|d)$")


def parse_duration(text: str) -> float:
    """Seconds of a simple Prometheus duration (`30s`, `5m`, `1h`, `3d`)."""
    found = _DURATION.match(text)
    if not found:
        raise ValueError(f"not a duration like 30s, 5m, 1h or 3d: {text!r}")
    value, unit = int(found[1]), found[2]
    return value / 1000 if unit == "ms" else float(value * dict(_UNITS)[unit])


@dataclass(frozen=True)
class BurnRate:
    """One multiwindow condition: both windows burn faster than `factor` x the budget."""

    long: str  # nominal window, e.g. "1h" (also the recorded series' suffix)
    short: str
    factor: float


# The SRE workbook's multiwindow, multi-burn-rate alerts (chapter "Alerting on SLOs").
PAGE = (BurnRate("1h", "5m", 14.4), BurnRate("6h", "30m", 6.0))
TICKET = (BurnRate("1d", "2h", 3.0), BurnRate("3d", "6h", 1.0))
NOMINAL_WINDOWS = ("5m", "30m", "1h", "2h", "6h", "1d", "3d")


@dataclass(frozen=True)
class Windows:
    """How long each nominal window really is, and the alerts' `for` durations.

    `compress` divides the SLO windows and the burn-rate alerts' `for`; the recorded series keep
    their nominal names (`..._ratio_1h` is the 1h window of the real rules, and 1h / compress in
    a compressed set). The other alerts keep their real durations: they are not SRE windows,
    and a live test must not see a start-up blip as an alert."""

    compress: float = 1.0
    slice_interval: str = "30s"  # the latency SLI's time slice: its group's interval
    page_for: str = "2m"
    ticket_for: str = "15m"
    blind_for: str = "5m"
    constrained_for: str = "15m"
    refused_for: str = "5m"
    operator_down_for: str = "5m"
    thrash_window: str = "1h"
    thrash_for: str = "1m"
    thrash_changes: int = 6

    def real(self, nominal: str) -> str:
        """A compressed SLO window or burn-rate `for`."""
        return prom_duration(parse_duration(nominal) / self.compress)

    def compressed(self, factor: float, slice_interval: str) -> Windows:
        return replace(self, compress=factor, slice_interval=slice_interval)


SRE = Windows()


@dataclass(frozen=True)
class Alert:
    """What an alert means, for the rules, the runbook and its tests."""

    name: str
    severity: str  # page | ticket
    summary: str
    anchor: str  # section of docs/runbooks.md


ALERTS: dict[str, Alert] = {a.name: a for a in (
    Alert("DedicapLatencyBudgetBurnFast", "page",
          "{{ $labels.namespace }}/{{ $labels.modeldeployment }} misses its latency target "
          "often enough to spend the month's budget within days",
          "dedicaplatencybudgetburnfast"),
    Alert("DedicapLatencyBudgetBurnSlow", "ticket",
          "{{ $labels.namespace }}/{{ $labels.modeldeployment }} misses its latency target "
          "more often than its objective allows",
          "dedicaplatencybudgetburnslow"),
    Alert("DedicapErrorBudgetBurnFast", "page",
          "{{ $labels.namespace }}/{{ $labels.modeldeployment }} fails requests fast enough to "
          "spend the month's error budget within days",
          "dedicaperrorbudgetburnfast"),
    Alert("DedicapErrorBudgetBurnSlow", "ticket",
          "{{ $labels.namespace }}/{{ $labels.modeldeployment }} fails more requests than its "
          "error objective allows",
          "dedicaperrorbudgetburnslow"),
    Alert("DedicapAutoscalerBlind", "ticket",
          "the autoscaler has no usable metrics for {{ $labels.namespace }}/"
          "{{ $labels.modeldeployment }} and holds its replicas",
          "dedicapautoscalerblind"),
    Alert("DedicapCapacityConstrained", "ticket",
          "{{ $labels.namespace }}/{{ $labels.modeldeployment }} wants more replicas than are "
          "ready",
          "dedicapcapacityconstrained"),
    Alert("DedicapReservationRefused", "ticket",
          "CapacityReservation {{ $labels.reservation }} is not admitted in pool "
          "{{ $labels.pool }}",
          "dedicapreservationrefused"),
    Alert("DedicapScaleThrashing", "ticket",
          "{{ $labels.namespace }}/{{ $labels.modeldeployment }} changes its replica count "
          "again and again",
          "dedicapscalethrashing"),
    Alert("DedicapOperatorDown", "page",
          "no dedicap operator is scraped: nothing reconciles or autoscales",
          "dedicapoperatordown"),
)}


def _by_md(expr: str) -> str:
    # Operator series carry the scrape's own labels too (job, instance, pod of the operator);
    # a paused peer may still export old values: one value per ModelDeployment, the largest.
    return f"max by ({MD}) ({expr})"


def _quantile_normalized(expr: str) -> str:
    # Triton 2.51 writes `0.95`, other exporters `0.950000`: strip trailing zeros so the join
    # with the target's `quantile` label matches either.
    return f'label_replace({expr}, "quantile", "$1", "quantile", "(0[.][0-9]*[1-9])0*")'


def sli_recording_rules(w: Windows) -> list[dict[str, Any]]:
    """The latency time-slice SLI (its group's interval is the slice)."""
    target = f"max by ({MD}, quantile) ({LATENCY_TARGET})"
    return [
        {"record": POD_QUANTILE, "expr": (
            f"max by ({MD}, {LABEL_POD}, quantile) ("
            f"{_quantile_normalized(f'{REQUEST_SUMMARY} >= 0')}) / 1e6")},
        # Each pod's quantile at its ModelDeployment's own SLO percentile; the worst pod.
        {"record": WORST_POD, "expr": (
            f"max by ({MD}) ({POD_QUANTILE} * on ({MD}, quantile) group_left () "
            f"(0 * {target} + 1))")},
        {"record": SLICE_GOOD, "expr": (
            f"{WORST_POD} <= bool on ({MD}) max by ({MD}) ({LATENCY_TARGET})")},
    ]


def window_recording_rules(w: Windows) -> list[dict[str, Any]]:
    offered = f'{{__name__=~"{SUCCESS}|{FAILURE}"}}'
    rules: list[dict[str, Any]] = [
        {"record": LATENCY_BUDGET, "expr": f"1 - {_by_md(LATENCY_OBJECTIVE)}"},
        {"record": ERROR_BUDGET, "expr": _by_md(ERROR_OBJECTIVE)},
    ]
    for nominal in NOMINAL_WINDOWS:
        real = w.real(nominal)
        rules.append({"record": bad_slices(nominal),
                      "expr": f"1 - avg_over_time({SLICE_GOOD}[{real}])"})
        rules.append({"record": error_ratio(nominal), "expr": (
            f"sum by ({MD}) (rate({FAILURE}[{real}])) / "
            f"sum by ({MD}) (rate({offered}[{real}]))")})
    return rules


def _burn(series: Any, budget: str, conditions: tuple[BurnRate, ...]) -> str:
    parts = []
    for c in conditions:
        parts.append(
            f"({series(c.long)} > on ({MD}) ({c.factor:g} * {budget}) and on ({MD}) "
            f"{series(c.short)} > on ({MD}) ({c.factor:g} * {budget}))")
    return "\n  or\n".join(parts)


def _alert(name: str, expr: str, for_: str, extra: dict[str, str] | None = None
           ) -> dict[str, Any]:
    meta = ALERTS[name]
    annotations = {"summary": meta.summary, "runbook_url": f"{RUNBOOK_BASE}#{meta.anchor}"}
    annotations.update(extra or {})
    return {"alert": name, "expr": expr, "for": for_,
            "labels": {"severity": meta.severity}, "annotations": annotations}


def slo_alerts(w: Windows) -> list[dict[str, Any]]:
    return [
        _alert("DedicapLatencyBudgetBurnFast", _burn(bad_slices, LATENCY_BUDGET, PAGE),
               w.real(w.page_for), {"description": (
                   "The slowest replica's latency at the SLO percentile missed the target in "
                   "more than 14.4x the allowed share of time slices over 1h and 5m, or 6x over "
                   "6h and 30m.")}),
        _alert("DedicapLatencyBudgetBurnSlow", _burn(bad_slices, LATENCY_BUDGET, TICKET),
               w.real(w.ticket_for), {"description": (
                   "Time slices over the latency target: more than 3x the allowed share over "
                   "1d and 2h, or more than the allowed share over 3d and 6h.")}),
        _alert("DedicapErrorBudgetBurnFast", _burn(error_ratio, ERROR_BUDGET, PAGE),
               w.real(w.page_for), {"description": (
                   "Failed / offered requests above 14.4x the error objective over 1h and 5m, "
                   "or 6x over 6h and 30m.")}),
        _alert("DedicapErrorBudgetBurnSlow", _burn(error_ratio, ERROR_BUDGET, TICKET),
               w.real(w.ticket_for), {"description": (
                   "Failed / offered requests above 3x the error objective over 1d and 2h, or "
                   "above it over 3d and 6h.")}),
    ]


def operator_alerts(w: Windows) -> list[dict[str, Any]]:
    return [
        _alert("DedicapAutoscalerBlind", f"{_by_md(METRICS_AVAILABLE)} == 0", w.blind_for),
        _alert("DedicapCapacityConstrained",
               f"{_by_md(DESIRED_REPLICAS)} > {_by_md(READY_REPLICAS)}", w.constrained_for),
        _alert("DedicapReservationRefused",
               f"max by (pool, reservation) ({RESERVATION_ADMITTED}) == 0", w.refused_for),
        _alert("DedicapScaleThrashing",
               f"max by ({MD}) (changes({DESIRED_REPLICAS}[{w.thrash_window}])) > "
               f"{w.thrash_changes}", w.thrash_for, {"description": (
                   f"spec.replicas changed more than {w.thrash_changes} times within "
                   f"{w.thrash_window}.")}),
        _alert("DedicapOperatorDown", f"absent({BUILD_INFO})", w.operator_down_for),
    ]


def rule_groups(w: Windows = SRE) -> list[dict[str, Any]]:
    """Every group, in evaluation order (a group sees the series recorded before it)."""
    return [
        {"name": "dedicap-slo-sli", "interval": w.slice_interval,
         "rules": sli_recording_rules(w)},
        {"name": "dedicap-slo-windows", "rules": window_recording_rules(w)},
        {"name": "dedicap-slo-alerts", "rules": slo_alerts(w)},
        {"name": "dedicap-operator-alerts", "rules": operator_alerts(w)},
    ]


def alerts_in(groups: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for group in groups:
        for rule in group["rules"]:
            if "alert" in rule:
                yield rule
