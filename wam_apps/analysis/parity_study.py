"""A parity study from two eval runs: does the sim rank policies like the robot, and what will the
robot score? (``wam-policy parity-study SIM_RUN REAL_RUN``; statistics in ``parity_stats``.)

A run is an ``eval`` output folder (or its ``episodes.jsonl``). Episodes pair by their id
``(policy, configuration, task, seed)``: the same episode spec run in both worlds. Every real
episode needs its sim twin; sim episodes without a real twin are the extra (unpaired) sim
episodes prediction-powered inference draws on.
"""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from wam_common.config import ConfigError
from wam_apps.analysis import parity_stats as ps
from wam_apps.evaluation.results import ROWS, ResultStore, episode_key


def load_run(path: str | Path, side: str) -> tuple[list[dict], dict]:
    """Rows and manifest of an eval run (a folder with episodes.jsonl, or the file itself)."""
    p = Path(path)
    folder = p.parent if p.is_file() else p
    if not (folder / ROWS).is_file():
        raise ConfigError(f"{side} run {path}: no {ROWS} there (an `wam-policy eval --out` folder)")
    rows = ResultStore(folder).rows()
    if not rows:
        raise ConfigError(f"{side} run {path}: {ROWS} holds no episodes")
    man = {}
    if (folder / "manifest.json").is_file():
        try:
            man = json.loads((folder / "manifest.json").read_text())
        except ValueError:
            man = {}
    return rows, man


def load_runs(paths: list, side: str) -> tuple[list[dict], dict]:
    """The rows of several eval runs of one side (e.g. the expert family's run and a camera policy's run of
    the same world), merged: an episode id found in two of them is a ConfigError naming it and both runs.
    The manifest returned is the first run's."""
    rows, man, seen = [], {}, {}
    for i, path in enumerate(paths):
        r, m = load_run(path, side)
        man = man if i else m
        for row in r:
            k = episode_key(row)
            if k in seen:
                raise ConfigError(f"{side} episode {_eid(k)} is in two runs: {seen[k]} and {path}")
            seen[k] = path
        rows += r
    return rows, man


def _eid(key: tuple) -> str:
    policy, conf, task, seed = key
    return f"policy={policy} configuration={conf} task={task} seed={seed}"


def pair(sim_rows: list[dict], real_rows: list[dict]) -> dict:
    """Match episodes by id; ConfigError naming the first problem (different tasks, a real episode
    with no sim twin, a run mixing worlds)."""
    for side, rows in (("sim", sim_rows), ("real", real_rows)):
        worlds = sorted({r.get("world", "nominal") for r in rows})
        if len(worlds) > 1:
            raise ConfigError(f"{side} run mixes worlds {worlds}: one run per world")
    s_tasks = sorted({r["task"] for r in sim_rows})
    r_tasks = sorted({r["task"] for r in real_rows})
    if s_tasks != r_tasks:
        raise ConfigError(f"the runs are from different tasks: sim {s_tasks}, real {r_tasks}")
    sim = {episode_key(r): r for r in sim_rows}
    real = {episode_key(r): r for r in real_rows}
    missing = sorted(k for k in real if k not in sim)
    if missing:
        raise ConfigError(f"episode {_eid(missing[0])} is in the real run but missing from the sim run "
                          f"({len(missing)} real episode(s) without a sim twin)")
    policies = sorted({k[0] for k in real})
    extra = sorted({k[0] for k in sim} - set(policies))
    if extra:
        raise ConfigError(f"policy '{extra[0]}' has sim episodes but no real episode (episode "
                          f"{_eid(min(k for k in sim if k[0] == extra[0]))} has no real twin)")
    out: dict[str, dict] = {}
    for pol in policies:
        paired = sorted(k for k in real if k[0] == pol)
        unpaired = sorted(k for k in sim if k[0] == pol and k not in real)
        out[pol] = {"paired": [(int(sim[k]["success"]), int(real[k]["success"])) for k in paired],
                    "paired_ids": [_eid(k) for k in paired],
                    "unpaired_sim": [int(sim[k]["success"]) for k in unpaired]}
    return out


