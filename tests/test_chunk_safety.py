"""Whole-chunk safety (wam_policy_node.chunk_check) and the tracking watchdog (wam_policy_node.tracking), on
the real ALOHA MuJoCo model and, for the watchdog, a real MuJoCo arm with a dead motor."""
from __future__ import annotations

import numpy as np
import pytest

from wam_policy_node.backends import ActionChunk, Backend, Observation, make_backend
from wam_policy_node.chunk_check import COLLISION, DYNAMICS, ChunkChecker
from wam_policy_node.controller import PolicyController
from wam_policy_node.runtime import ChunkRuntime
from wam_policy_node.safety import Hold, SafetyFilter
from wam_policy_node.tracking import TrackingWatchdog

pytestmark = pytest.mark.unit

HOME = np.array([0.0, -0.96, 1.16, 0.0, -0.3, 0.0, 0.5] * 2)
T = 1_000_000_000
DT_NS = 20_000_000


def _ramp(to: np.ndarray, n: int = 50, frm: np.ndarray = HOME) -> np.ndarray:
    """A smooth (cosine) path from ``frm`` to ``to``: slow, so only the collision check can object to it."""
    s = 0.5 - 0.5 * np.cos(np.linspace(0.0, np.pi, n))
    return frm[None, :] + s[:, None] * (to - frm)[None, :]


def _pose(**joints) -> np.ndarray:
    q = HOME.copy()
    names = {"l_shoulder": 1, "l_elbow": 2, "l_waist": 0, "r_shoulder": 8, "r_elbow": 9, "l_wrist": 4, "r_wrist": 11}
    for k, v in joints.items():
        q[names[k]] = v
    return q


INTO_TABLE = _pose(l_shoulder=0.9, l_elbow=0.3)
INTO_EACH_OTHER = _pose(l_shoulder=0.6, l_elbow=-0.2, r_shoulder=0.6, r_elbow=-0.2, l_wrist=0.0, r_wrist=0.0)
OUT_OF_FRAME = _pose(l_waist=np.pi, l_shoulder=0.5, l_elbow=-0.5)


class _Fixed(Backend):
    """Answers every inference with the given chunk (stamped at the observation)."""

    needs_images = False

    def __init__(self, actions: np.ndarray):
        super().__init__({})
        self.actions = np.asarray(actions, float)

    def infer(self, obs: Observation) -> ActionChunk:
        return ActionChunk(self.actions.copy(), obs.stamp_ns, 1.0)


def _controller(actions, policy="trim", strategy="sync", **chunk) -> PolicyController:
    return PolicyController(_Fixed(actions), ChunkRuntime(strategy),
                            SafetyFilter({"chunk": {"policy": policy, **chunk}}))


# -- the checker on the model ---------------------------------------------------------------------------
@pytest.mark.parametrize("target,against", [(INTO_TABLE, "table"), (INTO_EACH_OTHER, "vx300s_right/"),
                                            (OUT_OF_FRAME, "frame")], ids=["table", "other_arm", "frame"])
def test_a_path_into_the_table_the_other_arm_or_the_frame_fails_where_it_first_hits(target, against):
    chk = ChunkChecker()
    path = _ramp(target)
    v = chk.check(path)
    k = v.first()
    assert k is not None and 0 < k < len(path)
    assert v.codes[k] == COLLISION and against in v.details[k]
    assert chk.collisions(path[k]) and not chk.collisions(path[k - 1])  # the first colliding action, exactly
    assert (v.codes[k:] == COLLISION).all()  # nothing after it is used


def test_a_smooth_path_and_the_experts_real_plans_pass():
    from sim_bridge.env import SimEnv
    from sim_bridge.experts import make_expert

    chk = ChunkChecker()
    assert chk.check(_ramp(_pose(l_shoulder=-0.5, r_shoulder=-0.5, l_elbow=0.8))).first() is None
    env = SimEnv("transfer_cube", render=False)
    expert = make_expert("transfer_cube")
    env.reset(3)
    expert.reset(env.privileged(0, 0, 0, 0))
    plan = expert.actions(0, env.max_steps)  # the whole episode: grasp near the table, handover with both grippers
    env.close()
    v = chk.check(plan)
    assert v.first() is None, v.details
    assert v.collision_checked == len(plan)


