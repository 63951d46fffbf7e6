"""Parity-study statistics against hand-computed cases: Wilson, Pearson and MMRV (SIMPLER's
definition, ties included) on known tables, the seeded bootstrap, prediction-powered inference on
a hand-worked example and its coverage over repeated synthetic draws with a known truth, the
disagreement diagnostic, and the pairing of two eval runs (bad input names the episode)."""
from __future__ import annotations

import numpy as np
import pytest

from wam_apps.analysis import parity_stats as ps
from wam_apps.analysis.parity_study import pair, study
from wam_common.config import ConfigError

pytestmark = pytest.mark.unit


def test_wilson_matches_the_textbook_values():
    lo, hi = ps.wilson(8, 10)
    assert (round(lo, 4), round(hi, 4)) == (0.4902, 0.9433)
    assert ps.wilson(0, 0) == (0.0, 1.0)
    lo, hi = ps.wilson(10, 10)
    assert hi == 1.0 and round(lo, 4) == 0.7225


def test_pearson_and_mmrv_on_a_hand_computed_table():
    sim, real = [0.1, 0.5, 0.3], [0.2, 0.4, 0.6]
    # centred: sim (-.2, .2, 0), real (-.2, 0, .2): r = .04 / sqrt(.08 * .08) = 0.5
    assert ps.pearson(sim, real) == pytest.approx(0.5, abs=1e-9)
    # policy 1 and 2 swap places: each one's max violation is |0.4 - 0.6| = 0.2, policy 0's is 0
    assert ps.mmrv(sim, real) == pytest.approx((0 + 0.2 + 0.2) / 3)


def test_mmrv_orderings_and_ties_follow_simpler():
    assert ps.mmrv([0.1, 0.2, 0.3], [0.15, 0.5, 0.9]) == 0.0  # same order, other values
    # reversed: max violations 0.2, 0.1, 0.2
    assert ps.mmrv([0.1, 0.2, 0.3], [0.3, 0.2, 0.1]) == pytest.approx(0.5 / 3)
    # tied in sim, apart in real: SIMPLER's (S_i > S_j) != (R_i > R_j) counts it for the one ahead in real
    assert ps.mmrv([0.5, 0.5], [0.2, 0.8]) == pytest.approx(0.3)
    assert ps.pearson([0.2, 0.4], [0.5, 0.7]) == 1.0
    assert np.isnan(ps.pearson([0.5, 0.5], [0.2, 0.8]))
    with pytest.raises(ValueError, match="same 1-D shape"):
        ps.mmrv([0.1, 0.2], [0.1])


def test_bootstrap_is_seeded_and_brackets_the_estimate():
    rng = np.random.default_rng(1)
    sims = [rng.random(30) < p for p in (0.1, 0.4, 0.6, 0.9)]
    reals = [rng.random(30) < p for p in (0.15, 0.35, 0.7, 0.85)]
    a = ps.bootstrap_parity(sims, reals, n_boot=300, seed=3)
    b = ps.bootstrap_parity(sims, reals, n_boot=300, seed=3)
    assert a == b
    s = [x.mean() for x in sims]
    r = [x.mean() for x in reals]
    assert a["pearson"].estimate == pytest.approx(ps.pearson(s, r))
    assert a["mmrv"].estimate == pytest.approx(ps.mmrv(s, r))
    assert a["pearson"].lo <= a["pearson"].estimate <= a["pearson"].hi
    assert a["mmrv"].lo <= a["mmrv"].estimate <= a["mmrv"].hi
    # all-or-nothing policies leave nothing to resample: the interval is the point
    c = ps.bootstrap_parity([np.zeros(10), np.ones(10)], [np.zeros(10), np.ones(10)], n_boot=50)
    assert (c["mmrv"].lo, c["mmrv"].hi) == (0.0, 0.0) and c["pearson"].estimate == 1.0


def test_ppi_on_a_hand_worked_example():
    unpaired = [1, 1, 0, 1, 1, 0, 1, 1]          # mean 0.75, var (ddof 1) 0.2142857
    f, y = [1, 0, 1, 1], [1, 0, 0, 1]            # rectifier (0, 0, -1, 0): mean -0.25, var 0.25
    e = ps.ppi_mean(unpaired, f, y, small_sample=False)
    assert e.estimate == pytest.approx(0.5)
    half = 1.959964 * np.sqrt((0.75 * 0.25 * 8 / 7) / 8 + 0.25 / 4)
    assert (e.lo, e.hi) == (pytest.approx(max(0, 0.5 - half), abs=1e-5), pytest.approx(min(1, 0.5 + half), abs=1e-5))
    c = ps.classical_mean(y, small_sample=False)
    assert c.estimate == 0.5 and c.hi - c.lo == pytest.approx(2 * 1.959964 * np.sqrt(0.25 / 4), abs=1e-5)
    # λ = 0 is the real-only mean
    assert ps.ppi_mean(unpaired, f, y, lam=0.0).estimate == pytest.approx(0.5)
    with pytest.raises(ValueError, match="paired"):
        ps.ppi_mean(unpaired, f, y[:3])
    with pytest.raises(ValueError, match="0/1"):
        ps.ppi_mean(unpaired, f, [1, 0, 2, 1])


