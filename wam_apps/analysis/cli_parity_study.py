"""``wam-policy parity-study SIM_RUN REAL_RUN``: does the sim rank policies like the robot, and what
will the robot score? From two ``eval`` runs of the same episode specs (``--world`` for the sim
stand-in of the robot, or ``eval --robot`` on the robot itself), paired by episode id:

- per policy, sim vs real success with Wilson 95 % intervals;
- Pearson r and MMRV (SIMPLER) over the policies, with seeded bootstrap 95 % intervals;
- a scatter plot (sim vs real success, one point per policy, y = x);
- the prediction-powered estimate of each policy's real success from ``--n-real`` paired real
  episodes + the other sim episodes, next to the real-only estimate from those n alone, a verdict
  saying whether the worlds agree, and each interval's coverage over ``--subsamples`` random n-subsets.

Writes ``--out`` (default ``runs/parity_study/<real run name>``): ``parity_study.md``, ``.json``, ``.png``.
"""
from __future__ import annotations

import sys
from pathlib import Path

from wam_common.config import ConfigError


def add_arguments(p) -> None:
    p.add_argument("sim_run", help="eval output folder (or its episodes.jsonl) of the sim world")
    p.add_argument("real_run", help="eval output folder of the real side: the robot, or a stand-in world (--world cousin)")
    p.add_argument("--sim-run", dest="sim_run_extra", action="append", default=[], metavar="RUN",
                   help="another eval run of the sim world, merged with SIM_RUN (e.g. a camera policy's run beside "
                        "the expert family's; repeatable; an episode in two runs is an error)")
    p.add_argument("--real-run", dest="real_run_extra", action="append", default=[], metavar="RUN",
                   help="another eval run of the real side, merged with REAL_RUN (repeatable)")
    p.add_argument("--out", default=None, help="output folder (default runs/parity_study/<real run name>)")
    p.add_argument("--n-real", type=int, default=10, help="paired real episodes per policy for PPI vs real-only (default 10)")
    p.add_argument("--subsamples", type=int, default=1000, help="random n-subsets for the coverage check (0: none)")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap replicates for Pearson / MMRV intervals")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap and the subsets")
    p.add_argument("--title", default=None, help="report title")


def run(args) -> int:
    from wam_apps.analysis.parity_study import load_runs, markdown, pair, study, write

    if args.n_real < 2:
        raise ConfigError(f"--n-real must be ≥ 2, got {args.n_real}")
    if args.subsamples < 0 or args.bootstrap < 1:
        raise ConfigError("--subsamples must be ≥ 0 and --bootstrap ≥ 1")
    sim_runs, real_runs = [args.sim_run, *args.sim_run_extra], [args.real_run, *args.real_run_extra]
    sim_rows, sim_man = load_runs(sim_runs, "sim")
    real_rows, real_man = load_runs(real_runs, "real")
    pairs = pair(sim_rows, real_rows)
    res = study(pairs, n_real=args.n_real, subsamples=args.subsamples, n_boot=args.bootstrap, seed=args.seed)
    worlds = {"sim": sorted({r.get("world", "nominal") for r in sim_rows})[0],
              "real": sorted({r.get("world", "nominal") for r in real_rows})[0]}
    res["worlds"] = worlds
    res["runs"] = {"sim": [str(r) for r in sim_runs], "real": [str(r) for r in real_runs]}
    res["command"] = " ".join(["wam-policy", "parity-study"] + sys.argv[2:]) if sys.argv[1:2] == ["parity-study"] else None
    title = args.title or f"Parity study: {worlds['sim']} (sim) vs {worlds['real']} (real)"
    out = Path(args.out) if args.out else Path("runs/parity_study") / Path(args.real_run).resolve().name
    write(res, out, title)
    print(markdown(res, title))
    print(f"report: {out / 'parity_study.md'} (.json .png)")
    return 0