def study(pairs: dict, n_real: int = 10, subsamples: int = 1000, n_boot: int = 2000, seed: int = 0,
          alpha: float = 0.05) -> dict:
    """Per policy: sim vs real success on the paired episodes (Wilson), and the sim's over all its
    episodes; PPI / PPI++ / real-only at ``n_real`` paired real
    episodes (the first n by id; sim: every other sim episode of the policy) and their coverage
    of the full real pool's rate over ``subsamples`` random n-subsets; Pearson r and MMRV with
    bootstrap intervals over the policies' paired episodes."""
    rng = np.random.default_rng(seed)
    pols = {}
    sims, reals = [], []
    for pol, d in pairs.items():
        pr = np.array(d["paired"], dtype=float).reshape(-1, 2)
        f_all = np.concatenate([pr[:, 0], np.array(d["unpaired_sim"], dtype=float)])
        f, y = pr[:, 0], pr[:, 1]
        # the ranking judges compare the worlds on the same episode specs: paired episodes only
        sims.append(f)
        reals.append(y)
        k_s, k_r, k_a = int(f.sum()), int(y.sum()), int(f_all.sum())
        row = {"sim": {"successes": k_s, "episodes": int(f.size), "rate": k_s / f.size,
                       "wilson": ps.wilson(k_s, f.size, alpha)},
               "real": {"successes": k_r, "episodes": int(y.size), "rate": k_r / y.size,
                        "wilson": ps.wilson(k_r, y.size, alpha)},
               "sim_all": {"successes": k_a, "episodes": int(f_all.size), "rate": k_a / f_all.size,
                           "wilson": ps.wilson(k_a, f_all.size, alpha)},
               "paired_episodes": int(y.size), "unpaired_sim_episodes": len(d["unpaired_sim"]),
               "paired_agreement": float(np.mean(pr[:, 0] == pr[:, 1]))}
        n = min(n_real, y.size)
        if n >= 2 and f_all.size - n >= 2:
            idx = np.arange(n)
            row["at_n"] = _estimates(pr, d["unpaired_sim"], idx, alpha)
            row["at_n"]["agreement"] = ps.agreement(_rest_sim(pr, d["unpaired_sim"], idx), pr[idx, 0], pr[idx, 1],
                                                    alpha)
            row["coverage"] = _coverage(pr, d["unpaired_sim"], n, subsamples, rng, alpha) if y.size > n else None
        else:
            row["at_n"] = None
            row["coverage"] = None
            row["note"] = f"too few episodes for PPI at n = {n_real} (paired {y.size}, sim {f_all.size})"
        pols[pol] = row
    out = {"policies": pols, "n_real": n_real, "alpha": alpha, "subsamples": subsamples, "seed": seed}
    if len(pols) >= 2:
        b = ps.bootstrap_parity(sims, reals, n_boot=n_boot, seed=seed, alpha=alpha)
        out["pearson"], out["mmrv"] = b["pearson"].as_dict(), b["mmrv"].as_dict()
        out["bootstrap"] = n_boot
    else:
        out["pearson"] = out["mmrv"] = None
    return out


def _rest_sim(pr: np.ndarray, unpaired: list, idx: np.ndarray) -> np.ndarray:
    """The sim outcomes of every episode not among the n paired ones used (disjoint from them)."""
    keep = np.ones(len(pr), bool)
    keep[idx] = False
    return np.concatenate([pr[keep, 0], np.asarray(unpaired, float)])


def _estimates(pr: np.ndarray, unpaired: list, idx: np.ndarray, alpha: float) -> dict:
    rest = _rest_sim(pr, unpaired, idx)
    f, y = pr[idx, 0], pr[idx, 1]
    k = int(y.sum())
    lo, hi = ps.wilson(k, y.size, alpha)
    return {"n": int(idx.size), "N": int(rest.size),
            "ppi": ps.ppi_mean(rest, f, y, alpha).as_dict(),
            "ppi_tuned": ps.ppi_mean(rest, f, y, alpha, lam="tuned").as_dict(),
            "real_only": ps.classical_mean(y, alpha).as_dict(),
            "real_only_wilson": {"estimate": k / y.size, "lo": lo, "hi": hi, "width": hi - lo}}


def _coverage(pr: np.ndarray, unpaired: list, n: int, reps: int, rng: np.random.Generator, alpha: float) -> dict:
    truth = float(pr[:, 1].mean())
    hit = defaultdict(int)
    width = defaultdict(float)
    for _ in range(reps):
        idx = rng.choice(len(pr), n, replace=False)
        e = _estimates(pr, unpaired, idx, alpha)
        for m in ("ppi", "ppi_tuned", "real_only", "real_only_wilson"):
            hit[m] += int(e[m]["lo"] <= truth <= e[m]["hi"])
            width[m] += e[m]["hi"] - e[m]["lo"]
    return {"truth": truth, "n": n, "pool": int(len(pr)), "reps": reps,
            **{m: {"coverage": hit[m] / reps, "mean_width": width[m] / reps} for m in hit}}


# --------------------------------------------------------------------------- report
def _pct(x) -> str:
    return "—" if x is None else f"{100 * x:.0f} %"


def _ci(lo, hi) -> str:
    return f"[{100 * lo:.0f}, {100 * hi:.0f}]"


