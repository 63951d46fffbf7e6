"""The policy node's pure cores without DDS: the lockstep step assembly (on a fake clock), its input
stores and the frame-size gate, on hand-worked steps."""
from __future__ import annotations

import numpy as np
import pytest

from wam_policy_node.framesize import FrameSizeError, FrameSizeGate
from wam_policy_node.lockstep import Inputs, Lockstep, Ready, Resend, Wait, step_index
from wam_policy_node.observation import ObservationMap

pytestmark = pytest.mark.unit

DT = 20_000_000  # one control step (ns)
T0 = 1_000_000_000  # the episode's start stamp
CAMS = ["cam_high", "cam_left_wrist"]


def start(episode=0, stamp_ns=T0, **kw) -> dict:
    return {"event": "start", "episode": episode, "stamp_ns": stamp_ns, "seed": 7, **kw}


def frame(value: int, h: int = 48, w: int = 64) -> np.ndarray:
    return np.full((h, w, 3), value, np.uint8)


class Rig:
    """A Lockstep over fresh Inputs on a fake clock; records the episodes it starts."""

    def __init__(self, needs_images=True, needs_privileged=False, streams=False, camera_every=1,
                 wait_s=5.0, reanswer_after_s=0.5):
        self.now = 100.0
        self.infer = True  # what runtime.should_infer answers
        self.published = False  # whether a PRIVILEGED_STATE publisher exists
        self.started: list[dict] = []
        self.inputs = Inputs(CAMS, camera_every)
        self.lock = Lockstep(
            self.inputs, ObservationMap(list(CAMS), ["top", "left"], None), needs_images=needs_images,
            needs_privileged=needs_privileged, streams=streams, should_infer=lambda t: self.infer,
            privileged_published=lambda: self.published, on_episode=self.started.append, wait_s=wait_s,
            reanswer_after_s=reanswer_after_s, now=lambda: self.now)

    def frames(self, t: int, cams=CAMS, value: int = 0) -> None:
        for c in cams:
            self.inputs.add_frame(c, t, frame(value + CAMS.index(c)))

    def pair(self, t: int):
        """Both arms' joint states at ``t`` (left 0.1.., right 1.1..), then the core's decision."""
        self.inputs.add_joint_state("left", t, np.arange(7) / 10)
        assert self.inputs.add_joint_state("right", t, 1 + np.arange(7) / 10)
        return self.lock.pair(t)


def ready(got) -> Ready:
    assert isinstance(got, Ready), got
    return got


# -- lockstep: frames ----------------------------------------------------------------------------
def test_joint_state_pair_and_frames_at_its_stamp_are_ready():
    rig = Rig()
    rig.inputs.add_start(start(instruction="fold"))
    t = T0 + 3 * DT
    rig.frames(t - DT, value=50)  # an older render: not this step's
    rig.frames(t, value=10)
    got = ready(rig.pair(t))
    assert got.missing is None and got.lacking == [] and got.abandoned is None
    obs = got.obs
    assert obs.stamp_ns == t and obs.step == 3 and obs.prompt == "fold" and obs.privileged is None
    np.testing.assert_array_equal(obs.state, np.r_[np.arange(7) / 10, 1 + np.arange(7) / 10])
    assert obs.image_stamps == {"cam_high": t, "cam_left_wrist": t}
    assert sorted(obs.images) == ["left", "top"]
    assert obs.images["top"][0, 0, 0] == 10 and obs.images["left"][0, 0, 0] == 11
    assert rig.started == [start(instruction="fold")]
    assert rig.lock.pending is None and isinstance(rig.lock.poll(), Wait)


def test_a_pair_waits_for_its_frames_and_a_frame_completes_it():
    rig = Rig()
    rig.inputs.add_start(start())
    t = T0 + DT
    rig.frames(t, cams=["cam_high"])
    assert rig.pair(t) == Wait()
    assert rig.lock.pending == t
    rig.frames(t, cams=["cam_left_wrist"])
    assert ready(rig.lock.poll()).obs.image_stamps == {"cam_high": t, "cam_left_wrist": t}


def test_one_arm_alone_is_no_pair():
    inputs = Inputs(CAMS)
    assert not inputs.add_joint_state("left", T0, np.zeros(7))
    assert not inputs.add_joint_state("right", T0 + DT, np.zeros(7))
    assert inputs.add_joint_state("left", T0 + DT, np.zeros(7))