def test_gripping_objects_and_a_finger_handover_are_not_collisions():
    """The task objects are not in the check; the two grippers' fingers may touch (allow_finger_contact)."""
    chk = ChunkChecker({"allow_finger_contact": True})
    strict = ChunkChecker({"allow_finger_contact": False})
    fingers_meet = _pose(l_shoulder=0.0, l_elbow=-0.2, r_shoulder=0.0, r_elbow=-0.2)
    hits = strict.collisions(fingers_meet)
    assert hits and any("finger" in a and "finger" in b for a, b, _ in hits)
    assert all(not ("finger" in a and "finger" in b and a.split("/")[0] != b.split("/")[0])
               for a, b, _ in chk.collisions(fingers_meet))
    assert all("box" not in a and "box" not in b for a, b, _ in strict.collisions(INTO_TABLE))


def test_dynamics_velocity_acceleration_and_jerk():
    chk = ChunkChecker({"collision": False, "max_velocity": 5.0, "max_acceleration": 100.0, "max_jerk": 5000.0})
    smooth = _ramp(_pose(l_shoulder=-0.7), n=50)
    assert chk.check(smooth).first() is None
    fast = smooth.copy()
    fast[30:, 0] += 0.2  # a 0.2 rad step of the left waist: 10 rad/s
    v = chk.check(fast)
    assert v.first() == 30 and v.codes[30] == DYNAMICS and "velocity of left/waist" in v.details[30]
    accel = smooth.copy()
    accel[30:, 8] += 0.05 * np.arange(20)  # the right shoulder speeds up to 2.5 rad/s in one step: 125 rad/s^2
    v = chk.check(accel)
    assert v.first() == 31 and "acceleration of right/shoulder" in v.details[31]
    jerk = smooth.copy()
    jerk[30:, 3] += 0.001 * np.arange(20) ** 2  # acceleration steps to 5 rad/s^2 within a step: jerk 250/0.02
    assert ChunkChecker({"collision": False, "max_jerk": 100.0}).check(jerk).first() is not None
    v = ChunkChecker({"collision": False, "max_jerk": 5000.0}).check(jerk)
    assert v.first() is None  # the same chunk under the loose default-like jerk limit
    spike = smooth.copy()
    spike[25, 9] += 0.015  # a 0.015 rad blip: 0.75 rad/s, 75 rad/s^2, but a jerk of 3 * 0.015 / 0.02^3 = 5625 rad/s^3
    v = chk.check(spike)
    assert v.first() == 26 and "jerk of right/elbow" in v.details[26]


def test_seam_from_the_command_being_executed():
    chk = ChunkChecker({"collision": False})
    a = _ramp(_pose(l_shoulder=-0.7))
    assert chk.seam(a[0], HOME) is None and chk.seam(a[0], None) is None
    off = HOME.copy()
    off[8] += 0.6
    assert "seam jump of right/shoulder: 0.6 rad" in chk.seam(a[0], off)
    grip = HOME.copy()
    grip[6] = 1.2
    assert "left/gripper" in chk.seam(a[0], grip)


# -- the controller: trim or reject -----------------------------------------------------------------------
@pytest.mark.parametrize("policy", ["trim", "reject"])
def test_a_colliding_chunk_is_trimmed_to_its_safe_prefix_or_rejected(policy):
    path = _ramp(INTO_TABLE)
    k = ChunkChecker().check(path).first()
    ctl = _controller(path, policy)
    cmd, st = ctl.step_lockstep(T, Observation(T, {}, HOME))
    assert st["chunk_check"]["reason"] == Hold.COLLISION_CHUNK and "table" in st["chunk_check"]["detail"]
    if policy == "reject":
        assert st["hold"] is Hold.COLLISION_CHUNK and st["rejected"] is Hold.COLLISION_CHUNK
        assert ctl.chunk_issues == {"rejected.collision_chunk": 1}
        np.testing.assert_allclose(cmd, HOME)  # before any command: the measured state
        return
    assert st["hold"] is None and st["trimmed"] is Hold.COLLISION_CHUNK
    assert ctl.runtime.remaining(T) == k  # the safe prefix, nothing after it
    sent, holds = [cmd], []
    state = cmd
    for i in range(1, k + 3):
        cmd, st = ctl.step_lockstep(T + i * DT_NS, Observation(T + i * DT_NS, {}, state))
        sent.append(cmd)
        holds.append(st["hold"])
        state = cmd
    # after the prefix the next chunk (the same path, from its start) jumps back while the prefix's last command
    # is being executed: a seam between plans, rejected, the arm holds; the chunk after that starts from the
    # held command (no plan executing: no seam), ramped by the velocity clamp and trimmed again
    assert holds[k - 1] is Hold.SEAM_JUMP and holds[k] is None, holds
    assert all(not ChunkChecker().collisions(c) for c in sent)


