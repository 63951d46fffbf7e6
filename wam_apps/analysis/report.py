"""Write an analysis: per-episode table, the study table (via :mod:`wam_apps.evaluation.table`),
JSON/CSV/Markdown and PNG plots (matplotlib Agg)."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from wam_common import topics as T
from wam_apps.analysis.episodes import Episode

EPISODE_COLUMNS = ["bag", "episode", "task", "seed", "policy", "dimension", "level", "outcome", "steps",
                   "duration_s", "commands", "stalls", "cmd_period_ms_p50", "cmd_period_ms_p99",
                   "latency_ms_p50", "latency_ms_p99", "policy_latency_ms_p50", "sim_latency_ms_p50", "infer_ms_mean",
                   "inferences",
                   "hold_onsets", "diag_warnings", "jerk_rms", "step_mean", "boundary_step_mean", "boundary_ratio"]


def _flat(ep: Episode) -> dict:
    s = ep.summary()
    return {**{k: s.get(k) for k in EPISODE_COLUMNS if k in s},
            "cmd_period_ms_p50": ep.command_period_ms.get("p50"), "cmd_period_ms_p99": ep.command_period_ms.get("p99"),
            "latency_ms_p50": ep.latency_ms.get("p50"), "latency_ms_p99": ep.latency_ms.get("p99"),
            "policy_latency_ms_p50": ep.policy_latency_ms.get("p50"),
            "sim_latency_ms_p50": ep.sim_latency_ms.get("p50"), "infer_ms_mean": ep.infer_ms.get("mean")}


def _fmt(v) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def episodes_markdown(eps: list[Episode]) -> str:
    cols = ["bag", "episode", "dimension", "level", "outcome", "steps", "duration_s", "cmd_period_ms_p50",
            "latency_ms_p50", "latency_ms_p99", "policy_latency_ms_p50", "infer_ms_mean", "hold_onsets", "jerk_rms",
            "boundary_ratio"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for ep in eps:
        f = _flat(ep)
        lines.append("| " + " | ".join(_fmt(f.get(c)) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def episodes_csv(eps: list[Episode]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=EPISODE_COLUMNS)
    w.writeheader()
    for ep in eps:
        w.writerow({k: _flat(ep).get(k) for k in EPISODE_COLUMNS})
    return buf.getvalue()


def success_table(eps: list[Episode]) -> dict:
    """policy → column (Clean, Camera … Layout, Total) → cell, from complete episodes only."""
    from wam_apps.evaluation import table

    return table.build([ep.table_row() for ep in eps if ep.success is not None])


def levels_markdown(table: dict) -> str:
    """Per policy, dimension × level: successes/episodes (rate %)."""
    lines = []
    for policy, t in table.items():
        levels = t.get("levels") or {}
        lv = sorted({int(k) for d in levels.values() for k in d})
        if not lv:
            continue
        lines += [f"#### {policy}: success by dimension × level", "",
                  "| dimension | " + " | ".join(f"level {v}" for v in lv) + " |", "|---|" + "---|" * len(lv)]
        for dim in sorted(levels, key=lambda d: (d != "Clean", d)):
            cells = []
            for v in lv:
                c = levels[dim].get(v) or levels[dim].get(str(v))
                cells.append("—" if not c else f"{c['successes']}/{c['episodes']} ({100 * (c['rate'] or 0):.0f}%)")
            lines.append(f"| {dim} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot_levels(table: dict, path: Path) -> bool:
    """Success rate against level, one line per dimension (first policy); False when nothing to plot."""
    for policy, t in table.items():
        levels = {d: v for d, v in (t.get("levels") or {}).items() if d != "Clean"}
        if not levels:
            continue
        plt = _plt()
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for dim, by in sorted(levels.items()):
            xs = sorted(int(k) for k in by)
            ys = [100 * ((by.get(x) or by.get(str(x)))["rate"] or 0) for x in xs]
            ax.plot(xs, ys, "o-", label=dim)
        ax.set_xlabel("level")
        ax.set_ylabel("success %")
        ax.set_ylim(-5, 105)
        ax.set_title(f"{policy}: success by level")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return True
    return False


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_hist(values_by_label: dict[str, list[float]], path: Path, xlabel: str, title: str) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    allv = [v for vs in values_by_label.values() for v in vs]
    if allv:
        hi = float(np.percentile(allv, 99.5)) if len(allv) > 10 else max(allv)
        bins = np.linspace(0, max(hi, 1e-3) * 1.05, 40)
        for label, vs in values_by_label.items():
            if vs:
                ax.hist(np.clip(vs, 0, bins[-1]), bins=bins, alpha=0.6, label=f"{label} (n={len(vs)})")
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_joint_traces(ep: Episode, path: Path) -> None:
    plt = _plt()
    fig, axes = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    cmds = np.stack(ep._cmds) if ep._cmds and all(c.shape == (T.STATE_DIM,) for c in ep._cmds) else None
    states = np.stack(ep._states) if ep._states else None
    for side, ax in enumerate(axes):
        sl = slice(7 * side, 7 * side + 7)
        for j in range(7):
            color = f"C{j}"
            if cmds is not None:
                ax.plot(np.arange(len(cmds)), cmds[:, sl][:, j], color=color, lw=1.2, label=T.JOINTS_PER_ARM[j])
            if states is not None and states.shape[1] == 14:
                ax.plot(np.arange(len(states)), states[:, sl][:, j], color=color, lw=0.8, ls="--")
        for k in ep._boundaries:
            ax.axvline(k, color="0.8", lw=0.5, zorder=0)
        ax.set_ylabel(f"{T.ARMS[side]} (rad, gripper 0..1)")
    axes[0].legend(fontsize=7, ncol=7, loc="upper center")
    axes[1].set_xlabel("step (command k answers the joint states of step k)")
    fig.suptitle(f"{ep.bag} episode {ep.episode}: {ep.outcome} — command (solid), state (dashed), chunk boundaries (grey)",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(eps: list[Episode], out: Path, title: str = "wam-policy analysis", traces: int = 4) -> dict:
    """Everything into ``out``; returns the summary dict (also ``summary.json``)."""
    from wam_apps.evaluation import table as tbl

    out.mkdir(parents=True, exist_ok=True)
    (out / "episodes.json").write_text(json.dumps([ep.summary() for ep in eps], indent=1, default=str))
    (out / "episodes.csv").write_text(episodes_csv(eps))
    (out / "episodes.md").write_text(episodes_markdown(eps))
    table = success_table(eps)
    (out / "results.json").write_text(json.dumps(table, indent=1, sort_keys=True))
    (out / "results.csv").write_text(tbl.csv_text(table))
    table_md = tbl.markdown(table, "Success by perturbation") + "\n" + levels_markdown(table)
    (out / "results.md").write_text(table_md)
    plots = []
    if table:
        tbl.bar_chart(table, out / "dimensions.png", "success by perturbation dimension")
        plots.append("dimensions.png")
        if plot_levels(table, out / "levels.png"):
            plots.append("levels.png")
    by_dim: dict[str, list[float]] = {}
    periods: dict[str, list[float]] = {}
    for ep in eps:
        by_dim.setdefault(ep.dimension, []).extend(ep._latencies)
        periods.setdefault(ep.dimension, []).extend(ep._periods)
    plot_hist(by_dim, out / "latency_hist.png", "obs → command latency (ms, wall)", "observation to command latency")
    plot_hist(periods, out / "command_period_hist.png", "command period (ms, wall)", "time between commands")
    plots += ["latency_hist.png", "command_period_hist.png"]
    for ep in eps[:max(0, traces)]:
        name = f"joints_{ep.bag}_ep{ep.episode}.png".replace("/", "_")
        plot_joint_traces(ep, out / name)
        plots.append(name)
    complete = [ep for ep in eps if ep.success is not None]
    all_lat = [v for ep in eps for v in ep._latencies]
    summary = {
        "episodes": len(eps), "complete": len(complete), "successes": sum(1 for e in complete if e.success),
        "success_rate": (sum(1 for e in complete if e.success) / len(complete)) if complete else None,
        "latency_ms": _pct(all_lat), "infer_ms": _pct([v for ep in eps for v in ep._infer]),
        "stalls": sum(ep.stalls or 0 for ep in eps), "hold_onsets": sum(ep.hold_onsets for ep in eps),
        "plots": plots,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    md = [f"# {title}", "", f"{summary['episodes']} episodes ({summary['complete']} complete), "
          f"{summary['successes']} successes.", "", "## Per episode", "", episodes_markdown(eps), "", table_md, ""]
    md += [f"![{p}]({p})" for p in plots]
    (out / "report.md").write_text("\n".join(md) + "\n")
    return summary


def _pct(vals) -> dict:
    from wam_apps.analysis.episodes import _stats

    return _stats(vals)
