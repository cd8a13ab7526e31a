"""The generated rules: promtool accepts them, and `promtool test rules` shows each alert firing
on input series of a breach and staying silent on a healthy window (the real SRE windows).
Every series the rules read from the operator exists in its registry."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from dedicap.metrics.exporter import OperatorMetrics
from dedicap.monitoring import generate, rules

ROOT = Path(__file__).resolve().parents[2]
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool (Debian's prometheus)")

BOT = {"namespace": "acme", "modeldeployment": "bot"}
CALM = {"namespace": "acme", "modeldeployment": "calm"}


def sel(name: str, labels: dict[str, str]) -> str:
    return name + "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"


def const(value: float | str, minutes: int) -> str:
    """`minutes` samples of `value`, one a minute (promtool's `vxN` gives N+1)."""
    return f"{value}x{minutes - 1}"


def counter(per_minute: float, minutes: int, start: float = 0) -> str:
    return f"{start}+{per_minute}x{minutes - 1}"


def operator_series(md: dict[str, str], minutes: int, **over: str) -> list[dict[str, str]]:
    """The operator's series of one healthy autoscaled ModelDeployment."""
    op = {**md, "job": "dedicap", "instance": "10.0.0.9:9464"}
    values = {
        sel(rules.LATENCY_TARGET, {**op, "percentile": "95", "quantile": "0.95"}): "0.2",
        sel(rules.LATENCY_OBJECTIVE, op): "0.99",
        sel(rules.ERROR_OBJECTIVE, op): "0.001",
        sel(rules.METRICS_AVAILABLE, op): "1",
        sel(rules.DESIRED_REPLICAS, op): "2",
        sel(rules.READY_REPLICAS, op): "2",
    }
    out = []
    for series, value in values.items():
        name = series.split("{")[0]
        out.append({"series": series,
                    "values": over.get(name.removeprefix("dedicap_modeldeployment_"),
                                       const(value, minutes))})
    return out


def platform_series(minutes: int) -> list[dict[str, str]]:
    return [
        {"series": 'dedicap_build_info{job="dedicap",version="0.1.0"}',
         "values": const(1, minutes)},
        {"series": sel(rules.RESERVATION_ADMITTED, {"pool": "h100", "reservation": "acme"}),
         "values": const(1, minutes)},
    ]


def summary(md: dict[str, str], pattern: str) -> dict[str, str]:
    """Triton's per-pod summary at quantile 0.95, in microseconds (Triton 2.51's spelling)."""
    return {"series": sel("nv_inference_request_summary_us",
                          {**md, "pod": f"{md['modeldeployment']}-0", "model": "m",
                           "quantile": "0.95"}), "values": pattern}


def requests(md: dict[str, str], success: str, backend: str) -> list[dict[str, str]]:
    pod = {**md, "pod": f"{md['modeldeployment']}-0", "model": "m"}
    return [
        {"series": sel("nv_inference_request_success", pod), "values": success},
        {"series": sel("nv_inference_request_failure", {**pod, "reason": "BACKEND"}),
         "values": backend},
        {"series": sel("nv_inference_request_failure", {**pod, "reason": "REJECTED"}),
         "values": counter(0, 2000)},
    ]


def expected(alert: str, labels: dict[str, str]) -> dict[str, Any]:
    """An alert as promtool renders it: its labels and annotations with `$labels` filled in."""
    rule = next(r for r in rules.alerts_in(rules.rule_groups()) if r["alert"] == alert)

    def fill(text: str) -> str:
        return re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels[m[1]], text)

    return {"exp_labels": {**labels, **rule["labels"]},
            "exp_annotations": {k: fill(v) for k, v in rule["annotations"].items()}}


def case(name: str, series: list[dict[str, str]],
         checks: list[tuple[int, str, list[dict[str, str]]]]) -> dict[str, Any]:
    """One promtool test: `checks` are (minute, alert, [label sets expected firing])."""
    return {"name": name, "interval": "1m", "input_series": series, "alert_rule_test": [
        {"eval_time": f"{minute}m", "alertname": alert,
         "exp_alerts": [expected(alert, labels) for labels in firing]}
        for minute, alert, firing in checks]}


