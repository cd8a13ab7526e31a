"""The knee table: latency percentiles of one batching replica under Poisson arrivals.

Measured with the simulator's exact batcher and written to ``knee_table.json`` by
``python -m dedicap.sim.knee`` (do not edit it by hand; ``tests/unit/test_knee.py`` measures a
row again). Times are in full-batch times, loads in shares of saturation, no queue delay:
``CURVES[(B, share)][p][i]`` is percentile ``PERCENTILES[p]`` at load ``RHOS[i]`` for max batch
``B`` whose full batch spends ``share`` of its time on fixed cost.
"""

from __future__ import annotations

import json
from importlib.resources import files

_DATA = json.loads(files("dedicap.decide").joinpath("knee_table.json").read_text())

BATCHES: tuple[int, ...] = tuple(int(b) for b in _DATA["batches"])
SHARES: tuple[float, ...] = tuple(float(s) for s in _DATA["shares"])
RHOS: tuple[float, ...] = tuple(float(r) for r in _DATA["rhos"])
PERCENTILES: tuple[float, ...] = tuple(float(p) for p in _DATA["percentiles"])
CURVES: dict[tuple[int, float], tuple[tuple[float, ...], ...]] = {
    (int(row["max_batch"]), float(row["fixed_share"])):
        tuple(tuple(float(v) for v in curve) for curve in row["latency"])
    for row in _DATA["curves"]
}