def test_camera_every_2_uses_the_latest_earlier_frame_between_renders():
    rig = Rig()
    rig.inputs.add_start(start(camera_every=2))
    rig.frames(T0, value=20)
    assert ready(rig.pair(T0)).obs.image_stamps == {c: T0 for c in CAMS}
    assert rig.inputs.camera_every == 2
    # step 1 is not rendered: the frames of step 0 (a later frame is never used)
    rig.frames(T0 + 2 * DT + 1, cams=["cam_high"], value=90)
    got = ready(rig.pair(T0 + DT))
    assert got.obs.step == 1 and got.obs.image_stamps == {c: T0 for c in CAMS}
    assert got.obs.images["top"][0, 0, 0] == 20
    # step 2 is rendered: only frames stamped exactly t_2 do
    assert rig.pair(T0 + 2 * DT) == Wait()
    rig.frames(T0 + 2 * DT, value=30)
    got = ready(rig.lock.poll())
    assert got.obs.step == 2 and got.obs.image_stamps == {c: T0 + 2 * DT for c in CAMS}


def test_camera_every_1_needs_the_exact_stamp():
    rig = Rig()
    rig.inputs.add_start(start())
    rig.frames(T0)
    assert rig.pair(T0 + DT) == Wait()


def test_missing_camera_waits_then_holds_after_lockstep_wait_s():
    rig = Rig(wait_s=5.0)
    rig.inputs.add_start(start())
    t = T0 + DT
    rig.frames(t, cams=["cam_high"])
    assert rig.pair(t) == Wait()
    rig.now += 5.0
    assert rig.lock.poll() == Wait()  # not past lockstep_wait_s yet
    rig.now += 0.01
    got = ready(rig.lock.poll())
    assert got.missing == "missing_camera" and got.lacking == ["cam_left_wrist"]
    assert got.obs.images == {} and got.obs.image_stamps == {"cam_high": t}
    assert got.obs.step == 1


def test_frames_are_needed_only_for_a_new_chunk_or_a_streaming_backend():
    rig = Rig()
    rig.infer = False  # a chunk covers the step
    got = ready(rig.pair(T0))
    assert got.obs.images == {} and got.missing is None and got.obs.step is None
    rig = Rig(streams=True)
    rig.infer = False
    assert rig.pair(T0) == Wait()
    rig = Rig(needs_images=False)
    assert ready(rig.pair(T0)).obs.images == {}


# -- lockstep: privileged state, episodes, steps -------------------------------------------------
def test_privileged_state_awaited_when_the_backend_needs_it():
    rig = Rig(needs_images=False, needs_privileged=True)
    rig.inputs.add_start(start(episode=3))
    t = T0 + 5 * DT
    assert rig.pair(t) == Wait()
    priv = {"stamp_ns": t, "episode": 3, "episode_start_ns": T0, "step": 9}
    rig.inputs.add_privileged(priv)
    got = ready(rig.lock.poll())
    assert got.obs.privileged is priv and got.obs.step == 9  # the sim's step wins over the stamp's 5
    assert rig.started == [start(episode=3)]


def test_privileged_state_awaited_when_a_publisher_exists_or_one_came_before():
    rig = Rig(needs_images=False)
    rig.published = True
    assert rig.pair(T0) == Wait()
    rig.published = False
    assert ready(rig.lock.poll()).obs.privileged is None
    rig.inputs.add_privileged({"stamp_ns": T0})  # the sim publishes them: wait for each step's
    assert rig.pair(T0 + DT) == Wait()
    rig.now += 5.1
    got = ready(rig.lock.poll())
    assert got.obs.privileged is None and got.missing is None


def test_privileged_state_with_a_bad_stamp_is_refused():
    inputs = Inputs(CAMS)
    for bad in ({}, {"stamp_ns": "x"}):
        with pytest.raises((TypeError, ValueError)):
            inputs.add_privileged(bad)
    assert inputs.latest_priv is None and not inputs.priv


def test_privileged_state_of_an_episode_not_yet_started_waits_for_its_start_event():
    rig = Rig(needs_images=False, needs_privileged=True)
    old = start(episode=0)
    rig.inputs.add_start(old)
    t1 = T0 + 500 * DT
    rig.inputs.add_privileged({"stamp_ns": t1, "episode": 1, "episode_start_ns": t1 - 2 * DT})
    assert rig.pair(t1) == Wait()
    new = start(episode=1, stamp_ns=t1 - 2 * DT)
    rig.inputs.add_start(new)
    got = ready(rig.lock.poll())
    assert rig.started == [new] and got.obs.step == 2
    # a start event that does not match the one the privileged state names: the latest, after the wait
    t2 = t1 + DT
    rig.inputs.add_privileged({"stamp_ns": t2, "episode": 1, "episode_start_ns": 123})
    assert rig.pair(t2) == Wait()
    rig.now += 5.1
    assert ready(rig.lock.poll()).obs.step == 3 and rig.started == [new]


