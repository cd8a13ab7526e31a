"""Latency histograms on fixed log-spaced bins: cheap to add, merge and take quantiles of.

Bins grow by 4% from 0.1 ms to 1,000 s, so a quantile read from them is within 2% of the
exact one; the simulator keeps one histogram per minute (for scoring) and one per scrape
interval (for the summary quantile the policy sees).
"""

from __future__ import annotations

import numpy as np

RATIO = 1.04
LOW = 1e-4
N_BINS = int(np.ceil(np.log(1e3 / LOW) / np.log(RATIO))) + 1
EDGES = LOW * RATIO ** np.arange(N_BINS + 1)  # bin i covers [EDGES[i], EDGES[i+1])


def bin_of(latency_s: np.ndarray) -> np.ndarray:
    idx = np.floor(np.log(np.maximum(latency_s, LOW) / LOW) / np.log(RATIO)).astype(np.int64)
    return np.minimum(idx, N_BINS - 1)


def add(hist: np.ndarray, latency_s: np.ndarray, weight: np.ndarray | float = 1.0) -> None:
    """Add samples (optionally weighted) into ``hist`` in place."""
    if latency_s.size == 0:
        return
    b = bin_of(latency_s)
    if np.isscalar(weight):
        hist += np.bincount(b, minlength=N_BINS).astype(hist.dtype) * float(weight)  # type: ignore[arg-type]
    else:
        hist += np.bincount(b, weights=np.asarray(weight), minlength=N_BINS).astype(hist.dtype)


def quantile(hist: np.ndarray, q: float) -> float:
    """The ``q`` quantile (0..1) in seconds; NaN for an empty histogram."""
    total = float(hist.sum())
    if total <= 0.0:
        return float("nan")
    cum = np.cumsum(hist)
    i = int(np.searchsorted(cum, q * total, side="left"))
    i = min(i, N_BINS - 1)
    before = float(cum[i - 1]) if i > 0 else 0.0
    inside = float(hist[i])
    frac = 0.5 if inside <= 0 else min(max((q * total - before) / inside, 0.0), 1.0)
    return float(EDGES[i] * RATIO**frac)


def quantiles_rows(hists: np.ndarray, q: float) -> np.ndarray:
    """The ``q`` quantile of each row of a 2-D array of histograms (NaN for empty rows)."""
    total = hists.sum(axis=1)
    cum = np.cumsum(hists, axis=1)
    target = (q * total)[:, None]
    i = np.minimum((cum < target).sum(axis=1), N_BINS - 1)
    rows = np.arange(hists.shape[0])
    before = np.where(i > 0, cum[rows, np.maximum(i - 1, 0)], 0.0)
    inside = hists[rows, i]
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.clip(np.where(inside > 0, (q * total - before) / inside, 0.5), 0.0, 1.0)
    out = EDGES[i] * RATIO**frac
    out[total <= 0] = np.nan
    return out
