"""The fault-injection campaign (bench/fault_campaign.py) at CI size: random faults of every kind over closed-loop
MuJoCo episodes (the expert backend, the real controller and safety filter), every command checked by an oracle
independent of the safety code. The full campaign (>= 1000 faults) is the bench script's."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]


def _campaign():
    spec = importlib.util.spec_from_file_location("fault_campaign", ROOT / "bench" / "fault_campaign.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["fault_campaign"] = mod  # its dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def test_random_faults_end_in_a_hold_or_a_trimmed_or_rejected_chunk_and_nothing_unsafe_reaches_the_sim():
    fc = _campaign()
    out = fc.run(faults=30, seed=7, nominal=0, realtime_every=3)
    assert out["faults"] == 30 and out["observable"] >= 25
    assert out["unsafe_commands"] == 0, out["unsafe_examples"]
    assert out["missed"] == 0, out["missed_examples"]  # other_reason: refused or cut for another reason first
    assert out["commands_to_sim"] > 1000
    kinds = set(out["outcomes"])
    assert len(kinds) >= 8, out["outcomes"]  # a random draw, but of 14 kinds 30 faults cover most
    assert {"collision_table", "collision_arms"} & kinds


def test_the_oracle_sees_an_unsafe_command():
    """The oracle is no rubber stamp: a command into the table, one beyond a limit and one too fast are caught."""
    import numpy as np

    from sim_bridge.env import SimEnv

    fc = _campaign()
    env = SimEnv("transfer_cube", render=False)
    env.reset(0)
    oracle = fc.Oracle(fc.SafetyFilter().max_step)
    home = fc.HOME.copy()
    assert oracle.unsafe(env.sim, home, home, home) == []
    into_table = fc._target("collision_table", 0)
    assert any("table" in w for w in oracle.unsafe(env.sim, into_table, into_table, into_table))
    beyond = home.copy()
    beyond[1] = 2.0
    assert "beyond limits" in oracle.unsafe(env.sim, beyond, beyond, beyond)
    fast = home.copy()
    fast[0] += 0.5
    assert "too fast" in oracle.unsafe(env.sim, fast, home, home)
    assert np.all(np.isfinite(home))
    env.close()
