"""Fault-injection campaign: random faults over closed-loop sim episodes, every command checked.

The pure cores in one process (no DDS): the MuJoCo sim (``sim_bridge.env.SimEnv``, physics only)
driven by the policy controller (``wam_policy_node.controller.PolicyController``, default safety
configuration) with the scripted expert backend, in lockstep (and a share of the episodes in realtime
mode on a virtual clock, where a stale observation can happen). Faults are drawn at random times of
each episode, of a random kind:

- chunk faults (the expert's real chunk, edited on its way out of the backend): ``nan``, ``inf``,
  ``out_of_limits``, ``too_fast`` (a 0.8 rad step), ``jerk`` (a 0.12 rad one-step blip),
  ``seam_jump`` (the chunk 0.7 rad off), ``collision_table`` / ``collision_arms`` (a smooth path
  down through the table / into the other arm), ``inference_error`` (the backend raises: what a
  killed policy server looks like to the controller; killing a real server is the policy-server
  campaign's);
- stream faults: ``missing_camera`` (15 steps), ``stale_obs`` (realtime: the observation stops
  for 0.6 s), ``frozen_state`` (the joint state freezes for 2 s while the commands go on),
  ``dead_motor`` (an arm joint's actuator loses its force for the rest of the episode), ``estop``
  (engaged for 10 steps).

Every command that reaches the sim is checked by an oracle independent of the safety code: finite,
inside the joint limits and gripper range, per-step change within the velocity cap, and no contact
between an arm and the table or between the two arms (the sim's own task model, objects where they
are, penetration over 1 cm; fingers of the two grippers may touch). Each fault's outcome is what the
controller's status said within its window (from the step it took effect: a chunk fault at the next
inference, which a hold can delay; a dead motor until the episode ends): a hold, a rejected or a trimmed
chunk with the expected reason; anything else is listed. A chunk fault whose window passes with no
inference (the arm held throughout) is counted as not applied and another is drawn. A frozen joint
state or a dead motor during which the measured joints never left the commands by the watchdog's
threshold for its window is ``not_observable`` (there was nothing to see, and nothing unsafe: the
oracle checks those commands like all others).

    .venv/bin/python bench/fault_campaign.py [--faults 1000] [--seed 0] [--nominal 6]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mujoco  # noqa: E402
import numpy as np  # noqa: E402

from sim_bridge.env import SimEnv  # noqa: E402
from sim_bridge.mujoco_aloha import action_to_ctrl  # noqa: E402
from wam_policy_node.backends import ActionChunk, Backend, BackendError, Observation, make_backend  # noqa: E402
from wam_policy_node.controller import PolicyController  # noqa: E402
from wam_policy_node.runtime import ChunkRuntime  # noqa: E402
from wam_policy_node.safety import Hold, SafetyFilter  # noqa: E402

DT_NS = 20_000_000
T0 = 1_000_000_000
TASKS = ("transfer_cube", "insertion", "lift_beam")
CHUNK_FAULTS = ("nan", "inf", "out_of_limits", "too_fast", "jerk", "seam_jump", "collision_table", "collision_arms",
                "inference_error")
STREAM_FAULTS = ("missing_camera", "stale_obs", "frozen_state", "dead_motor", "estop")
FAULTS = CHUNK_FAULTS + STREAM_FAULTS
#: the outcome a fault must end in: any of these reasons as a hold, a rejected or a trimmed chunk
EXPECTED = {
    "nan": {Hold.NAN_CHUNK}, "inf": {Hold.NAN_CHUNK}, "out_of_limits": {Hold.OUT_OF_LIMITS_CHUNK},
    "too_fast": {Hold.DYNAMICS_CHUNK}, "jerk": {Hold.DYNAMICS_CHUNK}, "seam_jump": {Hold.SEAM_JUMP},
    "collision_table": {Hold.COLLISION_CHUNK}, "collision_arms": {Hold.COLLISION_CHUNK},
    "inference_error": {Hold.INFERENCE_ERROR}, "missing_camera": {Hold.MISSING_CAMERA},
    "stale_obs": {Hold.STALE_OBS}, "frozen_state": {Hold.TRACKING_ERROR}, "dead_motor": {Hold.TRACKING_ERROR},
    "estop": {Hold.ESTOP},
}
DURATION = {"missing_camera": 15, "stale_obs": 30, "frozen_state": 100, "estop": 10}
#: poses (both arms) the collision faults steer towards: the left gripper through the table; both arms together
HOME = np.array([0.0, -0.96, 1.16, 0.0, -0.3, 0.0, 0.5] * 2)
LOWER, UPPER = SafetyFilter().lower, SafetyFilter().upper


def _target(kind: str, arm: int) -> np.ndarray:
    q = HOME.copy()
    if kind == "collision_table":
        o = 7 * arm
        q[o + 1], q[o + 2] = 0.9, 0.3
    else:
        for o in (0, 7):
            q[o + 1], q[o + 2], q[o + 4] = 0.6, -0.2, 0.0
    return q


class FaultyBackend(Backend):
    """The real expert backend with a fault put into its next chunk on request."""

    def __init__(self, inner: Backend, rng: np.random.Generator):
        super().__init__({})
        self.inner, self.rng = inner, rng
        self.needs_images, self.needs_privileged = inner.needs_images, inner.needs_privileged
        self.pending: Fault | None = None  # applied to the next chunk (a hold may mean there is none for a while)

    def reset(self, episode=None) -> None:
        self.inner.reset(episode)
        self.pending = None

    def rejected(self, chunk, reason) -> None:
        self.inner.rejected(chunk, reason)

    def infer(self, obs: Observation) -> ActionChunk:
        chunk = self.inner.infer(obs)
        fault, self.pending = self.pending, None
        if fault is None:
            return chunk
        fault.applied = True
        kind = fault.kind
        if kind == "inference_error":
            raise BackendError("fault campaign: injected inference error (a dead policy server)")
        a, rng = chunk.actions.copy(), self.rng
        h = len(a)
        j = int(rng.choice([k for k in range(14) if k % 7 != 6]))  # an arm joint
        i = int(rng.integers(1, h - 5))
        mid = (LOWER[j] + UPPER[j]) / 2
        towards_mid = 1.0 if a[i, j] < mid else -1.0
        if kind in ("nan", "inf"):
            a[i:i + int(rng.integers(1, 5)), j] = np.nan if kind == "nan" else rng.choice([np.inf, -np.inf])
        elif kind == "out_of_limits":
            a[i:, j] = (UPPER[j] + 0.5) if rng.random() < 0.5 else (LOWER[j] - 0.5)
        elif kind == "too_fast":
            a[i:, j] += towards_mid * 0.8
        elif kind == "jerk":
            a[i, j] += towards_mid * 0.12
        elif kind == "seam_jump":
            a[:, j] += towards_mid * 0.7
        else:  # collision_*: a smooth path (slow enough for the dynamics limits) into the table / the other arm
            goal = _target(kind, int(rng.integers(0, 2)))
            s = 0.5 - 0.5 * np.cos(np.linspace(0.0, np.pi, h))
            arm = np.arange(14) % 7 != 6
            a[:, arm] = a[0, arm] + s[:, None] * (goal[arm] - a[0, arm])
        return ActionChunk(a, chunk.stamp_ns, chunk.infer_ms, chunk.info)


class Oracle:
    """Checks each command the sim receives, with the sim's own model (not the safety code)."""

    def __init__(self, max_step: np.ndarray, margin: float = 0.01):
        self.max_step, self.margin = max_step, margin
        self.model = None

    def bind(self, sim) -> None:
        if self.model is not sim.model:
            m = self.model = sim.model
            self.data = mujoco.MjData(m)
            names = [m.geom(i).name for i in range(m.ngeom)]
            self.side = {i: ("left" if n.startswith("vx300s_left/") else "right" if n.startswith("vx300s_right/")
                             else "table" if n == "table" else None) for i, n in enumerate(names)}
            self.finger = {i: "finger" in n for i, n in enumerate(names)}
            self.names = names

    def unsafe(self, sim, cmd: np.ndarray, prev: np.ndarray | None, measured: np.ndarray) -> list[str]:
        """What is wrong with ``cmd`` (empty: safe). Too fast: a joint more than one velocity-capped step from
        both the previous command and where the joint is (a hold at the measured pose is no fast move)."""
        out = []
        if not np.all(np.isfinite(cmd)):
            return ["non-finite"]
        if np.any(cmd < LOWER - 1e-9) or np.any(cmd > UPPER + 1e-9):
            out.append("beyond limits")
        step = np.abs(cmd - measured) if prev is None else np.minimum(np.abs(cmd - prev), np.abs(cmd - measured))
        if np.any(step > self.max_step + 1e-9):
            out.append("too fast")
        self.bind(sim)
        d = self.data
        d.qpos[:] = sim.data.qpos  # objects where they are
        d.qpos[:16] = action_to_ctrl(cmd)  # the arms where the command puts them
        mujoco.mj_kinematics(self.model, d)
        mujoco.mj_collision(self.model, d)
        for c in d.contact[: d.ncon]:
            a, b = self.side.get(c.geom1), self.side.get(c.geom2)
            if c.dist >= -self.margin or a is None or b is None or a == b:
                continue
            if "table" in (a, b) or not (self.finger[c.geom1] and self.finger[c.geom2]):
                out.append(f"collision {self.names[c.geom1]} / {self.names[c.geom2]} ({-c.dist * 1e3:.0f} mm)")
        return out