def test_the_first_chunk_and_one_after_a_hold_have_no_seam():
    """A seam is a jump between plans. The episode's first chunk (measured pose → first action: what the
    trained ACT's first chunk does at 0.77 rad) and a chunk after a hold are not rejected for it — rejecting
    would hold for ever, as the policy answers the same state the same way; the velocity clamp ramps there."""
    far = _ramp(_pose(l_shoulder=-0.5))
    far[:, 1] -= 0.8  # the first action is 0.8 rad from the pose
    ctl = _controller(far, "reject")
    cmd, st = ctl.step_lockstep(T, Observation(T, {}, HOME))
    assert st["hold"] is None and "chunk_check" not in st
    assert abs(cmd[1] - HOME[1]) < 0.8  # the clamp, not the jump


def test_a_smooth_chunk_passes_untouched():
    path = _ramp(_pose(l_shoulder=-0.5, r_shoulder=-0.5))
    ctl = _controller(path, "reject")
    cmd, st = ctl.step_lockstep(T, Observation(T, {}, HOME))
    assert st["hold"] is None and "chunk_check" not in st and ctl.runtime.remaining(T) == 50


def test_realtime_checks_from_the_first_future_action():
    """A chunk that arrives 5 steps late is checked (and seamed) from its 6th action: what the runtime plays."""
    path = _ramp(_pose(l_shoulder=-0.5))
    path[:5, 1] += 0.9  # the past part jumps (never played)
    assert ChunkChecker().check(path).first() is not None
    ctl = PolicyController(_Fixed(path), ChunkRuntime("rtc"), SafetyFilter({"chunk": {"policy": "reject"}}))
    from wam_policy_node.controller import Inference

    assert ctl._accept(Inference(ActionChunk(path, T, 1.0)), T + 5 * DT_NS, HOME, {}) is None
    ctl2 = PolicyController(_Fixed(path), ChunkRuntime("rtc"), SafetyFilter({"chunk": {"policy": "reject"}}))
    ctl2.last_cmd, ctl2.last_from_chunk = HOME.copy(), True  # a plan is being executed: seams count
    st: dict = {}
    assert ctl2._accept(Inference(ActionChunk(path, T, 1.0)), T + 2 * DT_NS, HOME, st) is Hold.SEAM_JUMP
    assert "(action 2)" in st["chunk_check"]["detail"]


def test_the_check_is_off_with_safety_disabled_or_chunk_disabled():
    path = _ramp(INTO_TABLE)
    for cfg in ({"enabled": False}, {"chunk": {"enabled": False}}):
        ctl = PolicyController(_Fixed(path), ChunkRuntime("sync"), SafetyFilter(cfg))
        _, st = ctl.step_lockstep(T, Observation(T, {}, HOME))
        assert st["hold"] is None and "chunk_check" not in st


# -- tracking watchdog ------------------------------------------------------------------------------------
def test_watchdog_window_threshold_and_grippers():
    wd = TrackingWatchdog({"threshold": 0.2, "window_s": 0.1, "gripper_threshold": 0.3, "gripper_window_s": 0.2})
    cmd = HOME.copy()
    off = HOME.copy()
    off[2] += 0.3  # left elbow 0.3 rad behind
    assert wd.update(T, off, cmd) is None
    assert wd.update(T + 4 * DT_NS, off, cmd) is None  # 80 ms < 100 ms
    assert wd.update(T + 5 * DT_NS, HOME, cmd) is None  # back on track: the window starts again
    for i in range(6, 12):  # off from 120 ms to 220 ms: tripped at 100 ms
        trip = wd.update(T + i * DT_NS, off, cmd)
    assert trip is not None and trip.joint == "left/elbow" and trip.index == 2
    assert trip.error == pytest.approx(0.3) and "left/elbow" in trip.describe()
    wd.reset()
    closing = HOME.copy()
    closing[13] = 0.9  # commanded 0.5: the gripper stays open on an object, more open than commanded
    assert all(wd.update(T + i * DT_NS, closing, cmd) is None for i in range(30))
    stuck = HOME.copy()
    stuck[13] = 0.1  # commanded 0.5 (more open): it cannot open
    trips = [wd.update(T + i * DT_NS, stuck, cmd) for i in range(30)]
    first = next(i for i, t in enumerate(trips) if t is not None)
    assert first == 10 and trips[first].joint == "right/gripper"