def _draw(rng, n, N, p_real, agree, bias=0.0):
    """Episodes with a known real success p_real; the sim outcome equals the real one with
    probability ``agree``, and a sim that is optimistic by ``bias`` flips failures to successes."""
    y = (rng.random(N + n) < p_real).astype(float)
    f = np.where(rng.random(N + n) < agree, y, 1 - y)
    f = np.where((f == 0) & (rng.random(N + n) < bias), 1.0, f)
    return f[:N], f[N:], y[N:]


@pytest.mark.parametrize("p_real, agree, ratio", [(0.3, 0.92, 1.0), (0.7, 0.92, 1.0), (0.9, 1.0, 1.0),
                                                  (0.5, 1.0, 0.85)])
def test_ppi_covers_a_known_truth_and_is_narrower_when_the_worlds_agree(p_real, agree, ratio):
    rng = np.random.default_rng(7)
    reps, n, N = 600, 10, 150
    hits = {"ppi": 0, "ppi++": 0, "real": 0}
    widths = {"ppi": [], "real": []}
    for _ in range(reps):
        fu, fp, yp = _draw(rng, n, N, p_real, agree=agree)
        a = ps.ppi_mean(fu, fp, yp)
        t = ps.ppi_mean(fu, fp, yp, lam="tuned")
        c = ps.classical_mean(yp)
        hits["ppi"] += a.covers(p_real)
        hits["ppi++"] += t.covers(p_real)
        hits["real"] += c.covers(p_real)
        widths["ppi"].append(a.width)
        widths["real"].append(c.width)
    for k, h in hits.items():
        assert h / reps >= 0.90, (k, h / reps)
    assert np.mean(widths["ppi"]) < ratio * np.mean(widths["real"])


def test_the_diagnostic_says_when_the_worlds_disagree():
    rng = np.random.default_rng(11)
    verdicts = [ps.agreement(*_draw(rng, 40, 200, 0.4, agree=1.0, bias=0.6))["verdict"] for _ in range(50)]
    assert verdicts.count("biased") >= 45
    verdicts = [ps.agreement(*_draw(rng, 40, 200, 0.4, agree=1.0))["verdict"] for _ in range(50)]
    assert verdicts.count("agree") == 50
    # a sim whose episodes do not track the real ones (coin flips) does not narrow anything
    verdicts = [ps.agreement(*_draw(rng, 40, 200, 0.5, agree=0.5))["verdict"] for _ in range(50)]
    assert verdicts.count("agree") <= 5


def _row(policy, seed, success, task="transfer_cube", world="nominal", conf="clean"):
    return {"policy": policy, "configuration": conf, "task": task, "seed": seed, "success": success, "world": world}


def test_pairing_and_bad_input_name_the_episode():
    sim = [_row(p, s, s % 3 != 0) for p in ("a", "b") for s in range(6)]
    real = [_row(p, s, s % 2 == 0, world="cousin") for p in ("a", "b") for s in range(4)]
    pairs = pair(sim, real)
    assert list(pairs) == ["a", "b"] and len(pairs["a"]["paired"]) == 4 and len(pairs["a"]["unpaired_sim"]) == 2
    assert pairs["a"]["paired"][0] == (0, 1)  # seed 0: sim failed, real succeeded
    res = study(pairs, n_real=2, subsamples=20, n_boot=50)
    assert res["policies"]["a"]["sim_all"]["episodes"] == 6 and res["policies"]["a"]["sim"]["episodes"] == 4
    assert res["policies"]["a"]["real"]["episodes"] == 4
    assert res["policies"]["a"]["at_n"]["N"] == 4 and res["policies"]["a"]["coverage"]["reps"] == 20
    with pytest.raises(ConfigError, match="policy=b configuration=clean task=transfer_cube seed=9"):
        pair(sim, real + [_row("b", 9, True, world="cousin")])
    with pytest.raises(ConfigError, match="different tasks"):
        pair(sim, [_row("a", 0, True, task="insertion")])
    with pytest.raises(ConfigError, match="mixes worlds"):
        pair(sim, real + [_row("a", 5, True, world="nominal")])
    with pytest.raises(ConfigError, match="policy 'b' has sim episodes but no real"):
        pair(sim, [r for r in real if r["policy"] == "a"])
