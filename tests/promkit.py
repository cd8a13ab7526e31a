"""promtool as a test harness: `promtool check rules` parses expressions as Prometheus would,
and `promtool test rules` evaluates them with Prometheus' own engine over synthetic series (no
server needed). Shared by the tests of the request-level and the token-level queries."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

import pytest

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None,
                                    reason="promtool (Debian `prometheus`) missing")


def check_rules(tmp_path: Path, exprs: Iterable[str]) -> subprocess.CompletedProcess[str]:
    """Run `promtool check rules` on recording rules made of `exprs` (JSON is valid YAML)."""
    rules = [{"record": f"test:expr_{i}", "expr": expr} for i, expr in enumerate(exprs)]
    path = tmp_path / "rules.yml"
    # Raw UTF-8: YAML refuses the surrogate-pair escapes JSON would write beyond the BMP.
    path.write_text(json.dumps({"groups": [{"name": "dedicap", "rules": rules}]},
                               ensure_ascii=False), encoding="utf-8")
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True,
                          text=True, timeout=60)


INTERVAL_S = 15
STEPS = 40  # samples at 0, 15 s, ..., 600 s
EVAL_AT_S = INTERVAL_S * STEPS


def counter(per_second: float) -> str:
    return f"0+{per_second * INTERVAL_S:g}x{STEPS}"


def constant(value: float | str) -> str:
    return " ".join([str(value)] * (STEPS + 1))


def series(metric: str, lbls: dict[str, str]) -> str:
    return metric + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(lbls.items())) + "}"


def run_promtool_tests(tmp_path: Path, tests: list[dict[str, object]],
                       input_series: list[dict[str, str]]) -> subprocess.CompletedProcess[str]:
    spec = {"rule_files": [], "evaluation_interval": "1m",
            "tests": [{"interval": f"{INTERVAL_S}s", "input_series": input_series,
                       "promql_expr_test": tests}]}
    path = tmp_path / "test.yml"
    path.write_text(json.dumps(spec, indent=1))
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, "test", "rules", str(path)], capture_output=True, text=True,
                          timeout=60)