def test_a_dead_motor_in_the_sim_trips_the_watchdog_naming_the_joint():
    """The real MuJoCo arm with the left elbow's actuator dead (no force): the expert's plan moves on, the elbow
    does not follow; the controller holds (tracking_error) naming the joint, its last command, latched."""

    from sim_bridge.env import SimEnv

    env = SimEnv("transfer_cube", render=False)
    env.reset(0)
    m = env.sim.model
    elbow = [i for i in range(m.nu) if m.actuator_trnid[i, 0] == m.joint("vx300s_left/elbow").id][0]
    m.actuator_gainprm[elbow, 0] = 0.0
    m.actuator_biasprm[elbow, 1] = 0.0
    m.actuator_biasprm[elbow, 2] = 0.0
    ctl = PolicyController(make_backend("expert", {}), ChunkRuntime("rtc"), SafetyFilter())
    ctl.reset_episode({"episode": 0})
    trip_step, held, last = None, [], None
    for k in range(env.max_steps):
        t = T + k * DT_NS
        state = env.qpos14()
        cmd, st = ctl.step_lockstep(t, Observation(t, {}, state, privileged=env.privileged(0, k, t, T), step=k))
        if st["hold"] == Hold.TRACKING_ERROR:
            if trip_step is None:
                trip_step = k
                assert st["tracking"]["joint"] == "left/elbow", st
                assert "left/elbow does not follow its command" in ctl.last_error_detail
                np.testing.assert_array_equal(cmd, last)  # the last command, held
            held.append(cmd)
        elif trip_step is not None:
            pytest.fail(f"the tracking hold did not latch: step {k} {st['hold']}")
        if len(held) > 20:
            break
        env.step(cmd)
        last = cmd
    env.close()
    assert trip_step is not None, "the dead elbow never tripped the watchdog"
    assert all(np.array_equal(h, held[0]) for h in held)
    ctl.set_estop(True)
    ctl.set_estop(False)  # the operator cycles the e-stop: the latch is released
    assert ctl.tracking_trip is None


def test_nominal_expert_episodes_never_trip_nor_trim():
    """The default limits are loose enough for the scripted experts' real trajectories (grasp, handover)."""
    from sim_bridge.env import SimEnv

    for task, seed in (("transfer_cube", 1), ("insertion", 2)):
        env = SimEnv(task, render=False)
        env.reset(seed)
        ctl = PolicyController(make_backend("expert", {}), ChunkRuntime("rtc"), SafetyFilter())
        ctl.reset_episode({"episode": 0})
        for k in range(env.max_steps):
            t = T + k * DT_NS
            cmd, st = ctl.step_lockstep(t, Observation(t, {}, env.qpos14(), privileged=env.privileged(0, k, t, T),
                                                       step=k))
            assert st["hold"] is None and "chunk_check" not in st, (task, k, st)
            env.step(cmd)
        assert env.best_reward == env.task.max_reward, task
        env.close()


def test_bad_model_or_frame_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="safety.chunk.model.*no MJCF file"):
        ChunkChecker({"model": str(tmp_path / "none.xml")})
    bad = tmp_path / "bad.xml"
    bad.write_text("<mujoco><worldbody><body name='x'/></worldbody></mujoco>")
    with pytest.raises(ValueError, match="safety.chunk.model.*no body 'vx300s_left'"):
        ChunkChecker({"model": str(bad)})
    with pytest.raises(ValueError, match="safety.chunk.frame"):
        ChunkChecker({"frame": [1.0, 0.0, 0.0, 0.0, 1.0, 1.0]})
    with pytest.raises(ValueError, match="safety.chunk.policy"):
        ChunkChecker({"policy": "ignore"})


def test_the_backstop_holds_a_command_the_chunk_check_never_saw():
    """What is sent is not always a checked action (an RTC blend, the ensemble average, the clamp catching up
    after a hold): each command is checked once more before it goes out."""
    assert "table" in ChunkChecker().command_collision(INTO_TABLE)
    assert ChunkChecker().command_collision(HOME) is None
    assert ChunkChecker({"collision": False}).command_collision(INTO_TABLE) is None
    ctl = _controller(_ramp(_pose(l_shoulder=-0.5)))
    ctl.step_lockstep(T, Observation(T, {}, HOME))
    # a plan that reached the runtime without the check (as a blend of two checked plans can): into the table
    ctl.runtime.add(ActionChunk(np.repeat(INTO_TABLE[None], 10, axis=0), T + DT_NS, 1.0))
    ctl.safety.max_step[:] = 10.0  # no clamp: the whole jump in one step
    cmd, st = ctl.step_lockstep(T + DT_NS, Observation(T + DT_NS, {}, HOME))
    assert st["hold"] is Hold.COLLISION_CHUNK and "command not sent: " in st["chunk_check"]["detail"]
    assert not ChunkChecker().collisions(cmd) and ctl.chunk_issues["held.collision_chunk"] == 1
