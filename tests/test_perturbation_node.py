"""perturbation_node as a real process over DDS: a probe publishes sensors, receives /perturbed/...

Each test starts ``python -m perturbation_node.node`` (via GraphRunner, its own ROS_DOMAIN_ID)
and talks to it with a probe node: cameras, joint states and the instruction pass through
byte for byte under ``clean`` in both QoS modes; a perturbing profile changes pixels but not
stamps/frame_id and matches the pure engine bit for bit; profiles switch at runtime (a bad one is
refused, the running one stays); malformed messages never stop the cameras; an unknown profile at
start-up is a config error (exit 2): the node never runs clean in its place.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from rclpy.serialization import deserialize_message, serialize_message
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import String

from rosutil import wait_for
from wam_common import aloha, topics
from wam_common.graph import Graph, NodeSpec
from wam_common.imageio import Stamp, decode_image, encode_image
from wam_common.launcher import GraphRunner

pytestmark = pytest.mark.ros

ROOT = Path(__file__).resolve().parents[1]
CAMS = list(topics.CAMERAS)


def _image(cam: str, k: int, h: int = 48, w: int = 64) -> tuple[np.ndarray, bytes, Stamp]:
    rng = np.random.default_rng(k)
    small = rng.integers(0, 256, (6, 8, 3)).astype(np.uint8)
    img = np.ascontiguousarray(np.repeat(np.repeat(small, h // 6, 0), w // 8, 1))
    stamp = Stamp(100 + k, 20_000_000 * (k % 50))
    return img, encode_image(img, "rgb8", stamp, topics.camera_frame(cam)), stamp


def _joint_state(arm: str, k: int) -> bytes:
    m = JointState()
    m.header.stamp.sec, m.header.stamp.nanosec = 100 + k, 20_000_000 * (k % 50)
    m.name = list(aloha.JOINT_STATE_NAMES)
    m.position = [0.1 * i + 0.01 * k for i in range(len(m.name))]
    return serialize_message(m)


def _start(domain_id: int, tmp_path: Path, **params) -> GraphRunner:
    g = Graph(name="perturb", nodes=[NodeSpec("perturbation_node", "perturbation_node", dict(params))])
    return GraphRunner(g, domain_id=domain_id, log_dir=tmp_path / "logs",
                       extra_env={"PYTHONPATH": str(ROOT)}).start()


class Rig:
    """The probe's side of one node: publishers on the sensor topics, listeners on /perturbed/..."""

    def __init__(self, probe, lockstep: bool, cams: list[str] = CAMS):
        self.probe = probe
        self.cam_pub = {c: probe.publisher(topics.camera_topic(c), Image) for c in cams}
        self.js_pub = {a: probe.publisher(topics.joint_state_topic(a), JointState) for a in topics.ARMS}
        self.instr_pub = probe.publisher(topics.INSTRUCTION, String, latched=True)
        self.ev_pub = probe.publisher(topics.EPISODE, String, latched=True)
        for c in cams:
            probe.listen(topics.perturbed(topics.camera_topic(c)), Image, reliable=lockstep)
        for a in topics.ARMS:
            probe.listen(topics.perturbed(topics.joint_state_topic(a)), JointState, reliable=lockstep)
        probe.listen(topics.perturbed(topics.INSTRUCTION), String, latched=True)
        probe.listen(topics.ACTIVE_PERTURBATION, String, latched=True)

    def active(self) -> list[dict]:
        return [json.loads(m.data) for m in self.probe.decoded(topics.ACTIVE_PERTURBATION, String)]

    def wait_up(self, runner: GraphRunner, timeout: float = 30.0) -> dict:
        ok = wait_for(lambda: self.probe.count(topics.ACTIVE_PERTURBATION) > 0 or runner.dead(), timeout)
        assert ok and not runner.dead(), runner.log("perturbation_node")
        # wait until the node's subscriptions have matched our publishers
        topic = topics.camera_topic(CAMS[0])
        assert wait_for(lambda: self.probe.node.count_subscribers(topic) > 0, 15), runner.log("perturbation_node")
        return self.active()[-1]

    def received(self, topic: str) -> list[bytes]:
        with self.probe._lock:
            return [raw for _, raw in self.probe.msgs[topic]]

    def send_until(self, cam: str, raw: bytes, stamp: Stamp, timeout: float = 10.0) -> bytes:
        """Publish one camera frame until its perturbed counterpart (same stamp) arrives."""
        out = topics.perturbed(topics.camera_topic(cam))
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.cam_pub[cam].publish(raw)
            got = [r for r in self.received(out) if decode_image(r).stamp == stamp]
            if got or wait_for(lambda: any(decode_image(r).stamp == stamp for r in self.received(out)), 0.3):
                return [r for r in self.received(out) if decode_image(r).stamp == stamp][0]
        raise AssertionError(f"no perturbed frame of {cam} stamped {stamp}")

    def send_js_until(self, arm: str, raw: bytes, timeout: float = 10.0) -> JointState:
        out = topics.perturbed(topics.joint_state_topic(arm))
        stamp = deserialize_message(raw, JointState).header.stamp
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.js_pub[arm].publish(raw)
            if wait_for(lambda: any(m.header.stamp == stamp for m in self.probe.decoded(out, JointState)), 0.3):
                return [m for m in self.probe.decoded(out, JointState) if m.header.stamp == stamp][0]
        raise AssertionError(f"no perturbed JointState of {arm}")


