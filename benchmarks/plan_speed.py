"""How long `dedicap plan` takes on a one-hour trace of 3.6 million requests.

    python benchmarks/plan_speed.py [--repeat 3] [--baseline-code DIR]

It writes the trace (1,000 req/s Poisson for an hour, with token columns) as JSON lines with
integer-millisecond timestamps and as a CSV of relative seconds, then times the whole command
(reading, replay, trade-off curve) `--repeat` times each and prints the median wall time per
case. ``--baseline-code DIR`` runs the same cases, side by side in the same run, with the
`dedicap` package found under ``DIR`` (an older checkout's ``operator`` folder) for a
before/after ratio; cases the baseline cannot run (an option it lacks) are marked.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def write_traces(folder: Path, rate: float = 1000.0, seconds: float = 3600.0) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    n = int(rate * seconds)
    t = np.sort(rng.uniform(0.0, seconds, n))
    inp = rng.integers(50, 3000, n)
    out = rng.integers(1, 500, n)
    jsonl = folder / "hour.jsonl"
    with jsonl.open("w") as f:
        f.writelines(f'{{"timestamp": {int(a * 1000)}, "input_length": {b}, '
                     f'"output_length": {c}}}\n' for a, b, c in zip(t, inp, out, strict=True))
    csv = folder / "hour.csv"
    with csv.open("w") as f:
        f.write("timestamp,input_length,output_length\n")
        f.writelines(f"{a:.4f},{b},{c}\n" for a, b, c in zip(t, inp, out, strict=True))
    return {"jsonl": jsonl, "csv": csv}


def cases(paths: dict[str, Path]) -> list[tuple[str, list[str]]]:
    slo = ["--slo", "p95=100ms"]
    return [
        ("JSON lines, ms, --time-unit ms", ["--trace", str(paths["jsonl"]), "--time-unit", "ms",
                                            *slo]),
        ("CSV, relative s, inferred", ["--trace", str(paths["csv"]), *slo]),
    ]


def run(argv: list[str], code: str | None) -> tuple[float, int]:
    env = dict(os.environ)
    if code:
        env["PYTHONPATH"] = code
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "dedicap.cli", "plan", *argv], env=env,
                          capture_output=True, text=True, check=False)
    return time.perf_counter() - t0, proc.returncode


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--baseline-code", help="an older checkout's operator/ folder")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as d:
        paths = write_traces(Path(d))
        print(f"trace: 3,600,000 requests over 1 h ({paths['jsonl'].stat().st_size >> 20} MiB "
              f"JSON lines, {paths['csv'].stat().st_size >> 20} MiB CSV); median of "
              f"{args.repeat} runs")
        print("| case | this checkout s | baseline s | ratio |")
        print("|---|---|---|---|")
        for label, case in cases(paths):
            now, base = [], []
            for _ in range(args.repeat):
                # side by side: the baseline and this checkout alternate
                if args.baseline_code:
                    s, rc = run(case, args.baseline_code)
                    base.append(s if rc == 0 else float("nan"))
                s, rc = run(case, None)
                if rc != 0:
                    print(f"| {label} | failed (exit {rc}) | | |")
                    break
                now.append(s)
            if not now:
                continue
            m = statistics.median(now)
            b = statistics.median(base) if base else float("nan")
            ratio = f"{b / m:.1f}x" if b == b else "-"
            bs = f"{b:.1f}" if b == b else ("cannot run" if base else "-")
            print(f"| {label} | {m:.1f} | {bs} | {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
