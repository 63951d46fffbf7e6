"""The lockstep latency model (wam_policy_node/latency.py) through the real controller and chunk runtime:
which chunk is active at each step for hand-worked delays d = 0, 1, 7 and d > the chunk length; same
seeds → same commands; sync holds (repeats its last command) while a chunk is in flight; the named
profiles carry the numbers of the JSON they cite."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from wam_common.config import ConfigError
from wam_common.topics import DT
from wam_policy_node.backends import Observation, make_backend
from wam_policy_node.controller import PolicyController
from wam_policy_node.latency import LatencyModel, load_profile, profile_names, steps_for
from wam_policy_node.runtime import ChunkRuntime
from wam_policy_node.safety import SafetyFilter

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
DT_NS = int(round(DT * 1e9))
HOME = np.array([0.0, -0.96, 1.16, 0.0, -0.3, 0.0, 0.5] * 2)
H = 10  # chunk length


def _controller(strategy: str, latency: LatencyModel | None, noise: float = 0.0, **rt) -> PolicyController:
    b = make_backend("synthetic", {"horizon": H, "needs_images": False, "chunk_noise": noise, "seed": 3})
    ctl = PolicyController(b, ChunkRuntime(strategy, **rt), SafetyFilter(), latency=latency)
    ctl.reset_episode({"episode": 0, "seed": 7})
    return ctl


def _run(ctl: PolicyController, steps: int):
    """(schedule, commands, statuses): schedule[t] = (chunk id, index in it) of step t's action, or None
    for a step without one (a hold)."""
    sched, cmds, sts = [], [], []
    for t in range(steps):
        wants = ctl.wants_observation(t * DT_NS)
        cmd, st = ctl.step_lockstep(t * DT_NS, Observation(t * DT_NS, {}, HOME.copy(), step=t))
        assert wants == st["inferred"]  # the node gathers a step's frames exactly when it infers
        sched.append(None if st["hold"] else (st["chunk_id"], st["chunk_index"]))
        cmds.append(cmd)
        sts.append(st)
    return sched, cmds, sts


def _fixed(d: int) -> LatencyModel:
    m = LatencyModel(fixed_s=d * DT) if d else LatencyModel()  # LatencyModel() draws 0 s: d = 0 via the model
    assert m.sample_steps(DT) == d
    return m


HOLD = None


def test_steps_from_seconds():
    assert [steps_for(s, DT) for s in (0.0, 0.001, 0.02, 0.021, 0.05, 0.1, 0.2, 0.4, 0.8)] == [0, 1, 1, 2, 3, 5, 10,
                                                                                                 20, 40]


def test_sync_schedules_hand_worked():
    # d = 0: each chunk plays from its first action at once; the next is computed when it ends
    sched, _, _ = _run(_controller("sync", _fixed(0)), 22)
    assert sched == [(0, i) for i in range(10)] + [(1, i) for i in range(10)] + [(2, 0), (2, 1)]
    # d = 1: the arm waits one step for every chunk, then plays it from its first action
    sched, _, _ = _run(_controller("sync", _fixed(1)), 23)
    assert sched == [HOLD] + [(0, i) for i in range(10)] + [HOLD] + [(1, i) for i in range(10)] + [HOLD]
    # d = 7: seven held steps per chunk
    sched, _, _ = _run(_controller("sync", _fixed(7)), 35)
    assert sched == [HOLD] * 7 + [(0, i) for i in range(10)] + [HOLD] * 7 + [(1, i) for i in range(10)] + [HOLD]
    # d = 12 > the chunk length: still played whole (the robot waited for it)
    sched, _, _ = _run(_controller("sync", _fixed(12)), 45)
    assert sched == [HOLD] * 12 + [(0, i) for i in range(10)] + [HOLD] * 12 + [(1, i) for i in range(10)] + [HOLD]


def test_rtc_schedules_hand_worked():
    # replan every 5 steps; a chunk is indexed by its observation's time, so d late → its first d actions skipped
    sched, _, _ = _run(_controller("rtc", _fixed(0), replan_steps=5), 12)
    assert sched == [(t // 5, t % 5) for t in range(12)]
    sched, _, _ = _run(_controller("rtc", _fixed(1), replan_steps=5), 12)
    assert sched == [HOLD] + [((t - 1) // 5, (t - 1) % 5 + 1) for t in range(1, 12)]
    # d = 7: chunk k (observation at 7k) arrives at 7(k+1) at its index 7; indices 7..9 are left, then a hold
    # until the next one arrives (the runtime commands from what it has, and it has nothing)
    sched, _, _ = _run(_controller("rtc", _fixed(7), replan_steps=5), 24)
    assert sched == ([HOLD] * 7 + [(0, 7), (0, 8), (0, 9)] + [HOLD] * 4 + [(1, 7), (1, 8), (1, 9)] + [HOLD] * 4
                     + [(2, 7), (2, 8), (2, 9)])
    # d = 12 > H: every chunk is in the past when it arrives: the arm never gets an action
    sched, _, sts = _run(_controller("rtc", _fixed(12), replan_steps=5), 40)
    assert sched == [HOLD] * 40
    assert [t for t, s in enumerate(sts) if s["inferred"]] == [0, 12, 24, 36]


def test_temporal_ensemble_schedules_hand_worked():
    sched, _, sts = _run(_controller("temporal_ensemble", _fixed(0)), 5)
    assert sched == [(t, 0) for t in range(5)] and [s.get("n_votes") for s in sts] == [1, 2, 3, 4, 5]
    # d = 1: a new inference starts when the last one arrives, so every step; the newest chunk is one step old
    sched, _, sts = _run(_controller("temporal_ensemble", _fixed(1)), 6)
    assert sched == [HOLD] + [(t - 1, 1) for t in range(1, 6)]
    assert [s.get("n_votes") for s in sts[1:]] == [1, 2, 3, 4, 5]
    # d = 7: one inference in flight at a time → one chunk every 7 steps, each arriving at its index 7
    sched, _, _ = _run(_controller("temporal_ensemble", _fixed(7)), 21)
    assert sched == [HOLD] * 7 + [(0, 7), (0, 8), (0, 9)] + [HOLD] * 4 + [(1, 7), (1, 8), (1, 9)] + [HOLD] * 4
    sched, _, _ = _run(_controller("temporal_ensemble", _fixed(11)), 30)
    assert sched == [HOLD] * 30


def test_no_latency_model_gives_the_same_commands_as_d0():
    for strategy, rt in (("sync", {"execute_steps": 4}), ("rtc", {"replan_steps": 3}), ("temporal_ensemble", {})):
        _, plain, _ = _run(_controller(strategy, None, noise=0.02, **rt), 30)
        _, d0, _ = _run(_controller(strategy, _fixed(0), noise=0.02, **rt), 30)
        assert all(np.array_equal(a, b) for a, b in zip(plain, d0)), strategy


def test_sync_holds_its_last_command_while_a_chunk_is_in_flight():
    _, cmds, sts = _run(_controller("sync", _fixed(7), noise=0.02), 30)
    held = [t for t, s in enumerate(sts) if s["stall"]]
    assert held == list(range(0, 7)) + list(range(17, 24))
    for t in held:
        assert sts[t]["in_flight"] and sts[t]["hold"] == "no_action"
        if t > 0:
            assert np.array_equal(cmds[t], cmds[t - 1])  # the last command, repeated
    assert np.array_equal(cmds[0], HOME)  # nothing commanded yet: the measured state
    # the first action of a chunk after the hold is a seam, measured against the held command
    assert sts[24]["seam_jump"] == pytest.approx(np.max(np.abs(cmds[24] - cmds[23])), abs=1e-12)
    # the async strategies keep executing their previous chunk meanwhile (no stall once started)
    _, _, sts = _run(_controller("rtc", _fixed(3), replan_steps=5), 30)
    assert [t for t, s in enumerate(sts) if s["stall"]] == [0, 1, 2]


def test_same_seeds_same_commands_and_another_seed_other_delays():
    def run(seed: int):
        m = LatencyModel(mean_s=0.08, jitter_s=0.04, min_s=0.01, tail_p=0.2, tail_s=0.2, seed=5)
        ctl = _controller("rtc", m, noise=0.02, replan_steps=4)
        ctl.reset_episode({"episode": 0, "seed": seed})
        _, cmds, sts = _run(ctl, 120)
        return np.array(cmds), [s["latency_steps"] for s in sts if s["inferred"]]

    a, da = run(11)
    b, db = run(11)
    assert np.array_equal(a, b) and da == db
    assert len(set(da)) > 2 and max(da) >= 10  # jitter and the tail are drawn
    c, dc = run(12)
    assert dc != da and not np.array_equal(a, c)
    # the draws restart at each episode: a second episode of the same seed draws the same delays
    m = LatencyModel(mean_s=0.08, jitter_s=0.04, seed=5)
    m.reset(11)
    first = [m.sample_steps(DT) for _ in range(20)]
    m.reset(11)
    assert [m.sample_steps(DT) for _ in range(20)] == first


def _at(data, path):
    for key in path:
        if isinstance(key, dict):
            hits = [x for x in data if all(x.get(k) == v for k, v in key.items())]
            assert len(hits) == 1, key
            data = hits[0]
        else:
            data = data[key]
    return data


def test_profiles_carry_the_numbers_of_their_source():
    names = profile_names()
    assert {"pi05-h200", "smolvla-h200", "fastwam-h200", "lingbot-h200", "pi05-h100", "xvla-h100",
            "vla_jepa-h100"} <= set(names)
    for name in names:
        p = load_profile(name)
        src = ROOT / p.source
        assert src.is_file() and src.parent == ROOT / "docs" / "results", name
        measured = _at(json.loads(src.read_text()), p.at)
        assert p.fields, name
        for key, field in p.fields.items():
            assert getattr(p, key.replace("_ms", "_s")) == pytest.approx(measured[field] / 1e3), (name, key)
    pi = LatencyModel.from_config({"profile": "pi05-h200"})
    assert {pi.sample_steps(DT) for _ in range(50)} == {2}  # 21 ms at 50 Hz: the chunk is 2 steps late
    assert LatencyModel.from_config({"profile": "lingbot-h200"}).sample_steps(DT) == 61


def test_bad_latency_config_is_a_clear_error():
    assert LatencyModel.from_config({}) is None
    with pytest.raises(ConfigError, match="latency.profile.*no latency profile 'pi07-h900'"):
        LatencyModel.from_config({"profile": "pi07-h900"})
    with pytest.raises(ConfigError, match="either a fixed latency or a distribution"):
        LatencyModel.from_config({"fixed_s": 0.1, "mean_s": 0.2})
    with pytest.raises(ConfigError, match="latency.fixed_s.*profile"):
        LatencyModel.from_config({"profile": "pi05-h200", "fixed_s": 0.1})
    with pytest.raises(ConfigError, match="mean_s"):
        LatencyModel.from_config({"jitter_s": 0.1})
    b = make_backend("synthetic", {"needs_images": False})
    with pytest.raises(ConfigError, match="latency.*lockstep"):
        PolicyController(b, ChunkRuntime("rtc"), SafetyFilter(), realtime=True, latency=LatencyModel(fixed_s=0.1))


def _row(policy: str, conf: str, dim: str, value, success: bool, seed: int, **kw) -> dict:
    return {"policy": policy, "configuration": conf, "dimension": dim, "level": 0, "task": "t", "seed": seed,
            "success": success, "value": value, "stall_steps": kw.get("stalls", 0),
            "seam_jump_max": kw.get("seam", 0.01), "time_to_success_s": 4.0 if success else None}


def test_latency_view_finds_where_success_falls_below_80_percent(tmp_path):
    from wam_apps.evaluation.table import latency_view, write_all

    rows = []
    # 10 seeds: clean 10/10, 0.1 s 9/10 (90 % ≥ 80 %), 0.4 s 7/10 (< 80 %), 0.8 s 2/10
    for conf, value, k in (("clean", None, 10), ("latency_2", 0.1, 9), ("latency_4", 0.4, 7), ("latency_5", 0.8, 2)):
        dim = "Clean" if conf == "clean" else "Latency"
        rows += [_row("p+sync", conf, dim, value, s < k, s, stalls=3 * s, seam=0.01 * s) for s in range(10)]
    view = latency_view(rows)
    v = view["p+sync"]
    assert [p["latency_s"] for p in v["points"]] == [0.0, 0.1, 0.4, 0.8]
    assert v["zero_rate"] == 1.0 and v["below_80_s"] == 0.4
    p = v["points"][1]
    assert (p["successes"], p["episodes"]) == (9, 10) and p["ci_lo"] < 0.9 < p["ci_hi"]
    assert p["stall_steps_per_episode"] == pytest.approx(13.5) and p["seam_jump_max"] == pytest.approx(0.09)
    write_all(rows, tmp_path)
    md = (tmp_path / "latency.md").read_text()
    assert "| p+sync | 100.0 [72.2, 100.0] | 90.0 [59.6, 98.2] |" in md and "| 0.4 s |" in md
    assert (tmp_path / "latency.png").stat().st_size > 0
    assert latency_view([r for r in rows if r["dimension"] == "Clean"]) == {}


def test_latency_suite_and_strategy_crossing():
    from wam_apps.evaluation.suites import load_suite, strategy_overrides

    s = load_suite("latency")
    by = {c.name: c for c in s.configurations}
    assert [by[f"latency_{lv}"].value for lv in range(1, 6)] == [0.05, 0.1, 0.2, 0.4, 0.8]
    assert by["latency_3"].sim == {"wam_policy_node": {"latency": {"fixed_s": 0.2}}}
    assert by["latency_pi05-h200"].value == pytest.approx(0.021364) and by["clean"].value == 0.0
    assert set(strategy_overrides(s, None)) == {"sync", "temporal_ensemble", "rtc"}
    assert strategy_overrides(s, ["rtc"]) == {"rtc": {"strategy": "rtc", "replan_steps": 10, "blend_steps": 10}}
    with pytest.raises(ConfigError, match="--strategy fast"):
        strategy_overrides(s, ["fast"])
