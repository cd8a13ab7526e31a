"""The generated dashboards: they validate against grafana-foundation-sdk's schema (decode and
encode back unchanged), every query parses as PromQL once Grafana's variables are filled in, and
every series they read is one the operator exports, one Triton publishes or one the rules
record. (The integration test evaluates the same queries against the real Prometheus.)"""

from __future__ import annotations

import json
import re
from pathlib import Path

import promql_parser
import pytest
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import Dashboard

from dedicap.metrics.exporter import OperatorMetrics
from dedicap.monitoring import dashboards, generate, rules

ROOT = Path(__file__).resolve().parents[2]
BOARDS = dashboards.render_all()
# What Grafana puts in place of its variables for one ModelDeployment and a range.
VARIABLES = {"$namespace": "acme", "$modeldeployment": "bot", "$__rate_interval": "1m",
             "$__range": "1h", "${datasource}": "prometheus"}


def substitute(expr: str, values: dict[str, str] | None = None) -> str:
    for name, value in sorted((values or VARIABLES).items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(name, value)
    return expr


@pytest.mark.parametrize("name", sorted(BOARDS))
def test_dashboard_round_trips_through_the_sdk_schema(name: str) -> None:
    board = BOARDS[name]
    decoded = Dashboard.from_json(json.loads(json.dumps(board)))
    again = json.loads(json.dumps(decoded, cls=JSONEncoder))
    again["panels"] = [{**p, "id": p.get("id")} for p in again["panels"]]
    assert again == board


@pytest.mark.parametrize("name", sorted(BOARDS))
def test_every_query_parses_with_grafana_variables_filled_in(name: str) -> None:
    found = list(dashboards.queries(BOARDS[name]))
    assert found
    for where, expr in found:
        assert "$" not in substitute(expr), (where, expr)
        try:
            promql_parser.parse(substitute(expr))
        except Exception as err:  # the parser raises a plain ValueError-like error
            raise AssertionError(f"{name} {where}: {err}\n{expr}") from err


def test_every_series_read_exists_somewhere() -> None:
    exported = {m.name for m in OperatorMetrics().registry.collect()}
    exported |= {f"{m.name}_total" for m in OperatorMetrics().registry.collect()}
    exported |= {f"{m.name}_bucket" for m in OperatorMetrics().registry.collect()}
    recorded = {r["record"] for g in rules.rule_groups() for r in g["rules"] if "record" in r}
    for board in BOARDS.values():
        for where, expr in dashboards.queries(board):
            for name in re.findall(r"\b(dedicap(?:_|:)[a-z_:0-9]+)", expr):
                assert name in exported or name in recorded, (where, name)


def test_dashboards_have_the_variables_the_issue_asks_for() -> None:
    md = BOARDS["dedicap-modeldeployment"]
    names = [v["name"] for v in md["templating"]["list"]]
    assert names == ["datasource", "namespace", "modeldeployment"]
    assert md["annotations"]["list"], "scale decisions are annotations"
    for board in BOARDS.values():
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids))


def test_committed_files_are_what_the_generator_writes() -> None:
    assert generate.check(ROOT) == []
