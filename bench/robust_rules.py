"""What each robust rule costs the aggregator per round, against the plain mean of the same rows.

The aggregator runs a rule once per round over the single clipped updates
(plaintext mode) or over the group means (grouped SecAgg): this measures that
call alone (``robust.unweighted_aggregate``; ``reputation`` with last round's
scores, as the service keeps them), best of ``--repeats``, and the peak memory
it allocates (tracemalloc), for fleets of 20, 100 and 500 rows of the pilot
model's 4,851 parameters. The baseline, measured in the same run on the same
rows, is the unweighted mean (what FedAvg's server does with a sum).

Why it matters: a rule that judges whole updates by their distances
(Multi-Krum, ``cosine_cluster``) builds an n x n matrix and grows with the
square of the fleet; the coordinate-wise ones sort each coordinate, and
``reputation`` costs one coordinate-wise median and n dot products.

Run: python bench/robust_rules.py [--sizes 20 100 500] [--dim 4851] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np

from edgeagent.fl.constants import DEFENCE_RULES
from edgeagent.fl.privacy import l2_clip
from edgeagent.fl.robust import unweighted_aggregate

CLIP = 1.0


def rule_params(rule: str, n: int, rng: np.random.Generator) -> dict[str, Any]:
    """The parameters a deployment would set for ``n`` rows (20 % tolerated where asked)."""
    if rule == "trimmed_mean":
        return {"beta": 0.2}
    if rule == "multi_krum":
        return {"f": max(1, min(n // 5, (n - 3) // 2))}
    if rule == "reputation":
        return {"scores": rng.normal(0.5, 0.3, n)}  # last round's, as the service keeps them
    return {}


def measure(rows: np.ndarray, rule: str, params: dict[str, Any], repeats: int) -> dict[str, float]:
    """Best wall time of ``repeats`` calls and the peak memory one call allocates."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        unweighted_aggregate(rows, rule, **params)
        best = min(best, time.perf_counter() - t0)
    tracemalloc.start()
    unweighted_aggregate(rows, rule, **params)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"seconds": best, "peak_bytes": float(peak)}


def run(n: int, dim: int, repeats: int, seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    shared = rng.normal(0, 1, dim)
    rows = np.stack([l2_clip(0.3 * shared + rng.normal(0, 1, dim), CLIP)[0] for _ in range(n)])
    base = measure(rows, "mean", {}, repeats)
    out: dict[str, Any] = {"rows": n, "params": dim, "baseline_mean": base, "rules": {}}
    for rule in DEFENCE_RULES:
        m = measure(rows, rule, rule_params(rule, n, rng), repeats)
        m["time_over_mean"] = m["seconds"] / base["seconds"]
        m["memory_over_rows"] = m["peak_bytes"] / rows.nbytes
        out["rules"][rule] = m
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[20, 100, 500])
    ap.add_argument("--dim", type=int, default=4851, help="parameters (the pilot model: 4,851)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "robust_rules.json"
    )
    args = ap.parse_args()
    results = []
    for n in args.sizes:
        r = run(n, args.dim, args.repeats)
        results.append(r)
        b = r["baseline_mean"]
        print(
            f"\n{n} rows x {args.dim} params: plain mean {b['seconds'] * 1e3:.2f} ms "
            f"(the rows themselves: {n * args.dim * 8 / 1e6:.1f} MB)"
        )
        print(f"  {'rule':16} {'ms':>9} {'x mean':>8} {'peak MB':>8} {'x rows':>7}")
        for rule, m in r["rules"].items():
            print(
                f"  {rule:16} {m['seconds'] * 1e3:>9.2f} {m['time_over_mean']:>8.1f} "
                f"{m['peak_bytes'] / 1e6:>8.1f} {m['memory_over_rows']:>7.2f}"
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    doc = {"machine": platform.machine(), "python": platform.python_version(), "runs": results}
    args.out.write_text(json.dumps(doc, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