def markdown(res: dict, title: str = "Parity study") -> str:
    lines = [f"# {title}", ""]
    if res.get("pearson"):
        p, m = res["pearson"], res["mmrv"]
        lines += [f"Over {len(res['policies'])} policies: **Pearson r = {p['estimate']:.3f}** "
                  f"(bootstrap 95 % [{_f(p['lo'])}, {_f(p['hi'])}]), **MMRV = {m['estimate']:.3f}** "
                  f"([{_f(m['lo'])}, {_f(m['hi'])}]; 0 = every pair ranked as on the real side), on the paired "
                  f"episodes; {res['bootstrap']} bootstrap replicates (paired episodes resampled per policy, seed "
                  f"{res['seed']}).", ""]
    lines += ["## Success per policy (Wilson 95 %)", "",
              "sim and real: the paired episodes (the same specs in both worlds; what r, MMRV and the plot use); "
              "sim, all: every sim episode of the policy (paired + unpaired).", "",
              "| policy | sim | real | episode agreement | sim, all |", "|---|---|---|---|---|"]
    for pol, r in res["policies"].items():
        s, y, a = r["sim"], r["real"], r["sim_all"]
        lines.append(f"| {pol} | {_pct(s['rate'])} {_ci(*s['wilson'])} ({s['successes']}/{s['episodes']}) | "
                     f"{_pct(y['rate'])} {_ci(*y['wilson'])} ({y['successes']}/{y['episodes']}) | "
                     f"{_pct(r['paired_agreement'])} | {_pct(a['rate'])} {_ci(*a['wilson'])} "
                     f"({a['successes']}/{a['episodes']}) |")
    n = res["n_real"]
    lines += ["", f"## Real success from n = {n} paired real episodes + the other sim episodes", "",
              "PPI = mean(sim, N) + mean(real − sim, n) with its CLT interval (small-sample adjusted variances); "
              "PPI++ = the power-tuned λ; real-only = the n real episodes alone (Agresti–Coull; Wilson beside). "
              "Verdict: `agree` = rectifier interval holds 0 and PPI is narrower; `biased` = the rectifier "
              "excludes 0 (the sim mis-predicts this policy); `uninformative` = PPI no narrower.", "",
              "| policy | real (all) | PPI | PPI++ (λ) | real-only | real-only Wilson | rectifier | verdict |",
              "|---|---|---|---|---|---|---|---|"]
    for pol, r in res["policies"].items():
        a = r.get("at_n")
        if not a:
            lines.append(f"| {pol} | {_pct(r['real']['rate'])} | {r.get('note', '—')} | | | | | |")
            continue
        rect = a["agreement"]["rectifier"]
        lines.append(f"| {pol} | {_pct(r['real']['rate'])} | {_est(a['ppi'])} | {_est(a['ppi_tuned'])} "
                     f"(λ={a['ppi_tuned']['lam']:.2f}) | {_est(a['real_only'])} | {_est(a['real_only_wilson'])} | "
                     f"{rect['estimate']:+.2f} [{rect['lo']:+.2f}, {rect['hi']:+.2f}] | {a['agreement']['verdict']} |")
    cov = {p: r["coverage"] for p, r in res["policies"].items() if r.get("coverage")}
    if cov:
        any_c = next(iter(cov.values()))
        lines += ["", f"## Coverage over {any_c['reps']} random subsets of n = {n} paired episodes", "",
                  "Truth = the policy's real success over all its paired real episodes; the sim side of each "
                  "subset is every other sim episode of the policy.", "",
                  "| policy | truth | PPI cover / width | PPI++ cover / width | real-only cover / width | Wilson cover / width |",
                  "|---|---|---|---|---|---|"]
        tot = defaultdict(list)
        for pol, c in cov.items():
            cells = []
            for m in ("ppi", "ppi_tuned", "real_only", "real_only_wilson"):
                cells.append(f"{_pct(c[m]['coverage'])} / {c[m]['mean_width']:.2f}")
                tot[m].append((c[m]["coverage"], c[m]["mean_width"]))
            lines.append(f"| {pol} | {_pct(c['truth'])} | " + " | ".join(cells) + " |")
        lines.append("| **mean** | | " + " | ".join(
            f"**{_pct(np.mean([c for c, _ in tot[m]]))} / {np.mean([w for _, w in tot[m]]):.2f}**"
            for m in ("ppi", "ppi_tuned", "real_only", "real_only_wilson")) + " |")
    return "\n".join(lines) + "\n"


def _f(x) -> str:
    return "—" if x is None else f"{x:.3f}"


def _est(e: dict) -> str:
    return f"{100 * e['estimate']:.0f} % {_ci(e['lo'], e['hi'])}"


def scatter(res: dict, path: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 5))
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="y = x")
    for i, (pol, r) in enumerate(res["policies"].items()):
        s, y = r["sim"], r["real"]
        ax.errorbar(s["rate"], y["rate"], xerr=[[s["rate"] - s["wilson"][0]], [s["wilson"][1] - s["rate"]]],
                    yerr=[[y["rate"] - y["wilson"][0]], [y["wilson"][1] - y["rate"]]], fmt="o", capsize=3,
                    color=f"C{i % 10}", label=pol)
    ax.set_xlim(-0.03, 1.03)
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("sim success")
    ax.set_ylabel("real success")
    sub = ""
    if res.get("pearson"):
        sub = f"r = {res['pearson']['estimate']:.2f}, MMRV = {res['mmrv']['estimate']:.3f}"
    ax.set_title((title + "\n" if title else "") + sub, fontsize=10)
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(res: dict, out: Path, title: str = "Parity study") -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "parity_study.md").write_text(markdown(res, title) + "\n![sim vs real](parity_study.png)\n")
    (out / "parity_study.json").write_text(json.dumps(res, indent=1, default=float))
    scatter(res, out / "parity_study.png", title)
