"""The study's robustness table with Wilson 95 % intervals: Markdown, CSV, JSON and a PNG chart.

Rows are policies; columns Clean, then the study's dimensions (Camera, Robot, Language, Light,
Background, Noise, Layout) — each the success rate over all its levels and seeds — and Total
(all perturbed episodes, as in LIBERO-Plus). Next to success: mean inference ms and stalls
(command gaps > 1.5 control periods of the sim's clock), which ``--clock realtime`` makes meaningful.
"""
from __future__ import annotations

import csv
import io
import json
import math
from collections import defaultdict
from pathlib import Path

from wam_apps.evaluation.suites import CLEAN, DIMENSIONS

COLUMNS = (CLEAN,) + DIMENSIONS + ("Total",)


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


def write_all(rows: list[dict], out_dir: Path, title: str = "") -> dict:
    """results.json, results.csv, results.md, results.png in ``out_dir``; returns the table."""
    table = build(rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(table, indent=1, sort_keys=True))
    (out_dir / "results.csv").write_text(csv_text(table))
    (out_dir / "results.md").write_text(markdown(table, title))
    if table:
        bar_chart(table, out_dir / "results.png", title)
    return table
