"""The study's robustness table with Wilson 95 % intervals: Markdown, CSV, JSON and a PNG chart.

Rows are policies; columns Clean, then the study's dimensions (Camera, Robot, Language, Light,
Background, Noise, Layout), then Latency when run — each the success rate over all its levels and
seeds — and Total (all perturbed episodes, as in LIBERO-Plus). Next to success: mean inference ms
and stalls (command gaps > 1.5 control periods of the sim's clock), which ``--clock realtime``
makes meaningful.

When the rows hold a Latency dimension (``config/suites/latency.yaml``), :func:`latency_view` adds
success vs latency per policy (per ``<policy>+<strategy>``): the clean run is latency 0, each
Latency configuration its ``value`` in seconds; per point the Wilson interval, stall steps per
episode (steps commanded without a fresh action), the largest seam jump (rad) and the mean time
to success; and the first latency where success falls below 80 % of the zero-latency success.
Written as ``latency.{md,json,png}`` next to the results.
"""
from __future__ import annotations

import csv
import io
import json
import math
from collections import defaultdict
from pathlib import Path

from wam_apps.evaluation.suites import CLEAN, DIMENSIONS, EXTRA_DIMENSIONS

COLUMNS = (CLEAN,) + DIMENSIONS + EXTRA_DIMENSIONS + ("Total",)
LATENCY = "Latency"
DROP = 0.8  # "falls below 80 % of its zero-latency success"


def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval for k successes in n trials (0..1); (0, 1) when n == 0."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def _cell(rows: list[dict]) -> dict:
    n = len(rows)
    k = sum(1 for r in rows if r["success"])
    lo, hi = wilson(k, n)
    infer = [r["infer_ms_mean"] for r in rows if r.get("infer_ms_mean") is not None]
    return {"successes": k, "episodes": n, "rate": (k / n) if n else None, "ci_lo": lo, "ci_hi": hi,
            "infer_ms_mean": (sum(infer) / len(infer)) if infer else None,
            # None when no episode measured stalls (lockstep: the sim waits for every command)
            "stalls": (sum(int(r["stalls"]) for r in rows if r.get("stalls") is not None)
                       if any(r.get("stalls") is not None for r in rows) else None)}


def build(rows: list[dict]) -> dict:
    """policy → column → cell (+ per-level detail under "levels")."""
    by_policy: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_policy[r["policy"]].append(r)
    out: dict = {}
    for policy in sorted(by_policy):
        prow = by_policy[policy]
        cols = {}
        for col in COLUMNS:
            if col == "Total":
                sel = [r for r in prow if r["dimension"] != CLEAN]
            else:
                sel = [r for r in prow if r["dimension"] == col]
            if sel:
                cols[col] = _cell(sel)
        levels = defaultdict(dict)
        for r in prow:
            levels[r["dimension"]].setdefault(int(r["level"]), []).append(r)
        cols["levels"] = {d: {lv: _cell(v) for lv, v in sorted(lvs.items())} for d, lvs in levels.items()}
        out[policy] = cols
    return out


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def markdown(table: dict, title: str = "") -> str:
    cols = [c for c in COLUMNS if any(c in t for t in table.values())]
    lines = [f"### {title}", ""] if title else []
    lines.append("| Policy | " + " | ".join(cols) + " | infer ms | stalls |")
    lines.append("|---|" + "---|" * (len(cols) + 2))
    for policy, t in table.items():
        cells = []
        for c in cols:
            cell = t.get(c)
            cells.append("—" if cell is None else
                         f"{_pct(cell['rate'])} [{_pct(cell['ci_lo'])}, {_pct(cell['ci_hi'])}] (n={cell['episodes']})")
        allc = [t[c] for c in cols if c in t and c != "Total"]
        infer = [c["infer_ms_mean"] for c in allc if c["infer_ms_mean"] is not None]
        measured = [c["stalls"] for c in allc if c["stalls"] is not None]
        stalls = str(sum(measured)) if measured else "—"
        infer_s = f"{sum(infer) / len(infer):.1f}" if infer else "—"
        lines.append(f"| {policy} | " + " | ".join(cells) + f" | {infer_s} | {stalls} |")
    lines.append("")
    lines.append("Success rate in % with Wilson 95 % interval; Total = all perturbed episodes.")
    return "\n".join(lines) + "\n"


