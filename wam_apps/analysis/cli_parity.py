"""``wam-policy parity SIM_BAG REAL_BAG``: a one-page sim-vs-real report (Markdown + PNGs).

(b) distributions side by side — per-camera image statistics, joint ranges and speeds, topic
rates, command period, obs→command latency and inference time — always; (a) open loop — the
real bag's observations replayed through a policy backend (``--backend TYPE`` with
``--backend-set key=value`` for its keys, as under ``wam_policy_node.backend.<TYPE>``), action
error against the commands the robot recorded — when ``--backend`` is given.

Writes ``--out`` (default ``runs/parity/<real bag name>``): ``parity.md``, ``parity.json`` and
``cameras.png``, ``joints.png``, ``timing.png``, ``open_loop.png``.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from wam_common import topics as T
from wam_common.config import ConfigError


def add_arguments(p) -> None:
    p.add_argument("sim_bag", help="bag recorded in simulation")
    p.add_argument("real_bag", help="bag recorded on the robot")
    p.add_argument("--out", default=None, help="output folder (default runs/parity/<real bag name>)")
    p.add_argument("--backend", default=None, help="policy backend for the open-loop check (e.g. lerobot, openpi, replay)")
    p.add_argument("--backend-set", action="append", default=[], metavar="KEY=VALUE",
                   help="backend parameter (YAML value), e.g. --backend-set path=outputs/act")
    p.add_argument("--observation-set", action="append", default=[], metavar="KEY=VALUE",
                   help="observation mapping, e.g. --observation-set resize=[224,224]")
    p.add_argument("--replan", type=int, default=0, help="infer every N steps (0: when the chunk runs out)")
    p.add_argument("--max-steps", type=int, default=0, help="open loop: at most N steps per episode (0: all)")


def _kv(items: list[str], flag: str) -> dict:
    import yaml

    out = {}
    for it in items:
        if "=" not in it:
            raise ConfigError(f"{flag} '{it}': expected KEY=VALUE")
        k, v = it.split("=", 1)
        try:
            out[k.strip()] = yaml.safe_load(v)
        except yaml.YAMLError:
            out[k.strip()] = v
    return out


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _fmt(v, nd=3):
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.{nd}g}"
    return str(v)


def plot_cameras(sim: dict, real: dict, path: Path) -> None:
    plt = _plt()
    cams = sorted(set(sim["cameras"]) | set(real["cameras"]))
    fig, axes = plt.subplots(2, max(1, len(cams)), figsize=(4 * max(1, len(cams)), 6), squeeze=False)
    for i, cam in enumerate(cams):
        ax = axes[0][i]
        for k, (name, st) in enumerate((("sim", sim), ("real", real))):
            c = st["cameras"].get(cam)
            if c and c["mean_rgb"]:
                ax.bar(np.arange(3) + 0.4 * k, c["mean_rgb"], 0.4, yerr=c["std_rgb"], capsize=2, label=name,
                       color=f"C{k}")
        ax.set_xticks(np.arange(3) + 0.2, ["R", "G", "B"])
        ax.set_title(f"{cam}: mean ± std per channel", fontsize=9)
        ax.legend(fontsize=8)
        ax = axes[1][i]
        for k, (name, st) in enumerate((("sim", sim), ("real", real))):
            c = st["cameras"].get(cam)
            if c:
                ax.plot(np.linspace(4, 252, 32), c["luma_hist"], label=name, color=f"C{k}")
        ax.set_title(f"{cam}: luma histogram", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_joints(sim: dict, real: dict, path: Path) -> None:
    plt = _plt()
    names = [n for n in sim["joints"] if n in real["joints"]] or list(sim["joints"]) or list(real["joints"])
    fig, axes = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    x = np.arange(len(names))
    for k, (label, st) in enumerate((("sim", sim), ("real", real))):
        lo = [st["joints"].get(n, {}).get("min", np.nan) for n in names]
        hi = [st["joints"].get(n, {}).get("max", np.nan) for n in names]
        mu = [st["joints"].get(n, {}).get("mean", np.nan) for n in names]
        axes[0].vlines(x + 0.15 * (2 * k - 1), lo, hi, color=f"C{k}", lw=4, label=f"{label} range")
        axes[0].plot(x + 0.15 * (2 * k - 1), mu, "o", color=f"C{k}", ms=3)
        sp = [st["joints"].get(n, {}).get("speed_mean") or 0 for n in names]
        axes[1].bar(x + 0.2 * (2 * k - 1), sp, 0.4, color=f"C{k}", label=label)
    axes[0].set_ylabel("position (rad, gripper 0..1)")
    axes[0].legend(fontsize=8)
    axes[1].set_ylabel("mean |speed| (1/s)")
    axes[1].set_xticks(x, names, rotation=60, fontsize=7)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_timing(sim: dict, real: dict, path: Path) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for k, (label, st) in enumerate((("sim", sim), ("real", real))):
        if st["_latencies"]:
            axes[0].hist(st["_latencies"], bins=40, alpha=0.6, color=f"C{k}", label=f"{label} (n={len(st['_latencies'])})")
        if st["_periods"]:
            axes[1].hist(st["_periods"], bins=40, alpha=0.6, color=f"C{k}", label=label)
    axes[0].set_xlabel("obs → command latency (ms)")
    axes[1].set_xlabel("command period (ms)")
    for ax in axes:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_open_loop(eps, path: Path) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    names = [f"{a[0]}_{j}" for a in T.ARMS for j in T.JOINTS_PER_ARM]
    errs = np.concatenate([np.array(e.errors) for e in eps]) if eps else np.zeros((0, 14))
    axes[0].bar(np.arange(14), errs.mean(0) if len(errs) else np.zeros(14))
    axes[0].set_xticks(np.arange(14), names, rotation=60, fontsize=7)
    axes[0].set_ylabel("mean |predicted − recorded|")
    if eps:
        e = eps[0]
        p, r = np.array(e.predicted), np.array(e.recorded)
        for j in (0, 1, 2, 6):
            axes[1].plot(r[:, j], color=f"C{j}", lw=1.2, label=f"{names[j]} recorded")
            axes[1].plot(p[:, j], color=f"C{j}", lw=0.8, ls="--")
        axes[1].set_xlabel(f"episode {e.episode} step (dashed: policy, open loop)")
        axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def report(sim: dict, real: dict, ol, backend: str | None, out: Path) -> str:
    lines = ["# Sim–real parity", "", f"- sim bag: `{sim['bag']}` ({sim['episodes']} episodes, {sim['successes']} successes)",
             f"- real bag: `{real['bag']}` ({real['episodes']} episodes, {real['successes']} successes)", ""]
    lines += ["## (a) Open loop: real observations through the policy", ""]
    if ol is None:
        lines += ["Not run (give `--backend TYPE`).", ""]
    elif not ol:
        lines += [f"Backend `{backend}`: no step could be replayed (no episode with joint states and commands).", ""]
    else:
        lines += [f"Backend `{backend}`; error of each step's action against the command recorded on the robot.", "",
                  "| episode | steps | inferences | joint MAE (rad) | joint RMSE (rad) | joint max (rad) | gripper MAE |",
                  "|---|---|---|---|---|---|---|"]
        for e in ol:
            s = e.summary()
            lines.append(f"| {s['episode']} | {s['steps']} | {s['inferences']} | {_fmt(s['joint_mae_rad'])} | "
                         f"{_fmt(s['joint_rmse_rad'])} | {_fmt(s['joint_max_rad'])} | {_fmt(s['gripper_mae'])} |")
        lines += ["", "![open loop](open_loop.png)", ""]
    lines += ["## (b) Distributions", "", "### Cameras", "",
              "| camera | bag | frames | shape | rate Hz | mean RGB | std RGB | frozen |", "|---|---|---|---|---|---|---|---|"]
    for cam in sorted(set(sim["cameras"]) | set(real["cameras"])):
        for name, st in (("sim", sim), ("real", real)):
            c = st["cameras"].get(cam)
            if not c:
                lines.append(f"| {cam} | {name} | 0 | — | — | — | — | — |")
                continue
            rgb = "/".join(f"{v:.0f}" for v in c["mean_rgb"]) if c["mean_rgb"] else "—"
            sd = "/".join(f"{v:.0f}" for v in c["std_rgb"]) if c["std_rgb"] else "—"
            lines.append(f"| {cam} | {name} | {c['frames']} | {c['shape']} | {_fmt(c['rate_hz'])} | {rgb} | {sd} | "
                         f"{100 * c['frozen_fraction']:.0f}% |")
    lines += ["", "![cameras](cameras.png)", "", "### Joints", "",
              "| joint | sim range | real range | sim mean speed | real mean speed |", "|---|---|---|---|---|"]
    for n in sorted(set(sim["joints"]) | set(real["joints"]), key=lambda x: list(real["joints"]).index(x)
                    if x in real["joints"] else 99):
        s, r = sim["joints"].get(n, {}), real["joints"].get(n, {})
        lines.append(f"| {n} | {_fmt(s.get('min'))} … {_fmt(s.get('max'))} | {_fmt(r.get('min'))} … {_fmt(r.get('max'))} | "
                     f"{_fmt(s.get('speed_mean'))} | {_fmt(r.get('speed_mean'))} |")
    lines += ["", "![joints](joints.png)", "", "### Timing", "",
              "| | sim p50 | sim p99 | real p50 | real p99 |", "|---|---|---|---|---|"]
    for key, label in (("command_period_ms", "command period (ms)"), ("latency_ms", "obs→command latency (ms)"),
                       ("infer_ms", "inference (ms)")):
        s, r = sim["timing"][key], real["timing"][key]
        lines.append(f"| {label} | {_fmt(s.get('p50'))} | {_fmt(s.get('p99'))} | {_fmt(r.get('p50'))} | {_fmt(r.get('p99'))} |")
    lines += ["", "| topic | sim Hz | real Hz |", "|---|---|---|"]
    for t in sorted(set(sim["rates_hz"]) | set(real["rates_hz"])):
        lines.append(f"| `{t}` | {_fmt(sim['rates_hz'].get(t))} | {_fmt(real['rates_hz'].get(t))} |")
    lines += ["", "![timing](timing.png)", ""]
    return "\n".join(lines)


def run(args) -> int:
    from wam_common.bag.reader import BagReadError
    from wam_apps.analysis.parity import open_loop, stream_stats

    for b in (args.sim_bag, args.real_bag):
        if not Path(b).exists():
            raise ConfigError(f"bag '{b}' does not exist")
    out = Path(args.out) if args.out else Path("runs/parity") / Path(args.real_bag).resolve().name
    out.mkdir(parents=True, exist_ok=True)
    try:
        sim, real = stream_stats(args.sim_bag), stream_stats(args.real_bag)
        ol = None
        if args.backend:
            ol = open_loop(args.real_bag, args.backend, _kv(args.backend_set, "--backend-set"), replan=args.replan,
                           max_steps=args.max_steps, observation=_kv(args.observation_set, "--observation-set") or None)
    except BagReadError as exc:
        print(f"wam-policy parity: {exc}", file=sys.stderr)
        return 1
    plot_cameras(sim, real, out / "cameras.png")
    plot_joints(sim, real, out / "joints.png")
    plot_timing(sim, real, out / "timing.png")
    if ol:
        plot_open_loop(ol, out / "open_loop.png")
    md = report(sim, real, ol, args.backend, out)
    (out / "parity.md").write_text(md + "\n")
    strip = lambda d: {k: v for k, v in d.items() if not k.startswith("_")}  # noqa: E731
    (out / "parity.json").write_text(json.dumps({"sim": strip(sim), "real": strip(real), "backend": args.backend,
                                                 "open_loop": [e.summary() for e in ol] if ol is not None else None},
                                                indent=1, default=float))
    print(md)
    print(f"\nreport: {out / 'parity.md'}")
    return 0
