"""The closed loop of issue 2, end to end on real parts.

One episode of the sim transfer-cube task runs through the whole graph — sim_bridge (MuJoCo) →
perturbation_node → wam_policy_node → sim_bridge, plus the recorder — each node its own
process, every hop a DDS topic, on a ROS_DOMAIN_ID of its own. The bag then proves that every
hop carried messages (raw and perturbed sensors, commands) and that it is a proper rosbag2
MCAP (ROS 2 message definitions embedded, metadata.yaml).
"""
from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from wam_common import topics
from wam_common.imageio import decode_image

pytestmark = pytest.mark.ros

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    from wam_apps.cli.demo import run_demo

    out = tmp_path_factory.mktemp("bags")
    # the README's demo: the ACT trained here (checkpoints/act_transfer_cube) drives the sim
    res = run_demo(output_dir=str(out), bag_name="loop", show_progress=False, timeout=600,
                   log_dir=out / "logs", policy="act_sim")
    return res


def _mcap_files(bag: Path) -> list[Path]:
    return sorted(bag.rglob("*.mcap"))


def test_episode_succeeds_through_the_graph(demo_run):
    res = demo_run
    assert res.error is None, res.error
    assert "backend=lerobot" in (res.log_dir / "wam_policy_node.log").read_text()  # the learned policy drove it
    assert res.success is True, res.events
    assert res.steps > 0
    assert res.latency_ms.get("n", 0) >= res.steps - 1
    assert res.latency_ms["mean"] > 0


def test_bag_holds_every_hop(demo_run):
    from rosbags.highlevel import AnyReader

    bag = demo_run.bag
    assert (bag / "metadata.yaml").is_file()
    files = _mcap_files(bag)
    assert files, f"no .mcap under {bag}"
    with AnyReader(files) as reader:
        counts = Counter(c.topic for c, _, _ in reader.messages())
        types = {c.topic: c.msgtype for c in reader.connections}
    for cam in topics.CAMERAS:
        raw, pert = topics.camera_topic(cam), topics.perturbed(topics.camera_topic(cam))
        assert counts[raw] >= 20, (raw, counts)
        assert counts[pert] >= 20, (pert, counts)
        assert types[raw] == "sensor_msgs/msg/Image"
    for arm in topics.ARMS:
        js = topics.joint_state_topic(arm)
        assert counts[js] >= 100 and counts[topics.perturbed(js)] >= 100, counts
        assert types[js] == "sensor_msgs/msg/JointState"
    assert counts[topics.COMMAND] >= 100, counts
    assert types[topics.COMMAND] == "std_msgs/msg/Float64MultiArray"
    assert counts[topics.EPISODE] >= 2
    assert counts[topics.CLOCK] >= 100


def test_bag_embeds_ros2_message_definitions(demo_run):
    from mcap.reader import make_reader

    for path in _mcap_files(demo_run.bag):
        with open(path, "rb") as fh:
            summary = make_reader(fh).get_summary()
        assert summary is not None
        assert summary.schemas, path
        for schema in summary.schemas.values():
            assert schema.encoding == "ros2msg", schema.name
            assert len(schema.data) > 0, schema.name
        for ch in summary.channels.values():
            assert ch.message_encoding == "cdr"


def test_perturbed_frames_keep_the_sensor_stamps(demo_run):
    from rosbags.highlevel import AnyReader

    cam = topics.camera_topic("cam_high")
    stamps: dict[str, list[int]] = {cam: [], topics.perturbed(cam): []}
    shapes = set()
    with AnyReader(_mcap_files(demo_run.bag)) as reader:
        conns = [c for c in reader.connections if c.topic in stamps]
        for conn, _, raw in reader.messages(connections=conns):
            img = decode_image(raw)
            stamps[conn.topic].append(img.stamp.ns)
            shapes.add(img.array.shape)
    assert stamps[cam] and set(stamps[topics.perturbed(cam)]) <= set(stamps[cam])
    assert len(shapes) == 1 and next(iter(shapes))[2] == 3


def test_cli_rejects_malformed_graph_config(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("graph:\n  name: x\n  nodes:\n    - name: a\n      executable: no_such_node\n")
    proc = subprocess.run([sys.executable, "-m", "wam_apps.cli", "graph", str(bad)], capture_output=True,
                          text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "executable" in lines[0] and "no_such_node" in lines[0]
    bad.write_text("graph: [unclosed\n")
    proc = subprocess.run([sys.executable, "-m", "wam_apps.cli", "graph", str(bad)], capture_output=True,
                          text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 2 and "malformed YAML" in proc.stderr


@pytest.mark.parametrize("executable", ["sim_bridge", "perturbation_node", "wam_policy_node", "recorder"])
def test_node_rejects_unknown_parameter(executable, domain_id):
    from wam_common.graph import EXECUTABLES

    proc = subprocess.run(
        [sys.executable, "-m", EXECUTABLES[executable], "--ros-args", "-p", "no_such_key.inner:=3"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    err = [ln for ln in proc.stderr.strip().splitlines() if "config error" in ln]
    assert len(err) == 1 and "no_such_key.inner" in err[0], proc.stderr[-2000:]