def test_episode_switching_by_start_stamp():
    rig = Rig(needs_images=False)
    ev0, ev1 = start(episode=0, instruction="a"), start(episode=1, stamp_ns=T0 + 100 * DT, instruction="b",
                                                       camera_every=3)
    rig.inputs.add_start(ev0)
    assert ready(rig.pair(T0 + DT)).obs.prompt == "a"
    rig.inputs.add_start(ev1)
    rig.inputs.add_start(dict(ev1))  # a repeated start event is the same episode
    got = ready(rig.pair(T0 + 102 * DT))
    assert got.obs.step == 2 and got.obs.prompt == "b"
    assert rig.started == [ev0, ev1] and rig.inputs.camera_every == 3
    assert ready(rig.pair(T0 + 103 * DT)).obs.step == 3 and rig.started == [ev0, ev1]
    rig.inputs.prompt = "from INSTRUCTION"
    assert ready(rig.pair(T0 + 104 * DT)).obs.prompt == "from INSTRUCTION"


def test_no_episode_yet():
    rig = Rig(needs_images=False)
    got = ready(rig.pair(T0))
    assert got.obs.step is None and got.obs.prompt == "" and rig.started == []


def test_step_index():
    ev = start()
    assert step_index(T0 + 3 * DT, None, ev) == 3
    assert step_index(T0 + 3 * DT + 9_000_000, None, ev) == 3
    assert step_index(T0 + 3 * DT + 11_000_000, None, ev) == 4
    assert step_index(T0 + 3 * DT, {"step": 40}, ev) == 40
    assert step_index(T0 + 3 * DT, {"stamp_ns": 0}, None) is None
    assert step_index(T0, None, {"episode": 0}) is None


# -- lockstep: answers ------------------------------------------------------------------------------
def test_a_resent_step_is_answered_again_only_after_reanswer_after_s():
    rig = Rig(needs_images=False, reanswer_after_s=0.5)
    cmd = np.arange(14.0)
    ready(rig.pair(T0))
    rig.lock.answered(T0, cmd)
    assert rig.pair(T0) == Wait()  # crossed our answer
    rig.now += 0.5
    assert rig.pair(T0) == Wait()
    rig.now += 0.01
    got = rig.pair(T0)
    assert isinstance(got, Resend) and got.t == T0 and got.cmd is cmd
    rig.now += 0.4
    assert rig.pair(T0) == Wait()  # counted from the resend
    assert rig.lock.pending is None


def test_only_the_newest_answered_step_is_answered_again():
    rig = Rig(needs_images=False)
    for t in (T0, T0 + DT):
        ready(rig.pair(t))
        rig.lock.answered(t, np.zeros(14))
    rig.now += 10.0
    assert rig.pair(T0) == Wait()
    assert isinstance(rig.pair(T0 + DT), Resend)


def test_reanswer_after_s_0_never_answers_again():
    rig = Rig(needs_images=False, reanswer_after_s=0.0)
    ready(rig.pair(T0))
    rig.lock.answered(T0, np.zeros(14))
    rig.now += 100.0
    assert rig.pair(T0) == Wait()


def test_a_newer_step_abandons_a_pending_older_one():
    rig = Rig(wait_s=5.0)
    rig.inputs.add_start(start())
    t1, t2 = T0 + DT, T0 + 2 * DT
    assert rig.pair(t1) == Wait()
    rig.now += 3.0
    assert rig.pair(t1) == Wait(abandoned=None)  # the same step again keeps its wait
    rig.now += 1.0
    assert rig.pair(t2) == Wait(abandoned=t1)
    assert rig.lock.pending == t2
    rig.now += 4.0  # 8 s after t1 came, 4 s after t2: still waiting for t2's frames
    assert rig.lock.poll() == Wait()
    rig.frames(t2)
    got = ready(rig.lock.poll())
    assert got.obs.stamp_ns == t2 and got.abandoned is None


def test_a_newer_step_ready_at_once_says_what_it_abandoned():
    rig = Rig()
    rig.inputs.add_start(start())
    assert rig.pair(T0 + DT) == Wait()
    rig.frames(T0 + 2 * DT)
    got = ready(rig.pair(T0 + 2 * DT))
    assert got.abandoned == T0 + DT and got.obs.step == 2


