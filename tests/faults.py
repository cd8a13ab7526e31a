"""The reliability and security campaign's size, randomness and record of figures (importable:
pytest puts tests/ on the path). The campaign is tests/campaign/ plus the fault tests of
tests/integration that record here (a broken saved state, Prometheus down, lost nodes).

Size: bounded by default (what `make test` runs); `DEDICAP_CAMPAIGN=full` runs the full campaign
(`make campaign`). Randomness: one seed for the whole run, printed in pytest's header and kept in
the record; `DEDICAP_CAMPAIGN_SEED=<n>` replays a run. Figures: each test adds what it measured;
the record is printed at the end of the run and written as JSON to `DEDICAP_CAMPAIGN_REPORT`
when that is set.
"""

from __future__ import annotations

import json
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FULL = os.environ.get("DEDICAP_CAMPAIGN", "") == "full"
SEED = int(os.environ.get("DEDICAP_CAMPAIGN_SEED") or random.SystemRandom().randrange(2**31))


@dataclass(frozen=True)
class Scale:
    """How much of each fault the campaign tries."""

    kill_cycles: int  # create/update/scale/delete cycles with the operator SIGKILLed
    inputs: int  # generated objects through dry-run and the operator's own code
    real_inputs: int  # of the accepted ModelDeployments, how many are created for real
    prometheus_outage_s: float  # Prometheus down during a load drop


SCALE = (Scale(kill_cycles=100, inputs=1000, real_inputs=300, prometheus_outage_s=600)
         if FULL else Scale(kill_cycles=20, inputs=200, real_inputs=30, prometheus_outage_s=30))

_RECORD: dict[str, Any] = {}


def rng(name: str) -> random.Random:
    """A random source of its own per test, derived from the run's seed."""
    return random.Random(f"{SEED}:{name}")


def header() -> str:
    return (f"dedicap campaign: {'full' if FULL else 'bounded'}, seed {SEED} "
            f"(replay with DEDICAP_CAMPAIGN_SEED={SEED})")


def record(section: str, **figures: Any) -> None:
    """Add figures of one part of the campaign to the record."""
    _RECORD.setdefault(section, {}).update(figures)


def finish() -> str | None:
    """The record as JSON (None when nothing was recorded), written where asked."""
    if not _RECORD:
        return None
    text = json.dumps({"mode": "full" if FULL else "bounded", "seed": SEED,
                       "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                       **_RECORD}, indent=1, sort_keys=True, default=str)
    out = os.environ.get("DEDICAP_CAMPAIGN_REPORT")
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")
    return text
