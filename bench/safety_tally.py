"""What the safety layer did in eval runs: chunks trimmed / rejected by the whole-chunk check and steps
held, per run, policy and world — the false-positive rate on episodes without injected faults.

Reads ``wam-policy eval`` output folders (their ``episodes.jsonl`` rows carry the observer's tallies:
``chunks_used``, ``chunks_trimmed``, ``chunks_rejected``, ``holds`` by reason; wam_apps/evaluation/runner.py)
and prints one JSON object. A chunk *checked* is one the commands came from (``chunks_used``) or one the
check rejected. Rows written before the tallies existed are counted under ``rows_without_tallies``, rows
with the tallies but before the chunk count under ``episodes_without_chunk_count``.

    .venv/bin/python bench/safety_tally.py runs/parity_cam/nominal runs/parity_cam/cousin [...]
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wam_apps.evaluation.results import ResultStore  # noqa: E402


def tally(rows: list[dict]) -> dict:
    out: dict = defaultdict(lambda: {"episodes": 0, "successes": 0, "chunks_checked": 0, "chunks_trimmed": 0,
                                     "chunks_rejected": 0, "held_steps": defaultdict(int), "steps": 0,
                                     "episodes_with_any": [], "rows_without_tallies": 0,
                                     "episodes_without_chunk_count": 0})
    for r in rows:
        t = out[f"{r['policy']} @ {r.get('world', 'nominal')} / {r['configuration']}"]
        if r.get("holds") is None:
            t["rows_without_tallies"] += 1
            continue
        t["episodes"] += 1
        t["successes"] += bool(r["success"])
        t["steps"] += int(r["steps"])
        if r.get("chunks_used") is None:  # rows from before the count existed: holds and checks are there
            t["episodes_without_chunk_count"] += 1
        else:
            t["chunks_checked"] += int(r["chunks_used"]) + int(r["chunks_rejected"])
        t["chunks_trimmed"] += int(r["chunks_trimmed"])
        t["chunks_rejected"] += int(r["chunks_rejected"])
        for why, n in r["holds"].items():
            t["held_steps"][why] += int(n)
        if r["chunks_trimmed"] or r["chunks_rejected"] or r["holds"]:
            t["episodes_with_any"].append({"seed": r["seed"], "success": r["success"], "holds": r["holds"],
                                           "trimmed": r["chunks_trimmed"], "rejected": r["chunks_rejected"]})
    for t in out.values():
        n = t["chunks_checked"]
        t["trimmed_or_rejected_per_chunk"] = (t["chunks_trimmed"] + t["chunks_rejected"]) / n if n else None
        t["held_steps"] = dict(t["held_steps"])
        t["held_step_fraction"] = sum(t["held_steps"].values()) / t["steps"] if t["steps"] else None
    return dict(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="wam-policy eval output folders")
    args = ap.parse_args()
    rows = []
    for run in args.runs:
        rows += ResultStore(Path(run)).rows()
    print(json.dumps({"runs": args.runs, "by_policy_world": tally(rows)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