@pytest.mark.parametrize("lockstep", [True, False], ids=["lockstep", "realtime"])
def test_clean_passes_everything_through_unchanged(domain_id, probe, tmp_path, lockstep):
    runner = _start(domain_id, tmp_path, profile="clean", lockstep=lockstep)
    try:
        rig = Rig(probe, lockstep)
        active = rig.wait_up(runner)
        assert active["name"] == "clean" and "error" not in active
        assert all(v == [] for v in active["cameras"].values()) and set(active["cameras"]) == set(CAMS)
        rig.instr_pub.publish(String(data="Pick up the red cube with the right arm."))
        for k in range(3):
            for cam in CAMS:
                img, raw, stamp = _image(cam, k)
                got = rig.send_until(cam, raw, stamp)
                assert got == raw  # byte for byte: stamp, frame_id, encoding, pixels
                d = decode_image(got)
                assert d.stamp == stamp and d.frame_id == topics.camera_frame(cam)
                np.testing.assert_array_equal(d.array, img)
            for arm in topics.ARMS:
                raw = _joint_state(arm, k)
                got = rig.send_js_until(arm, raw)
                assert serialize_message(got) == raw
        instr = topics.perturbed(topics.INSTRUCTION)
        assert wait_for(lambda: probe.count(instr) > 0, 10)
        assert probe.decoded(instr, String)[-1].data == "Pick up the red cube with the right arm."
        assert not runner.dead()
    finally:
        runner.stop()


def test_unknown_profile_at_startup_is_a_config_error(domain_id, tmp_path):
    """A graph asked to perturb never runs on clean frames instead: the node does not start."""
    runner = _start(domain_id, tmp_path, profile="no_such_profile@3", lockstep=True)
    try:
        assert wait_for(runner.dead, 30), runner.log("perturbation_node")
    finally:
        runner.stop()
    assert runner.dead() == {"perturbation_node": 2}
    lines = runner.log("perturbation_node").strip().splitlines()
    assert lines[-1].startswith("[perturbation_node] config error: unknown perturbation profile 'no_such_profile' "
                                "(known: "), lines
    assert "Traceback" not in runner.log("perturbation_node")


def test_malformed_messages_are_dropped_and_the_node_keeps_going(domain_id, probe, tmp_path):
    runner = _start(domain_id, tmp_path, profile="clean", lockstep=True, cam_low=True)
    try:
        rig = Rig(probe, True, CAMS + ["cam_low"])
        rig.wait_up(runner)
        img, raw, stamp = _image("cam_high", 1)
        assert rig.send_until("cam_high", raw, stamp) == raw
        # malformed images: dropped and counted, the node keeps going
        for bad in (b"\x00\x01\x00\x00" + b"\xff" * 10, raw[:40], b"\x00\x07junk"):
            rig.cam_pub["cam_high"].publish(bad)
        low, raw_low, stamp_low = _image("cam_low", 3)
        assert rig.send_until("cam_low", raw_low, stamp_low) == raw_low  # the optional camera too
        img2, raw2, stamp2 = _image("cam_high", 2)
        assert rig.send_until("cam_high", raw2, stamp2) == raw2
        for r in rig.received(topics.perturbed(topics.camera_topic("cam_high"))):
            decode_image(r)  # nothing malformed came out
        # malformed joint states, instructions and episode events: dropped, the node keeps going
        for junk in (b"\x00\x01\x00\x00\xff\xff\xff\x7f", b"\x00\x01\x00\x00", b"zz"):
            rig.js_pub["left"].publish(junk)
            rig.instr_pub.publish(junk)
            rig.ev_pub.publish(junk)
        good = _joint_state("left", 7)
        assert serialize_message(rig.send_js_until("left", good)) == good
        for r in rig.received(topics.perturbed(topics.joint_state_topic("left"))):
            deserialize_message(r, JointState)
        assert not runner.dead()
    finally:
        runner.stop()


