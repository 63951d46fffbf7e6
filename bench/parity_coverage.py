"""Coverage and width of the parity study's 95 % intervals for a policy's real success, on synthetic
paired episodes with a KNOWN truth (independent draws, unlike the study's subsets of a finite pool):
PPI, PPI++ (wam_apps/analysis/parity_stats.py) and real-only (Agresti–Coull, Wilson), at n paired
real episodes and N other sim episodes, over real success rates and sim/real agreement rates.

    python bench/parity_coverage.py [--n 10] [--N 40] [--reps 4000] > docs/results/parity/coverage_synthetic.json

A draw: real outcome y ~ Bernoulli(p); the sim outcome equals y with probability `agree`, else 1 − y
(so the sim's rate is p·agree + (1 − p)(1 − agree): a biased sim when agree < 1 and p ≠ 0.5).
"""
from __future__ import annotations

import argparse
import json

import numpy as np

from wam_apps.analysis import parity_stats as ps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--N", type=int, default=40)
    ap.add_argument("--reps", type=int, default=4000)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    rows = []
    for agree in (1.0, 0.93, 0.8):
        for p in (0.1, 0.3, 0.5, 0.7, 0.9):
            hit = {m: 0 for m in ("ppi", "ppi_tuned", "real_only", "wilson")}
            wid = {m: 0.0 for m in hit}
            for _ in range(a.reps):
                y = (rng.random(a.N + a.n) < p).astype(float)
                f = np.where(rng.random(a.N + a.n) < agree, y, 1 - y)
                fu, fp, yp = f[:a.N], f[a.N:], y[a.N:]
                est = {"ppi": ps.ppi_mean(fu, fp, yp), "ppi_tuned": ps.ppi_mean(fu, fp, yp, lam="tuned"),
                       "real_only": ps.classical_mean(yp)}
                lo, hi = ps.wilson(int(yp.sum()), a.n)
                for m, e in est.items():
                    hit[m] += e.covers(p)
                    wid[m] += e.width
                hit["wilson"] += lo <= p <= hi
                wid["wilson"] += hi - lo
            rows.append({"p_real": p, "agree": agree, **{m: {"coverage": round(hit[m] / a.reps, 4),
                                                               "mean_width": round(wid[m] / a.reps, 4)} for m in hit}})
    print(json.dumps({"n": a.n, "N": a.N, "reps": a.reps, "seed": a.seed, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
