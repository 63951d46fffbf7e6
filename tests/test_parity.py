"""``wam-policy parity``: two bags the recorder wrote from real DDS traffic — distributions side
by side (checked against what was published) and the open-loop replay through real backends."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from wam_common import aloha

from recording_traffic import recorded_bag

STEPS = 12


@pytest.fixture(scope="module")
def bags(tmp_path_factory):
    base = tmp_path_factory.mktemp("parity")
    sim = recorded_bag(base / "sim", [("Clean", 0, True)], steps=STEPS, pattern="noise")[0]
    real = recorded_bag(base / "real", [("Clean", 0, True), ("Clean", 0, False)], steps=STEPS, pattern="flat")[0]
    return sim, real


@pytest.mark.ros
def test_report_and_open_loop_replay(bags, tmp_path):
    sim, real = bags
    out = tmp_path / "par"
    r = subprocess.run([sys.executable, "-m", "wam_apps.cli", "parity", str(sim), str(real), "--out", str(out),
                        "--backend", "replay", "--backend-set", f"bag={real}"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    for f in ("parity.md", "parity.json", "cameras.png", "joints.png", "timing.png", "open_loop.png"):
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    md = (out / "parity.md").read_text()
    assert "## (a) Open loop" in md and "## (b) Distributions" in md
    rep = json.loads((out / "parity.json").read_text())
    # replaying the robot's own commands reproduces them exactly: zero open-loop error
    ol = rep["open_loop"]
    assert [e["steps"] for e in ol] == [STEPS, STEPS]
    assert all(e["joint_max_rad"] == 0.0 and e["gripper_mae"] == 0.0 for e in ol)

    # distributions, against what the traffic published
    cam = rep["real"]["cameras"]["cam_high"]
    assert cam["shape"] == [48, 64, 3] and cam["encoding"] == "rgb8"
    # flat frames at steps 0, 2, … of episodes 0 and 1: value (40 e + 7 k) % 200 + 20
    want = np.mean([(40 * e + 7 * k) % 200 + 20 for e in range(2) for k in range(0, STEPS, 2)])
    assert cam["mean_rgb"] == pytest.approx([want] * 3, abs=0.01)
    assert cam["std_rgb"] == pytest.approx([0, 0, 0], abs=1e-6)
    assert rep["sim"]["cameras"]["cam_high"]["mean_rgb"][0] == pytest.approx(127, abs=3)  # uniform noise
    q = np.array([np.sin(0.1 * k + np.arange(14)) for k in range(STEPS)])
    left = np.array([aloha.arm_state_from_joint_state(aloha.JOINT_STATE_NAMES, aloha.joint_state_positions(r[:7]))
                     for r in q])
    j = rep["real"]["joints"]["left_elbow"]
    assert (j["min"], j["max"]) == pytest.approx((left[:, 2].min(), left[:, 2].max()), abs=1e-9)
    assert rep["real"]["episodes"] == 2 and rep["real"]["successes"] == 1
    assert rep["real"]["timing"]["latency_ms"]["n"] == 2 * STEPS


@pytest.mark.ros
def test_open_loop_error_of_a_different_policy(bags):
    from wam_apps.analysis.parity import open_loop

    _, real = bags
    eps = open_loop(real, "synthetic", {"horizon": 5, "amplitude": 0.1})
    assert [e.steps for e in eps] == [STEPS, STEPS]
    assert all(e.inferences == -(-STEPS // 5) for e in eps)  # a chunk of 5 every 5 steps
    s = eps[0].summary()
    assert s["joint_mae_rad"] > 0.01 and len(s["per_joint_mae"]) == 14


@pytest.mark.ros
def test_bad_input(tmp_path, bags):
    sim, _ = bags
    r = subprocess.run([sys.executable, "-m", "wam_apps.cli", "parity", str(sim), str(tmp_path / "nope")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "nope" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "wam_apps.cli", "parity", str(sim), str(sim), "--backend", "nonesuch",
                        "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "nonesuch" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.unit
def test_open_loop_on_a_bag_without_episode_events(tmp_path):
    """A robot bag recorded without EPISODE events replays as one episode."""
    from rclpy.serialization import serialize_message
    from sensor_msgs.msg import JointState
    from std_msgs.msg import Float64MultiArray

    from wam_common import topics as T
    from wam_apps.analysis.parity import open_loop
    from wam_common.bag.writer import BagWriter

    w = BagWriter(tmp_path / "robot")
    for t, ty in ((T.joint_state_topic("left"), "sensor_msgs/msg/JointState"),
                  (T.joint_state_topic("right"), "sensor_msgs/msg/JointState"),
                  (T.COMMAND, "std_msgs/msg/Float64MultiArray")):
        w.add_topic(t, ty)
    for k in range(20):
        t = 1_000_000_000 + k * 20_000_000
        for arm in T.ARMS:
            js = JointState()
            js.header.stamp.sec, js.header.stamp.nanosec = divmod(t, 1_000_000_000)
            js.name, js.position = list(aloha.JOINT_STATE_NAMES), aloha.joint_state_positions(np.zeros(7))
            w.write(T.joint_state_topic(arm), t, serialize_message(js))
        w.write(T.COMMAND, t + 1_000_000, serialize_message(Float64MultiArray(data=[0.5] * 14)))
    w.close()
    eps = open_loop(tmp_path / "robot", "synthetic", {"horizon": 10, "amplitude": 0.0, "needs_images": False})
    assert [e.steps for e in eps] == [20] and eps[0].inferences == 2
    s = eps[0].summary()  # synthetic holds the first state (zeros; gripper at its normalised value)
    assert s["joint_mae_rad"] == pytest.approx(0.5, abs=1e-6)