@dataclass
class Fault:
    kind: str
    episode: int
    step: int
    end: int  # last step of its window
    applied: bool = False  # a chunk fault waits for the next inference
    run: int = 0  # frozen_state / dead_motor: steps in a row an arm joint has been off its command (> threshold)
    longest: int = 0  # ... the longest such run: shorter than the watchdog's window = nothing to see
    seen: list = field(default_factory=list)  # (what, reason) from the statuses in the window


def _classify(f: Fault, window_steps: int) -> str:
    want = EXPECTED[f.kind]
    got = {what for what, reason in f.seen if reason in want}
    for what in ("hold", "trimmed", "rejected"):
        if what in got:
            return what
    if f.kind in ("frozen_state", "dead_motor") and f.longest < window_steps:
        return "not_observable"  # the joint state never left the commands by the threshold for the window
    if any(reason for _, reason in f.seen):
        # the faulty chunk was refused or cut for another reason first (a seam before its too-fast part, a
        # collision before its blip), or the arm was already in a latched hold (tracking, seam) when it came
        return "other_reason"
    return "missed"


def run(faults: int, seed: int = 0, nominal: int = 0, realtime_every: int = 4, log=None) -> dict:
    rng = np.random.default_rng(seed)
    safety = SafetyFilter()
    oracle = Oracle(safety.max_step)
    threshold = float(safety.tracking["threshold"])
    window_steps = int(round(float(safety.tracking["window_s"]) * 1e9 / DT_NS))
    envs = {t: SimEnv(t, render=False) for t in TASKS}
    done: list[Fault] = []
    unsafe: list[dict] = []
    commands = steps = episodes = 0
    nominal_stats = {"episodes": 0, "chunks": 0, "trimmed": 0, "rejected": 0, "holds": Counter(), "successes": 0}
    t_start = time.perf_counter()
    ep = 0
    def n_applied():
        return sum(f.applied for f in done)

    while n_applied() < faults or nominal_stats["episodes"] < nominal:
        is_nominal = nominal_stats["episodes"] < nominal
        task = TASKS[ep % len(TASKS)]
        env = envs[task]
        env.reset(seed * 100_000 + ep)
        gains = (env.sim.model.actuator_gainprm.copy(), env.sim.model.actuator_biasprm.copy())  # a dead motor: undone
        realtime = not is_nominal and realtime_every > 0 and ep % realtime_every == realtime_every - 1
        backend = FaultyBackend(make_backend("expert", {}), rng)
        vclock = [T0]
        ctl = PolicyController(backend, ChunkRuntime("rtc"), safety, clock_ns=lambda: vclock[0], realtime=realtime)
        ctl.reset_episode({"episode": ep})
        active: list[Fault] = []
        # fault times: every 15..45 steps after a 30-step start
        plan, k = [], 30
        while not is_nominal and k < env.max_steps - 40:
            kinds = FAULTS if realtime else tuple(f for f in FAULTS if f != "stale_obs")
            plan.append((k, str(rng.choice(kinds))))
            k += int(rng.integers(15, 46))
        frozen_state = None
        stale_obs = None
        frozen_until = stale_until = missing_until = estop_until = -1
        prev_cmd = None
        held_for = 0
        ended_by = "time"
        for k in range(env.max_steps):
            t = T0 + k * DT_NS
            vclock[0] = t
            while plan and plan[0][0] == k and n_applied() + len(active) < faults:
                _, kind = plan.pop(0)
                f = Fault(kind, ep, k, env.max_steps if kind == "dead_motor" else k + DURATION.get(kind, 0) + 30,
                          applied=kind in STREAM_FAULTS)
                if kind in CHUNK_FAULTS:
                    if backend.pending is not None:
                        continue  # one chunk fault at a time
                    backend.pending = f
                active.append(f)
                if kind == "missing_camera":
                    missing_until = k + DURATION[kind]
                elif kind == "frozen_state":
                    frozen_until, frozen_state = k + DURATION[kind], env.qpos14()
                elif kind == "stale_obs":
                    stale_until = k + DURATION[kind]
                elif kind == "estop":
                    estop_until = k + DURATION[kind]
                    ctl.set_estop(True)
                elif kind == "dead_motor":
                    m = env.sim.model
                    jname = f"vx300s_{rng.choice(['left', 'right'])}/{rng.choice(['shoulder', 'elbow'])}"
                    act = [i for i in range(m.nu) if m.actuator_trnid[i, 0] == m.joint(jname).id][0]
                    m.actuator_gainprm[act, 0] = 0.0
                    m.actuator_biasprm[act, 1:3] = 0.0
            if k == estop_until:
                ctl.set_estop(False)
            state = env.qpos14() if k >= frozen_until else frozen_state
            priv = env.privileged(ep, k, t, T0)
            if k < stale_until:
                obs = stale_obs  # the observation stopped coming: the newest one ages
            else:
                obs = stale_obs = Observation(t, {}, state, privileged=priv, step=k)
            missing = "missing_camera" if k < missing_until else None
            if ctl.last_cmd is not None and state is not None:
                off = bool(np.any(np.abs(state - ctl.last_cmd)[np.arange(14) % 7 != 6] > threshold))
                for f in active:
                    if f.kind in ("frozen_state", "dead_motor"):
                        f.run = f.run + 1 if off else 0
                        f.longest = max(f.longest, f.run)
            if realtime:
                cmd, st = ctl.tick(t, obs, missing)
                while ctl._worker is not None and ctl._worker.busy:  # an inference faster than one tick
                    time.sleep(0.0002)
            else:
                cmd, st = ctl.step_lockstep(t, obs, missing)
            steps += 1
            check = st.get("chunk_check")
            events = []
            if st["hold"]:
                events.append(("hold", st["hold"]))
            if st.get("rejected"):
                events.append(("rejected", st["rejected"]))
            if check:
                events.append((check["result"], check["reason"]))
            for f in active:
                if f.applied:
                    f.seen += events
            if is_nominal:
                nominal_stats["chunks"] += int(bool(st.get("inferred")))
                if check:
                    nominal_stats[check["result"]] = nominal_stats.get(check["result"], 0) + 1
                if st["hold"]:
                    nominal_stats["holds"][str(st["hold"])] += 1
            if cmd is not None:
                bad = oracle.unsafe(env.sim, cmd, prev_cmd, env.qpos14())
                if bad:
                    unsafe.append({"episode": ep, "task": task, "step": k, "why": bad,
                                   "faults": [f.kind for f in active]})
                env.step(cmd)
                prev_cmd = cmd
                commands += 1
            for f in [f for f in active if k >= f.end]:
                active.remove(f)
                done.append(f)
            held_for = held_for + 1 if st["hold"] else 0
            if ctl.tracking_trip is not None and not [f for f in active if f.kind not in ("dead_motor", "frozen_state")]:
                ended_by = "tracking_hold"  # latched: the operator would end the episode
                break
            if held_for >= 40 and not active:
                ended_by = "long_hold"  # e.g. the scripted plan ran on during a hold: a seam the arm must not jump
                break
        done.extend(active)
        backend.pending = None
        env.sim.model.actuator_gainprm[:], env.sim.model.actuator_biasprm[:] = gains
        if is_nominal:
            nominal_stats["episodes"] += 1
            nominal_stats["successes"] += int(env.best_reward >= env.task.max_reward)
        ctl.close()
        episodes += 1
        ep += 1
        if log:
            log(f"episode {ep} {task} {'realtime' if realtime else 'lockstep'}: {len(done)} faults so far, "
                f"ended by {ended_by} at step {k}, {len(unsafe)} unsafe")
    for env in envs.values():
        env.close()
    table: dict[str, Counter] = defaultdict(Counter)
    missed, other = [], []
    applied = [f for f in done if f.applied][:faults]
    observable = [f for f in applied if _classify(f, window_steps) != "not_observable"]
    not_applied = Counter(f.kind for f in done if not f.applied)
    for f in applied:
        outcome = _classify(f, window_steps)
        table[f.kind][outcome] += 1
        if outcome == "other_reason":
            other.append({"kind": f.kind, "episode": f.episode, "step": f.step,
                          "seen": sorted({f"{w}:{r}" for w, r in f.seen})})
        if outcome == "missed":
            missed.append({"kind": f.kind, "episode": f.episode, "step": f.step,
                           "seen": sorted({f"{w}:{r}" for w, r in f.seen})})
    n_faults = len(applied)
    return {
        "bench": "fault_campaign", "seed": seed, "faults": n_faults, "episodes": episodes, "steps": steps,
        "commands_to_sim": commands, "unsafe_commands": len(unsafe), "unsafe_examples": unsafe[:10],
        "observable": len(observable), "handled": len(observable) - len(missed) - len(other),
        "other_reason": len(other), "other_reason_examples": other[:10], "missed": len(missed),
        "missed_examples": missed[:20],
        "outcomes": {k: dict(table[k]) for k in FAULTS if k in table},
        "not_applied": dict(not_applied),  # chunk faults whose window passed with no inference (the arm held)
        "nominal": {**nominal_stats, "holds": dict(nominal_stats["holds"])} if nominal else None,
        "wall_s": round(time.perf_counter() - t_start, 1),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--faults", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--nominal", type=int, default=6, help="fault-free episodes first: false trims/rejects/holds")
    ap.add_argument("--realtime-every", type=int, default=4, help="every n-th episode in realtime mode (0: none)")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    log = (lambda s: print(s, file=sys.stderr, flush=True)) if args.verbose else None
    print(json.dumps(run(args.faults, args.seed, args.nominal, args.realtime_every, log), indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
