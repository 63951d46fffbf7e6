"""``wam-policy analyze BAG…``: per-episode metrics and the success-by-perturbation table.

Writes into ``--out`` (default ``runs/analysis/<first bag name>``): ``report.md``,
``episodes.{md,csv,json}``, ``results.{md,csv,json}`` (the study table: Clean, Camera, Robot,
Language, Light, Background, Noise, Layout, Total), ``summary.json`` and PNG plots; prints the
Markdown tables.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from wam_common.config import ConfigError


def add_arguments(p) -> None:
    p.add_argument("bags", nargs="+", help="rosbag2 directories or .mcap files (unfinished bags are repaired)")
    p.add_argument("--out", default=None, help="output folder (default runs/analysis/<first bag name>)")
    p.add_argument("--policy", default=None, help="policy name for the table rows (default: the bag's labels or 'policy')")
    p.add_argument("--label", action="append", default=[], metavar="KEY=VALUE",
                   help="label every episode, e.g. --label dimension=Light --label level=3 (overrides the bag)")
    p.add_argument("--traces", type=int, default=4, help="joint-trace plots for the first N episodes (default 4)")
    p.add_argument("--json", action="store_true", help="print the summary JSON instead of Markdown")


def _labels(items: list[str]) -> dict:
    out = {}
    for it in items:
        if "=" not in it:
            raise ConfigError(f"--label '{it}': expected KEY=VALUE")
        k, v = it.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def run(args) -> int:
    from wam_common.bag.reader import BagReadError
    from wam_apps.analysis.episodes import analyze
    from wam_apps.analysis.report import episodes_markdown, write_report

    labels = _labels(args.label)
    for b in args.bags:
        if not Path(b).exists():
            raise ConfigError(f"bag '{b}' does not exist")
    try:
        eps = analyze(args.bags, policy=args.policy, labels=labels)
    except BagReadError as exc:
        print(f"wam-policy analyze: {exc}", file=sys.stderr)
        return 1
    out = Path(args.out) if args.out else Path("runs/analysis") / Path(args.bags[0]).resolve().name
    summary = write_report(eps, out, traces=args.traces)
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        print(episodes_markdown(eps))
        print((out / "results.md").read_text())
        print(f"report: {out / 'report.md'}")
    if not eps:
        print("wam-policy analyze: no episodes (no EPISODE start events) in the given bags", file=sys.stderr)
        return 1
    return 0
