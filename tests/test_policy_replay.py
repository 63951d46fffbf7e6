"""The replay backend: commands from a real rosbag2 MCAP bag, replayed step by step by the node."""
from __future__ import annotations

import json

import numpy as np
import pytest
from rclpy.serialization import serialize_message
from std_msgs.msg import Float64MultiArray, String

from policy_sim import HOME, LockstepSim
from test_policy_node import start_policy
from wam_common import topics
from wam_common.config import ConfigError
from wam_policy_node.backends import Observation, make_backend


def write_bag(path, episodes):
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS2_JAZZY)
    t = 1_000_000_000
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as w:
        ev = w.add_connection(topics.EPISODE, "std_msgs/msg/String", typestore=ts)
        cmd = w.add_connection(topics.COMMAND, "std_msgs/msg/Float64MultiArray", typestore=ts)
        for i, acts in enumerate(episodes):
            w.write(ev, t, serialize_message(String(data=json.dumps({"event": "start", "episode": i}))))
            for a in acts:
                t += 20_000_000
                w.write(cmd, t, serialize_message(Float64MultiArray(data=[float(v) for v in a])))
            t += 1
            w.write(ev, t, serialize_message(String(data=json.dumps({"event": "end", "episode": i}))))


def episodes():
    rng = np.random.default_rng(0)
    return [HOME[None, :] + np.cumsum(rng.normal(0, 0.01, (n, 14)), axis=0) for n in (12, 8)]


@pytest.mark.unit
def test_replay_backend_reads_episodes(tmp_path):
    eps = episodes()
    write_bag(tmp_path / "bag", eps)
    b = make_backend("replay", {"bag": str(tmp_path / "bag"), "horizon": 5})
    assert [len(e) for e in b.episodes] == [12, 8]
    b.reset({"episode": 1})
    ch = b.infer(Observation(0, {}, HOME, step=6))
    np.testing.assert_array_equal(ch.actions, eps[1][[6, 7, 7, 7, 7]])  # the last command is held
    with pytest.raises(ConfigError, match="backend.replay.bag"):
        make_backend("replay", {"bag": str(tmp_path / "missing")})
    with pytest.raises(ConfigError, match="backend.replay.topic"):
        make_backend("replay", {"bag": str(tmp_path / "bag"), "topic": "/nope"})


@pytest.mark.ros
def test_node_replays_a_bag_open_loop(probe, domain_id, tmp_path):
    eps = episodes()
    write_bag(tmp_path / "bag", eps)
    sim = LockstepSim(probe)
    runner = start_policy(domain_id, {"backend": {"type": "replay", "replay": {"bag": str(tmp_path / "bag"),
                                                                               "horizon": 4}},
                                      "runtime": {"strategy": "sync"}, "safety": {"enabled": False}}, tmp_path)
    try:
        assert sim.wait_matched(), runner.log("wam_policy_node")
        got0 = np.array(sim.run_episode(0, 12))
        got1 = np.array(sim.run_episode(1, 10))
        np.testing.assert_allclose(got0, eps[0], atol=1e-12)
        np.testing.assert_allclose(got1[:8], eps[1], atol=1e-12)
        np.testing.assert_allclose(got1[8:], eps[1][[-1, -1]], atol=1e-12)
    finally:
        runner.stop()