def promtool_cases() -> list[dict[str, Any]]:
    m = 80
    fast_latency = case("latency: a 20-minute breach pages; an idle (NaN) neighbour is fine", [
        *operator_series(BOT, m), *operator_series(CALM, m), *platform_series(m),
        summary(BOT, f"{const(100000, 60)} {const(500000, 20)}"),
        summary(CALM, f"{const(100000, 40)} {' '.join(['NaN'] * 40)}"),
    ], [(55, "DedicapLatencyBudgetBurnFast", []),
        (75, "DedicapLatencyBudgetBurnFast", [BOT]),
        (55, "DedicapLatencyBudgetBurnSlow", [])])
    day = 26 * 60
    # 1 slice in 20 over the target: 5 % (objective 99 %: 5x the budget) -> ticket, not page.
    block = f"{const(100000, 19)} 500000"
    slow_latency = case("latency: 5 % of slices over target for a day opens a ticket", [
        *operator_series(BOT, day), *platform_series(day),
        summary(BOT, " ".join([block] * (day // 20))),
    ], [(25 * 60, "DedicapLatencyBudgetBurnSlow", [BOT]),
        (25 * 60, "DedicapLatencyBudgetBurnFast", [])])
    fast_errors = case("errors: 9 % failing for 20 minutes pages", [
        *operator_series(BOT, m), *operator_series(CALM, m), *platform_series(m),
        *requests(BOT, counter(100, m), f"{counter(0, 60)} {counter(10, 20, 10)}"),
        *requests(CALM, counter(100, m), counter(0, m)),
    ], [(55, "DedicapErrorBudgetBurnFast", []),
        (75, "DedicapErrorBudgetBurnFast", [BOT]),
        (55, "DedicapErrorBudgetBurnSlow", [])])
    slow_errors = case("errors: 0.5 % failing for a day opens a ticket, not a page", [
        *operator_series(BOT, day), *platform_series(day),
        *requests(BOT, counter(1000, day), counter(5, day)),
    ], [(25 * 60, "DedicapErrorBudgetBurnSlow", [BOT]),
        (25 * 60, "DedicapErrorBudgetBurnFast", [])])
    t = 40
    alternating = " ".join(["2 2 2 2 2 3 3 3 3 3"] * 4)
    others = case("blind, constrained, refused, thrashing", [
        *operator_series(BOT, t, metrics_available=f"{const(1, 10)} {const(0, 30)}",
                         desired_replicas=f"{const(2, 10)} {const(4, 30)}"),
        *operator_series(CALM, t, desired_replicas=alternating),
        {"series": 'dedicap_build_info{job="dedicap",version="0.1.0"}', "values": const(1, t)},
        {"series": sel(rules.RESERVATION_ADMITTED, {"pool": "h100", "reservation": "acme"}),
         "values": f"{const(1, 10)} {const(0, 30)}"},
        {"series": sel(rules.RESERVATION_ADMITTED, {"pool": "h100", "reservation": "beta"}),
         "values": const(1, t)},
    ], [(9, "DedicapAutoscalerBlind", []),
        (20, "DedicapAutoscalerBlind", [BOT]),
        (9, "DedicapCapacityConstrained", []),
        (30, "DedicapCapacityConstrained", [BOT]),
        (9, "DedicapReservationRefused", []),
        (20, "DedicapReservationRefused", [{"pool": "h100", "reservation": "acme"}]),
        (20, "DedicapScaleThrashing", []),
        (39, "DedicapScaleThrashing", [CALM]),
        (39, "DedicapOperatorDown", [])])
    down = case("operator down: its series go away", [
        {"series": 'dedicap_build_info{job="dedicap",version="0.1.0"}', "values": const(1, 10)},
    ], [(5, "DedicapOperatorDown", []), (30, "DedicapOperatorDown", [{}])])
    return [fast_latency, slow_latency, fast_errors, slow_errors, others, down]


@needs_promtool
def test_promtool_checks_the_rule_files() -> None:
    for path in generate.RULE_FILES:
        out = subprocess.run([str(PROMTOOL), "check", "rules", str(ROOT / path)],
                             capture_output=True, text=True, check=False)
        assert out.returncode == 0, out.stdout + out.stderr


@needs_promtool
def test_promtool_unit_tests_fire_every_alert_on_a_breach_and_none_when_healthy(
        tmp_path: Path) -> None:
    (tmp_path / "rules.yml").write_text(generate.rules_yaml())
    cases = promtool_cases()
    tested = {t["alertname"] for c in cases for t in c["alert_rule_test"]
              if t["exp_alerts"]}
    assert tested == set(rules.ALERTS), "every alert needs a breach case"
    (tmp_path / "test.yml").write_text(yaml.safe_dump({
        "rule_files": ["rules.yml"], "evaluation_interval": "1m", "tests": cases},
        sort_keys=False))
    out = subprocess.run([str(PROMTOOL), "test", "rules", "test.yml"], cwd=tmp_path,
                         capture_output=True, text=True, check=False, timeout=600)
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-6000:]


def test_compressed_rules_divide_every_window_and_keep_the_names() -> None:
    real = rules.rule_groups()
    fast = rules.rule_groups(rules.SRE.compressed(30, "2s"))
    assert [r.get("record") for g in real for r in g["rules"]] == [
        r.get("record") for g in fast for r in g["rules"]]
    assert fast[0]["interval"] == "2s"
    by_name = {r["record"]: r["expr"] for g in fast for r in g["rules"] if "record" in r}
    assert "[10s]" in by_name[rules.bad_slices("5m")]
    assert "[144m]" in by_name[rules.bad_slices("3d")]
    page = next(r for r in rules.alerts_in(fast) if r["alert"] == "DedicapLatencyBudgetBurnFast")
    assert page["for"] == "4s"


def test_every_operator_series_the_rules_read_is_exported() -> None:
    exported = {metric.name for metric in OperatorMetrics().registry.collect()}
    text = generate.rules_yaml()
    used = set(re.findall(r"\b(dedicap_[a-z_]+)", text))
    assert used and used <= exported, used - exported


def test_every_alert_has_a_runbook_section() -> None:
    runbook = (ROOT / "docs" / "runbooks.md").read_text()
    anchors = {re.sub(r"[^a-z0-9 -]", "", line.lstrip("# ").strip().lower()).replace(" ", "-")
               for line in runbook.splitlines() if line.startswith("## ")}
    for alert in rules.ALERTS.values():
        assert alert.anchor in anchors, f"docs/runbooks.md has no section {alert.name}"


@pytest.mark.parametrize("text,seconds", [("30s", 30), ("5m", 300), ("1h", 3600),
                                          ("3d", 259200), ("250ms", 0.25)])
def test_durations_round_trip(text: str, seconds: float) -> None:
    assert rules.parse_duration(text) == seconds
    assert rules.prom_duration(seconds) == text