# -- realtime: which input is stale -------------------------------------------------------------------
def test_stale_cameras_only_while_the_joint_states_are_fresh():
    inputs = Inputs(CAMS)
    stale = 100_000_000
    assert inputs.stale_cameras(T0, stale) == []  # no joint states: they are what is missing
    inputs.add_joint_state("left", T0, np.zeros(7))
    assert inputs.stale_cameras(T0, stale) == CAMS  # no frame at all
    inputs.add_frame("cam_high", T0 - stale, frame(0))
    inputs.add_frame("cam_left_wrist", T0 - stale - 1, frame(0))
    assert inputs.stale_cameras(T0, stale) == ["cam_left_wrist"]
    inputs.add_joint_state("right", T0 - stale - 1, np.zeros(7))  # the older arm counts
    assert inputs.stale_cameras(T0, stale) == []


# -- frame-size gate -----------------------------------------------------------------------------------
def test_configured_size_rejects_others_and_never_adopts():
    gate = FrameSizeGate([48, 64])
    assert gate.configured == (48, 64)
    assert gate.check("cam_high", 48, 64) is False
    for _ in range(4):
        with pytest.raises(FrameSizeError, match=r"size 128x96 differs from the expected 64x48"):
            gate.check("cam_high", 96, 128)
    assert FrameSizeGate([0, 0]).configured is None and FrameSizeGate([48, 0]).configured is None


def test_episode_announced_size_rejects_others_until_the_next_announcement():
    gate = FrameSizeGate()
    gate.check("cam_high", 96, 128)  # learnt
    gate.announce(start(height=48, width=64))
    assert gate.check("cam_high", 48, 64) is False
    for _ in range(4):
        with pytest.raises(FrameSizeError, match="differs from the expected 64x48"):
            gate.check("cam_high", 96, 128)
    gate.reset()
    with pytest.raises(FrameSizeError):
        gate.check("cam_high", 96, 128)  # a reset forgets what was learnt, not the announcement
    gate.announce(start())  # no size: learnt again
    assert gate.announced is None
    assert gate.check("cam_high", 96, 128) is False
    gate.announce(start(height="tall", width=64))
    assert gate.announced is None


def test_learnt_size_adopted_after_3_odd_frames_in_a_row():
    gate = FrameSizeGate()
    assert gate.check("cam_high", 48, 64) is False
    assert gate.learnt == {"cam_high": (48, 64)}
    for _ in range(2):
        with pytest.raises(FrameSizeError, match="size 128x96 differs from the expected 64x48"):
            gate.check("cam_high", 96, 128)
    assert gate.check("cam_high", 96, 128) is True
    assert gate.learnt["cam_high"] == (96, 128)
    assert gate.check("cam_high", 96, 128) is False
    with pytest.raises(FrameSizeError, match="expected 128x96"):
        gate.check("cam_high", 48, 64)
    assert gate.check("cam_left_wrist", 48, 64) is False  # per camera


def test_a_good_frame_or_another_odd_size_restarts_the_count():
    gate = FrameSizeGate()
    gate.check("cam_high", 48, 64)
    for size in [(96, 128), (96, 128), (48, 64), (96, 128), (96, 128), (100, 128), (96, 128), (96, 128)]:
        if size == (48, 64):
            assert gate.check("cam_high", *size) is False
        else:
            with pytest.raises(FrameSizeError):
                gate.check("cam_high", *size)
    assert gate.check("cam_high", 96, 128) is True


def test_too_small_frames_are_rejected_and_not_learnt():
    gate = FrameSizeGate()
    for h, w in [(7, 64), (48, 7)]:
        with pytest.raises(FrameSizeError, match=f"size {w}x{h} is too small"):
            gate.check("cam_high", h, w)
    assert gate.learnt == {}
    assert gate.check("cam_high", 8, 8) is False


def test_reset_forgets_learnt_sizes_and_odd_counts():
    gate = FrameSizeGate()
    gate.check("cam_high", 48, 64)
    for _ in range(2):
        with pytest.raises(FrameSizeError):
            gate.check("cam_high", 96, 128)
    gate.reset()
    assert gate.learnt == {}
    assert gate.check("cam_high", 24, 32) is False  # the first frame of the episode sets the size
    with pytest.raises(FrameSizeError):
        gate.check("cam_high", 96, 128)  # the count before the reset is gone