PROFILE = """
name: node_test
dimension: test
seed: 77
resample: episode
cameras:
  all: [{op: shadow, level: 3}]
  cam_high: [{op: gaussian_noise, level: 2, resample: frame}]
  cam_left_wrist: [{op: background, level: 5}]
state: [{op: joint_bias, level: 4}]
language: [{op: typo, level: 3}]
"""


def _call(probe, client, request, timeout: float = 10.0):
    assert client.wait_for_service(timeout_sec=timeout)
    fut = client.call_async(request)
    assert wait_for(fut.done, timeout)
    return fut.result()


def _set_profile(probe, value: str):
    from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
    from rcl_interfaces.srv import SetParameters

    cli = probe.node.create_client(SetParameters, "/perturbation_node/set_parameters")
    req = SetParameters.Request(parameters=[Parameter(
        name="profile", value=ParameterValue(type=ParameterType.PARAMETER_STRING, string_value=value))])
    return _call(probe, cli, req).results[0]


def test_profile_applies_matches_engine_and_switches(domain_id, probe, tmp_path):
    from perturbation_node.engine import Perturber
    from perturbation_node.profiles import load_profile

    prof_path = tmp_path / "node_test.yaml"
    prof_path.write_text(PROFILE)
    runner = _start(domain_id, tmp_path, profile=str(prof_path), lockstep=True)
    try:
        rig = Rig(probe, True)
        probe.listen(topics.DIAGNOSTICS, __import__("diagnostic_msgs.msg", fromlist=["DiagnosticArray"]).DiagnosticArray)
        active = rig.wait_up(runner)
        assert active["name"] == "node_test"
        rig.ev_pub.publish(String(data=json.dumps({"event": "start", "episode": 2, "task": "transfer_cube",
                                                    "seed": 0, "stamp_ns": 0})))
        assert wait_for(lambda: any(a.get("episode") == 2 for a in rig.active()), 10), rig.active()
        a2 = [a for a in rig.active() if a.get("episode") == 2][-1]
        assert [r["op"] for r in a2["cameras"]["cam_high"]] == ["shadow", "gaussian_noise"]
        assert a2["cameras"]["cam_high"][1]["seed"] == [77, 0, "cam_high", 1] and a2["state"][0]["op"] == "joint_bias"
        assert a2["episode_seed"] == 0

        ref = Perturber(load_profile(str(prof_path)), lockstep=True)
        ref.start_episode(2, 0)  # per-episode randomness keyed by the event's sim seed (0)
        for k in (3, 4):
            img, raw, stamp = _image("cam_high", k)
            got = decode_image(rig.send_until("cam_high", raw, stamp))
            assert got.stamp == stamp and got.frame_id == topics.camera_frame("cam_high") and got.encoding == "rgb8"
            assert got.array.shape == img.shape and not np.array_equal(got.array, img)
            np.testing.assert_array_equal(got.array, ref.image("cam_high", img, stamp.ns).array)  # bit for bit

        # state: the 6 arm joints biased exactly as the engine does it, grippers/fingers untouched
        raw = _joint_state("left", 5)
        sent = deserialize_message(raw, JointState)
        got = rig.send_js_until("left", raw)
        assert list(got.name) == list(sent.name) and got.header.stamp == sent.header.stamp
        expect = ref.joint_positions("left", list(sent.name), list(sent.position), 0)
        np.testing.assert_array_equal(np.array(got.position), np.array(expect))
        assert list(got.position[6:]) == list(sent.position[6:]) and got.position[0] != sent.position[0]

        # language: typos, object nouns kept, re-published latched
        text = "Pick up the red cube with the right arm and transfer it to the left arm."
        rig.instr_pub.publish(String(data=text))
        instr = topics.perturbed(topics.INSTRUCTION)
        assert wait_for(lambda: probe.count(instr) > 0, 10)
        out = probe.decoded(instr, String)[-1].data
        assert out == ref.instruction(text) and out != text and "cube" in out and "red" in out

        # background: only where the mask says background, once a mask has arrived
        h, w = 48, 64
        mask = np.zeros((h, w), np.uint8)
        mask[: h // 2] = 255
        mask_pub = probe.publisher(topics.background_mask_topic("cam_left_wrist"), Image)
        img, raw, stamp = _image("cam_left_wrist", 6)
        changed = None
        for k in range(40):
            mask_pub.publish(encode_image(mask, "mono8", Stamp(0, 0), "m"))
            img, raw, stamp = _image("cam_left_wrist", 6 + k)
            out_img = decode_image(rig.send_until("cam_left_wrist", raw, stamp)).array
            if not np.array_equal(out_img[: h // 2], ref.image("cam_left_wrist", img, stamp.ns).array[: h // 2]):
                changed = out_img, img
                break
        assert changed is not None, runner.log("perturbation_node")
        out_img, img = changed
        shadow_only = ref.image("cam_left_wrist", img, stamp.ns).array
        np.testing.assert_array_equal(out_img[h // 2:], shadow_only[h // 2:])  # foreground: shadow only

        # runtime switch: an unknown profile is refused, naming it; the old one keeps running
        res = _set_profile(probe, "bogus_profile@2")
        assert not res.successful and "bogus_profile" in res.reason
        img, raw, stamp = _image("cam_right_wrist", 50)
        got = decode_image(rig.send_until("cam_right_wrist", raw, stamp))
        np.testing.assert_array_equal(got.array, ref.image("cam_right_wrist", img, stamp.ns).array)
        assert _set_profile(probe, "light@7").reason.count("level 7") == 1
        # bgr8 is perturbed as the RGB image it is and goes out as bgr8; mono8 passes unchanged
        bgr = np.ascontiguousarray(_image("cam_right_wrist", 52)[0][:, :, ::-1])
        st = Stamp(300, 0)
        raw = encode_image(bgr, "bgr8", st, "f")
        got = decode_image(rig.send_until("cam_right_wrist", raw, st))
        assert got.encoding == "bgr8"
        np.testing.assert_array_equal(got.array[:, :, ::-1],
                                      ref.image("cam_right_wrist", bgr[:, :, ::-1], st.ns).array)
        mono = encode_image(np.full((8, 8), 9, np.uint8), "mono8", Stamp(301, 0), "f")
        assert rig.send_until("cam_right_wrist", mono, Stamp(301, 0)) == mono
        # a good one switches, and clean passes bytes through again
        assert _set_profile(probe, "clean").successful
        assert wait_for(lambda: rig.active()[-1]["name"] == "clean", 10)
        img, raw, stamp = _image("cam_right_wrist", 51)
        assert rig.send_until("cam_right_wrist", raw, stamp) == raw
        from std_srvs.srv import Trigger

        rel = _call(probe, probe.node.create_client(Trigger, "/perturbation_node/reload"), Trigger.Request())
        assert rel.success and "clean" in rel.message
        assert wait_for(lambda: probe.count(topics.DIAGNOSTICS) > 0, 10)
        from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus

        st = probe.decoded(topics.DIAGNOSTICS, DiagnosticArray)[-1].status[0]
        vals = {kv.key: kv.value for kv in st.values}
        assert int(vals["engine_frames"]) > 0 and int(vals["published"]) > 0
        if int(vals["engine_mask_missing"]) > 0:  # frames of cam_left_wrist before its mask arrived
            assert st.level == DiagnosticStatus.WARN
        assert not runner.dead()
    finally:
        runner.stop()


def test_paper_suite_follows_episodes(domain_id, probe, tmp_path):
    runner = _start(domain_id, tmp_path, profile="paper@2", lockstep=False)
    try:
        rig = Rig(probe, False)
        first = rig.wait_up(runner)
        assert first["profile"] == "paper@2" and first["name"] == "clean"
        # the entry follows the episode's sim seed (seed % 7), or its index when there is no seed
        for ep, seed, name in ((1, 701, "camera"), (2, 3, "language"), (3, None, "language"), (4, 8, "camera")):
            ev = {"event": "start", "episode": ep, "task": "t"} | ({"seed": seed} if seed is not None else {})
            rig.ev_pub.publish(String(data=json.dumps(ev)))
            assert wait_for(lambda: any(a["episode"] == ep for a in rig.active()), 10), rig.active()
            a = [a for a in rig.active() if a["episode"] == ep][-1]
            assert a["name"] == name and a["level"] == 2, a
        rig.ev_pub.publish(String(data="{not json"))
        rig.ev_pub.publish(String(data=json.dumps({"event": "start", "episode": -4})))
        img, raw, stamp = _image("cam_high", 9)
        got = decode_image(rig.send_until("cam_high", raw, stamp))  # camera@2: still running, image changed
        assert got.stamp == stamp and not np.array_equal(got.array, img)
        assert not runner.dead()
    finally:
        runner.stop()


def test_realtime_frame_drops_follow_the_seed(domain_id, probe, tmp_path):
    from perturbation_node.engine import Perturber
    from perturbation_node.profiles import load_profile

    prof = tmp_path / "drops.yaml"
    prof.write_text("name: drops\nseed: 5\ncameras: {cam_high: [{op: frame_drop, level: 5}]}\n")
    runner = _start(domain_id, tmp_path, profile=str(prof), lockstep=False)
    try:
        rig = Rig(probe, False)
        rig.wait_up(runner)
        ref = Perturber(load_profile(str(prof)))
        out = topics.perturbed(topics.camera_topic("cam_high"))
        kept = dropped = 0
        for k in range(12):
            img, raw, stamp = _image("cam_high", k)
            if ref.image("cam_high", img, stamp.ns).array is not None:
                assert rig.send_until("cam_high", raw, stamp) == raw  # kept frames pass unchanged
                kept += 1
            else:
                for _ in range(5):
                    rig.cam_pub["cam_high"].publish(raw)
                    time.sleep(0.05)  # pacing: five separate arrivals of the dropped frame, as a 20 Hz camera
                dropped += 1
        # a later kept frame has arrived, so the dropped ones (published before it) are not coming
        assert kept >= 2 and dropped >= 2
        got = {decode_image(r).stamp for r in rig.received(out)}
        for k in range(12):
            img, raw, stamp = _image("cam_high", k)
            assert (stamp in got) == (ref.image("cam_high", img, stamp.ns).array is not None), k
    finally:
        runner.stop()


@pytest.mark.parametrize("bad,key", [({"colour_jitter": 1}, "colour_jitter"), ({"cv_threads": -1}, "cv_threads")])
def test_bad_parameter_exits_2_naming_it(domain_id, tmp_path, bad, key):
    runner = _start(domain_id, tmp_path, profile="clean", **bad)
    try:
        assert wait_for(lambda: runner.dead(), 30)
        assert runner.dead()["perturbation_node"] == 2
        assert key in runner.log("perturbation_node")
    finally:
        runner.stop()


def test_reload_rereads_the_yaml_and_refuses_a_broken_one(domain_id, probe, tmp_path):
    from std_srvs.srv import Trigger

    prof = tmp_path / "live.yaml"
    prof.write_text("name: live\nseed: 1\ncameras: {all: [{op: gamma, level: 1}]}\n")
    runner = _start(domain_id, tmp_path, profile=str(prof), lockstep=True)
    try:
        rig = Rig(probe, True)
        assert rig.wait_up(runner)["cameras"]["cam_high"][0]["level"] == 1
        cli = probe.node.create_client(Trigger, "/perturbation_node/reload")
        prof.write_text("name: live\nseed: 1\ncameras: {all: [{op: gamma, level: 4}]}\n")
        assert _call(probe, cli, Trigger.Request()).success
        assert wait_for(lambda: rig.active()[-1]["cameras"]["cam_high"][0]["level"] == 4, 10)
        prof.write_text("name: live\nseed: 1\ncameras: {all: [{op: gama, level: 4}]}\n")
        res = _call(probe, cli, Trigger.Request())
        assert not res.success and "'gama'" in res.message
        img, raw, stamp = _image("cam_high", 3)  # the level-4 profile keeps running
        from perturbation_node.engine import Perturber
        from perturbation_node.profiles import parse_profile

        ref = Perturber(parse_profile({"seed": 1, "cameras": {"all": [{"op": "gamma", "level": 4}]}}), lockstep=True)
        got = decode_image(rig.send_until("cam_high", raw, stamp))
        np.testing.assert_array_equal(got.array, ref.image("cam_high", img, stamp.ns).array)
    finally:
        runner.stop()
