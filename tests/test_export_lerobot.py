"""``wam-policy export-lerobot``: a bag the recorder wrote from real DDS traffic → LeRobotDataset
(v3), loaded back with LeRobot's own ``LeRobotDataset`` class and checked step by step."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from wam_common import aloha

from recording_traffic import recorded_bag

# Tiers: the bag-from-the-graph tests are `ros`; the others carry none: pure, but LeRobot's dataset
# import alone takes ~20 s on this machine (too slow for make test-unit).

PLAN = [("Clean", 0, True), ("Clean", 0, False)]
STEPS = 10


@pytest.fixture(scope="module")
def bag(tmp_path_factory):
    return recorded_bag(tmp_path_factory.mktemp("export"), PLAN, steps=STEPS, pattern="flat", size=(48, 64))


def _expected_state(k: int) -> np.ndarray:
    # what Traffic.episode published: q = sin(0.1 k + arange(14)) through JointState and back
    q = np.sin(0.1 * k + np.arange(14))
    out = []
    for arm7 in aloha.split14(q):
        pos = aloha.joint_state_positions(arm7)
        out.append(aloha.arm_state_from_joint_state(aloha.JOINT_STATE_NAMES, pos))
    return np.concatenate(out)


@pytest.mark.ros
def test_export_loads_with_lerobot(bag, tmp_path):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    bag_dir, _, _ = bag
    out = tmp_path / "ds"
    r = subprocess.run([sys.executable, "-m", "wam_apps.cli", "export-lerobot", str(bag_dir), str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    info = json.loads(r.stdout[r.stdout.index("{"):])
    assert info["episodes"] == 2 and info["frames"] == 2 * STEPS and info["fps"] == 50

    ds = LeRobotDataset("local/ds", root=out, video_backend="pyav")
    assert ds.num_episodes == 2 and len(ds) == 2 * STEPS and ds.fps == 50
    assert set(ds.meta.video_keys) == {f"observation.images.{c}" for c in ("cam_high", "cam_left_wrist", "cam_right_wrist")}
    assert ds.meta.info["codebase_version"].startswith("v3")
    for idx in range(len(ds)):
        f = ds[idx]
        ep, k = int(f["episode_index"]), int(f["frame_index"])
        assert f["task"] == "transfer the cube"
        np.testing.assert_allclose(f["observation.state"].numpy(), _expected_state(k), atol=1e-5)
        np.testing.assert_allclose(f["action"].numpy(), np.sin(0.1 * k + np.arange(14)) + 0.01, atol=1e-5)
        # cameras every 2nd step: step k shows the frame of step k - k % 2 (flat colour per frame)
        for ci, cam in enumerate(("cam_high", "cam_left_wrist", "cam_right_wrist")):
            img = f[f"observation.images.{cam}"].numpy()  # C,H,W float 0..1
            want = ((40 * ep + 7 * (k - k % 2) + 60 * ci) % 200 + 20) / 255.0
            assert abs(float(img.mean()) - want) < 4 / 255, (ep, k, cam)


@pytest.mark.ros
def test_success_only_and_errors(bag, tmp_path):
    from wam_common.config import ConfigError
    from wam_apps.export_lerobot import export

    bag_dir, _, _ = bag
    info = export([bag_dir], tmp_path / "ok", success_only=True, stride=2)
    assert info["episodes"] == 1 and info["frames"] == STEPS // 2 and info["fps"] == 25
    with pytest.raises(ConfigError, match="exists"):
        export([bag_dir], tmp_path / "ok")
    r = subprocess.run([sys.executable, "-m", "wam_apps.cli", "export-lerobot", str(tmp_path / "missing"),
                        str(tmp_path / "o")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "missing" in r.stderr and "Traceback" not in r.stderr


def test_bag_without_episode_events(tmp_path):
    """A robot bag without EPISODE events exports as one episode (not with --success-only)."""
    from rclpy.serialization import serialize_message
    from sensor_msgs.msg import JointState
    from std_msgs.msg import Float64MultiArray, String

    from wam_common import topics as T
    from wam_common.config import ConfigError
    from wam_common.imageio import Stamp, encode_image
    from wam_apps.export_lerobot import export
    from wam_common.bag.writer import BagWriter

    w = BagWriter(tmp_path / "robot")
    w.add_topic(T.INSTRUCTION, "std_msgs/msg/String")
    for c in ("cam_high", "cam_left_wrist", "cam_right_wrist"):
        w.add_topic(T.camera_topic(c), "sensor_msgs/msg/Image")
    for a in T.ARMS:
        w.add_topic(T.joint_state_topic(a), "sensor_msgs/msg/JointState")
    w.add_topic(T.COMMAND, "std_msgs/msg/Float64MultiArray")
    w.write(T.INSTRUCTION, 1, serialize_message(String(data="fold the towel")))
    for k in range(6):
        t = 1_000_000_000 + k * 20_000_000
        st = Stamp.from_ns(t)
        for c in ("cam_high", "cam_left_wrist", "cam_right_wrist"):
            w.write(T.camera_topic(c), t, encode_image(np.full((48, 64, 3), 100, np.uint8), "rgb8", st))
        for a in T.ARMS:
            js = JointState()
            js.header.stamp.sec, js.header.stamp.nanosec = st.sec, st.nanosec
            js.name, js.position = list(aloha.JOINT_STATE_NAMES), aloha.joint_state_positions(np.full(7, 0.1 * k))
            w.write(T.joint_state_topic(a), t + 1, serialize_message(js))
        w.write(T.COMMAND, t + 2, serialize_message(Float64MultiArray(data=[0.2] * 14)))
    w.close()
    info = export([tmp_path / "robot"], tmp_path / "ds")
    assert info["episodes"] == 1 and info["frames"] == 6
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    ds = LeRobotDataset("local/ds", root=tmp_path / "ds", video_backend="pyav")
    assert len(ds) == 6 and ds[0]["task"] == "fold the towel"
    np.testing.assert_allclose(ds[5]["observation.state"].numpy()[:6], 0.5, atol=1e-6)
    with pytest.raises(ConfigError, match="no exportable"):
        export([tmp_path / "robot"], tmp_path / "ds2", success_only=True)


def test_resent_steps_and_episode_boundaries(tmp_path):
    """One frame per step, each with its own command, in the episode that holds its stamp:
    lockstep resends (the sim republishes a step it got no answer to; the policy answers again,
    sometimes after the sim moved on) stay one frame, and a step written out of order across an
    episode boundary is left out instead of joining the wrong episode."""
    from rclpy.serialization import serialize_message
    from sensor_msgs.msg import JointState
    from std_msgs.msg import Float64MultiArray, MultiArrayDimension, String

    from wam_common import topics as T
    from wam_common.imageio import Stamp, encode_image
    from wam_apps.export_lerobot import read_episodes
    from wam_common.bag.writer import BagWriter

    w = BagWriter(tmp_path / "bag")
    w.add_topic(T.EPISODE, "std_msgs/msg/String")
    for c in T.CAMERAS:
        w.add_topic(T.camera_topic(c), "sensor_msgs/msg/Image")
    for a in T.ARMS:
        w.add_topic(T.joint_state_topic(a), "sensor_msgs/msg/JointState")
    w.add_topic(T.COMMAND, "std_msgs/msg/Float64MultiArray")
    clock = iter(range(1, 10_000))  # log times: the bag's order is the order of the writes below

    def t(k):
        return 1_000_000_000 + k * 20_000_000

    def event(ev, episode, k):
        w.write(T.EPISODE, next(clock), serialize_message(String(data=json.dumps(
            {"event": ev, "episode": episode, "task": "transfer_cube", "stamp_ns": t(k), "success": True}))))

    def states(k):
        st = Stamp.from_ns(t(k))
        if k == 0:
            for c in T.CAMERAS:
                w.write(T.camera_topic(c), next(clock), encode_image(np.full((48, 64, 3), 100, np.uint8), "rgb8", st))
        for a in T.ARMS:
            js = JointState()
            js.header.stamp.sec, js.header.stamp.nanosec = st.sec, st.nanosec
            js.name, js.position = list(aloha.JOINT_STATE_NAMES), aloha.joint_state_positions(np.full(7, 0.1 * k))
            w.write(T.joint_state_topic(a), next(clock), serialize_message(js))

    def command(k):  # lockstep: labelled with the stamp it answers; the action says which step
        m = Float64MultiArray(data=[0.1 * k] * 14)
        m.layout.dim = [MultiArrayDimension(label=aloha.command_label(t(k)), size=14, stride=14)]
        w.write(T.COMMAND, next(clock), serialize_message(m))

    # episode 0: steps 0-5, episode 1: steps 6-9, episode 2: steps 10-12 (end stamp = next start)
    event("start", 0, 0)
    for k in range(5):
        states(k)
        if k == 4:
            states(4)  # resent before the answer came
        if k == 3:
            command(2)  # a late re-answer to step 2, after step 3's states
        command(k)
        if k == 2:
            states(2)  # the resend crossed the answer: the policy answers again
            command(2)
    event("end", 0, 6)
    event("start", 1, 6)
    states(5)  # episode 0's last step, written after the boundary: left out
    command(5)
    for k in range(6, 11):  # step 10 (episode 2's) is written before episode 1's end: left out
        states(k)
        command(k)
    event("end", 1, 10)
    event("start", 2, 10)
    for k in (11, 12):
        states(k)
        command(k)
    event("end", 2, 13)
    w.close()
    eps = read_episodes([tmp_path / "bag"])
    assert [[(s.stamp - t(0)) // 20_000_000 for s in ep.steps] for ep in eps] == [[0, 1, 2, 3, 4], [6, 7, 8, 9], [11, 12]]
    for ep in eps:
        for s in ep.steps:
            k = (s.stamp - t(0)) // 20_000_000
            np.testing.assert_allclose(s.action, 0.1 * k)
            np.testing.assert_allclose(s.state[:6], 0.1 * k, atol=1e-9)
