"""How well does ONE episode pin each dynamics parameter? Fit every bag's episodes on their own
(``sim_bridge.calibration.calibrate``, as ``wam-policy calibrate BAG`` does) and report, per
parameter, the fits' mean, their spread (the empirical standard deviation of a one-episode fit),
the median local standard error the fit itself reported (linearised: optimistic where a
trajectory depends on the parameter non-linearly, e.g. dry friction), and, with ``--reference``,
each fit's error against the known values.

    python bench/calibration_spread.py BAG... [--reference cousin] [--max-steps 0] > spread.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from sim_bridge.calibration import KINDS, CalibrationFailed, calibrate
from sim_bridge.world import JOINTS_PER_ARM, load_world
from wam_apps.analysis.calibrate import recordings_from_bag


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("bags", nargs="+")
    ap.add_argument("--reference", default=None)
    ap.add_argument("--max-steps", type=int, default=0)
    a = ap.parse_args()
    ref = load_world(a.reference) if a.reference else None
    fits = []
    for b in a.bags:
        for rec in recordings_from_bag(b, a.max_steps):
            t0 = time.monotonic()
            try:
                res = calibrate([rec])
            except CalibrationFailed as exc:
                print(f"{rec.name}: {exc}", file=sys.stderr)
                fits.append({"episode": rec.name, "failed": str(exc)})
                continue
            fits.append({"episode": rec.name, "seed": rec.seed, "steps": rec.steps, "fit_s": round(time.monotonic() - t0, 1),
                         "chi2_dof": res.chi2_dof, **{f"{k}": [float(x) for x in res.params[k]] for k in KINDS},
                         **{f"{k}_se": [float(x) for x in res.stderr[k]] for k in KINDS},
                         **{f"{k}_identified": [bool(x) for x in res.identified[k]] for k in KINDS}})
            print(f"{rec.name}: {res.message} ({fits[-1]['fit_s']} s)", file=sys.stderr)
    ok = [f for f in fits if "failed" not in f]
    table = {}
    for k in KINDS:
        v = np.array([f[k] for f in ok])
        se = np.array([f[f"{k}_se"] for f in ok])
        row = {}
        for j, name in enumerate(JOINTS_PER_ARM):
            d = {"mean": float(v[:, j].mean()), "spread_sd": float(v[:, j].std(ddof=1)) if len(v) > 1 else None,
                 "median_local_se": float(np.median(se[:, j])),
                 "identified_in": int(sum(f[f"{k}_identified"][j] for f in ok))}
            if ref is not None:
                err = v[:, j] - getattr(ref, k)[j]
                d.update(true=float(getattr(ref, k)[j]), max_abs_error=float(np.abs(err).max()),
                         rms_error=float(np.sqrt(np.mean(err ** 2))))
            row[name] = d
        table[k] = row
    json.dump({"bags": a.bags, "reference": a.reference, "episodes": len(fits), "fitted": len(ok),
               "parameters": table, "fits": fits}, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