def csv_text(table: dict) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["policy", "column", "successes", "episodes", "rate", "ci_lo", "ci_hi", "infer_ms_mean", "stalls"])
    for policy, t in table.items():
        for c in COLUMNS:
            if c in t:
                cell = t[c]
                w.writerow([policy, c, cell["successes"], cell["episodes"], cell["rate"], cell["ci_lo"],
                            cell["ci_hi"], cell["infer_ms_mean"], cell["stalls"]])
    return buf.getvalue()


def bar_chart(table: dict, path: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    cols = [c for c in COLUMNS if any(c in t for t in table.values())]
    policies = list(table)
    width = 0.8 / max(len(policies), 1)
    fig, ax = plt.subplots(figsize=(1.2 * len(cols) + 2, 4))
    x = np.arange(len(cols))
    for i, p in enumerate(policies):
        rates = [100 * (table[p][c]["rate"] or 0) if c in table[p] else 0 for c in cols]
        lo = [max(0.0, 100 * ((table[p][c]["rate"] or 0) - table[p][c]["ci_lo"])) if c in table[p] else 0
              for c in cols]
        hi = [max(0.0, 100 * (table[p][c]["ci_hi"] - (table[p][c]["rate"] or 0))) if c in table[p] else 0
              for c in cols]
        ax.bar(x + i * width - 0.4 + width / 2, rates, width, yerr=[lo, hi], capsize=2, label=p)
    ax.set_xticks(x, cols, rotation=20)
    ax.set_ylabel("success %")
    ax.set_ylim(0, 105)
    ax.set_title(title or "success by perturbation dimension (Wilson 95 % CI)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _mean(xs: list) -> float | None:
    xs = [x for x in xs if x is not None]
    return (sum(xs) / len(xs)) if xs else None


def latency_view(rows: list[dict]) -> dict:
    """policy → {"points": [...] sorted by latency, "below_80_s": first latency with success < 80 % of the
    zero-latency success (None: never; absent without a clean run)}; {} when no row is a Latency one."""
    if not any(r["dimension"] == LATENCY for r in rows):
        return {}
    by_policy: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        if r["dimension"] in (CLEAN, LATENCY):
            by_policy[r["policy"]].append(r)
    out = {}
    for policy in sorted(by_policy):
        confs: dict[str, list[dict]] = defaultdict(list)
        for r in by_policy[policy]:
            confs[r["configuration"]].append(r)
        points = []
        for conf, rs in confs.items():
            value = 0.0 if rs[0]["dimension"] == CLEAN else rs[0].get("value")
            cell = _cell(rs)
            seams = [r.get("seam_jump_max") for r in rs if r.get("seam_jump_max") is not None]
            points.append({
                "configuration": conf, "latency_s": value, "level": int(rs[0]["level"]), **cell,
                # a level of the dimension (its value is the label), else a named configuration (a profile)
                "dimension_level": rs[0]["dimension"] == CLEAN or str(conf) == f"latency_{rs[0]['level']}",
                "stall_steps_per_episode": _mean([r.get("stall_steps") for r in rs]),
                "seam_jump_max": max(seams) if seams else None,
                "seam_jump_mean": _mean(seams),
                "time_to_success_s": _mean([r.get("time_to_success_s") for r in rs if r["success"]]),
                "status_complete": all(r.get("status_complete") is not False for r in rs),
            })
        points.sort(key=lambda p: (p["latency_s"] is None, p["latency_s"] or 0.0, p["configuration"]))
        entry: dict = {"points": points}
        zero = [p for p in points if p["latency_s"] == 0.0]
        if zero and zero[0]["rate"] is not None:
            base = zero[0]["rate"]
            entry["zero_rate"] = base
            entry["below_80_s"] = next((p["latency_s"] for p in points if p["latency_s"] and p["rate"] is not None
                                        and p["rate"] < DROP * base), None)
        out[policy] = entry
    return out


def _num(x: float | None, fmt: str) -> str:
    return "—" if x is None else format(x, fmt)


def latency_markdown(view: dict, title: str = "") -> str:
    lines = [f"### {title}", ""] if title else []
    lats = sorted({(p["latency_s"], p["configuration"]) for v in view.values() for p in v["points"]},
                  key=lambda x: (x[0] is None, x[0] or 0.0, x[1]))
    head = [f"{c} ({_num(s, 'g')} s)" if s else c for s, c in lats]
    lines.append("| Policy + strategy | " + " | ".join(head) + " | below 80 % of 0-latency success at |")
    lines.append("|---|" + "---|" * (len(lats) + 1))
    for policy, v in view.items():
        by = {p["configuration"]: p for p in v["points"]}
        cells = [("—" if c not in by or by[c]["rate"] is None else
                  f"{_pct(by[c]['rate'])} [{_pct(by[c]['ci_lo'])}, {_pct(by[c]['ci_hi'])}]") for _, c in lats]
        if "zero_rate" not in v:
            drop = "— (no clean run)"
        else:
            drop = "never (in this range)" if v["below_80_s"] is None else f"{v['below_80_s']:g} s"
        lines.append(f"| {policy} | " + " | ".join(cells) + f" | {drop} |")
    lines += ["", "Success % [Wilson 95 %].", "",
              "| Policy + strategy | configuration | latency (s) | success | n | stall steps / episode | "
              "seam jump max / mean (rad) | time to success (s) |", "|---|---|---|---|---|---|---|---|"]
    for policy, v in view.items():
        for p in v["points"]:
            lines.append(
                f"| {policy} | {p['configuration']} | {_num(p['latency_s'], 'g')} | {_pct(p['rate'])} "
                f"[{_pct(p['ci_lo'])}, {_pct(p['ci_hi'])}] | {p['episodes']} | "
                f"{_num(p['stall_steps_per_episode'], '.1f')} | {_num(p['seam_jump_max'], '.3f')} / "
                f"{_num(p['seam_jump_mean'], '.3f')} | {_num(p['time_to_success_s'], '.2f')} |")
    lines += ["", "Stall steps: steps commanded without a fresh action (a hold: the last command repeated). Seam "
              "jump: at a chunk boundary, the largest arm-joint distance (rad) of the runtime's new action from the "
              "last command sent (so it includes any lag the safety filter's velocity clamp had built up); per "
              "episode its maximum, then max and mean over episodes. Time to success: sim time of the successful "
              "episodes."]
    if not all(p["status_complete"] for v in view.values() for p in v["points"]):
        lines.append("Some episodes' statuses were incomplete (stalls and seams counted from what came).")
    return "\n".join(lines) + "\n"


def latency_plot(view: dict, path: Path, title: str = "") -> None:
    """Success vs latency (symlog x axis, seconds) per policy + strategy, with Wilson intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.8))
    n = len(view)
    ticks: dict[float, str] = {}
    for i, (policy, v) in enumerate(view.items()):
        pts = [p for p in v["points"] if p["latency_s"] is not None and p["rate"] is not None]
        shift = 0.07 * (i - (n - 1) / 2)  # policies side by side (a relative shift on the log axis)
        x = [p["latency_s"] * (1 + shift) if p["latency_s"] > 0 else 0.003 * shift for p in pts]
        for p in pts:
            ticks[p["latency_s"]] = (f"{p['latency_s']:g}" if p["dimension_level"] else
                                     p["configuration"].removeprefix("latency_"))
        y = [100 * p["rate"] for p in pts]
        err = [[max(0.0, 100 * (p["rate"] - p["ci_lo"])) for p in pts],
               [max(0.0, 100 * (p["ci_hi"] - p["rate"])) for p in pts]]
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=policy)
    ax.set_xscale("symlog", linthresh=0.02)
    ax.set_xticks(sorted(ticks), [ticks[k] for k in sorted(ticks)], rotation=35, fontsize=8, ha="right")
    ax.minorticks_off()
    ax.set_xlabel("inference latency (s of sim time; 0 = none)")
    ax.set_ylabel("success %")
    ax.set_ylim(-3, 105)
    ax.set_title(title or "success vs inference latency (Wilson 95 % CI)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_all(rows: list[dict], out_dir: Path, title: str = "") -> dict:
    """results.json, results.csv, results.md, results.png in ``out_dir`` (and latency.{md,json,png} when the
    rows hold a Latency dimension); returns the table."""
    table = build(rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(table, indent=1, sort_keys=True))
    (out_dir / "results.csv").write_text(csv_text(table))
    (out_dir / "results.md").write_text(markdown(table, title))
    if table:
        bar_chart(table, out_dir / "results.png", title)
    view = latency_view(rows)
    if view:
        (out_dir / "latency.json").write_text(json.dumps(view, indent=1, sort_keys=True))
        (out_dir / "latency.md").write_text(latency_markdown(view, title))
        latency_plot(view, out_dir / "latency.png", title)
    return table
