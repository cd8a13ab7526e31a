"""Shared fixtures. The `stack` fixture brings the real local stack up once per test session
(or reuses one whose control plane is already running, and then leaves it running), with the
cluster-scoped objects the Helm chart ships (PriorityClasses, tenant ClusterRoles) that an
operator run outside the chart relies on."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

import faults
from dedicap_local import chart
from dedicap_local import stack as stk


def pytest_report_header() -> str:
    return faults.header()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    text = faults.finish()
    if text:
        terminalreporter.write_sep("-", "reliability campaign record")
        terminalreporter.write_line(text)


@pytest.fixture(scope="session")
def stack() -> Iterator[stk.Stack]:
    s = stk.Stack()
    states = stk.status(s)
    # Only the control plane decides whether the stack is someone else's: a stopped data plane
    # or Prometheus is simply (re)started by `up`, which is idempotent.
    was_running = all(states[name] for name in stk.COMPONENTS)
    if not was_running:
        from dedicap_local.cli import build

        build()
        # Tests start from an empty cluster: no objects left over from an earlier run.
        stk.down(s, purge=True)
    stk.up(s)
    chart.install_cluster_objects(s)
    yield s
    if not was_running and os.environ.get("DEDICAP_KEEP_STACK") != "1":
        stk.down(s)
