"""The `dreamzero` backend against a test server that follows DreamZero's published serving code field by field:
RoboArena's ``WebsocketPolicyServer`` (``roboarena/policy_server.py`` of robo-arena/roboarena, vendored by
DreamZero as ``droid_sim_evals/policy_server.py``: the ``PolicyServerConfig`` dict as the first frame, an
``endpoint`` key routing ``infer`` / ``reset``, ``"reset successful"`` as the reset's text reply, on any exception
the traceback as a text frame and a close with INTERNAL_ERROR), wrapping ``ARDroidRoboarenaPolicy`` of DreamZero's
``socket_test_optimized_AR.py`` (``_convert_observation``'s keys, a session-id change resetting its frame buffers,
``_convert_action``'s bare (N, 8) float32 reply) with DreamZero-DROID's config from that file's ``main`` (180×320,
two external cameras + wrist, no stereo, ``needs_session_id``, ``joint_position``) — the observation
``test_client_AR.py`` builds. The stand-in model checks each field's key, shape and dtype and answers joints +
0.01·i and a closing gripper. Plus a wrong first frame, error replies, and the real node holding on a dead server."""
from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
import threading
import traceback

import numpy as np
import pytest

from wam_policy_node.backends import BackendError, Observation, make_backend
from wam_policy_node.backends import msgpack_numpy
from wam_policy_node.observation import resize_with_pad

HOME = np.array([0.0, -0.96, 1.16, 0.0, -0.3, 0.0, 0.5] * 2)
N = 24  # the stand-in model's chunk (model steps at DROID's 15 Hz)
CAMS = ("cam_high", "cam_low", "cam_left_wrist", "cam_right_wrist")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def obs(stamp=1):
    """ALOHA's four 480×640 cameras and a state with distinct left / right arms."""
    rng = np.random.default_rng(stamp)
    state = HOME + 0.01 * stamp
    state[7:13] += 0.1  # the right arm differs from the left
    state[13] = 0.8  # right gripper mostly open (ALOHA: 1 = open)
    return Observation(stamp, {c: rng.integers(0, 255, (480, 640, 3), dtype=np.uint8) for c in CAMS}, state,
                       "put the cup in the bin")


@dataclasses.dataclass
class PolicyServerConfig:
    """RoboArena's dataclass; the defaults are DreamZero-DROID's (socket_test_optimized_AR.py main)."""
    image_resolution: tuple | None = (180, 320)
    needs_wrist_camera: bool = True
    n_external_cameras: int = 2
    needs_stereo_camera: bool = False
    needs_session_id: bool = True
    action_space: str = "joint_position"


class ARDroidPolicy:
    """``ARDroidRoboarenaPolicy``'s protocol side: session tracking, the observation conversion, the action."""

    def __init__(self, server):
        self.server = server
        self.current_session_id = None
        self.frames: dict[str, list] = {}
        self.resets = 0

    def reset(self, reset_info):
        self.frames = {}
        self.resets += 1

    def infer(self, obs):
        srv = self.server
        srv.requests.append(obs)
        session_id = obs.get("session_id")
        if session_id is not None and session_id != self.current_session_id:
            if self.current_session_id is not None:
                self.reset({})  # "Session changed ..., resetting state"
            self.current_session_id = session_id
        # the fields _convert_observation reads, each checked as the model needs it
        want = {"observation/exterior_image_0_left", "observation/exterior_image_1_left",
                "observation/wrist_image_left", "observation/joint_position", "observation/gripper_position",
                "prompt", "session_id"}
        assert set(obs) == want, f"keys {sorted(obs)}"
        for k in ("observation/exterior_image_0_left", "observation/exterior_image_1_left",
                  "observation/wrist_image_left"):
            assert obs[k].dtype == np.uint8 and obs[k].shape == (180, 320, 3), f"{k}: {obs[k].shape} {obs[k].dtype}"
            self.frames.setdefault(k, []).append(obs[k])
        jp, gp = obs["observation/joint_position"], obs["observation/gripper_position"]
        assert jp.shape == (7,) and jp.dtype == np.float32, f"joint_position {jp.shape} {jp.dtype}"
        assert gp.shape == (1,) and 0.0 <= float(gp[0]) <= 1.0, f"gripper_position {gp}"
        assert isinstance(obs["prompt"], str) and isinstance(session_id, str)
        if srv.mode == "model_error":
            raise RuntimeError("CUDA out of memory")
        if srv.mode == "dict_reply":  # the legacy server's action.* dict, not RoboArena's array
            return {"action.joint_position": np.zeros((N, 7)), "action.gripper_position": np.zeros((N, 1))}
        joints = jp.astype(np.float64)[None, :] + 0.01 * np.arange(N)[:, None]
        gripper = np.full((N, 1), 0.9)  # DROID: closing
        n = 7 if srv.mode == "short_rows" else 8
        return np.concatenate([joints, gripper], axis=-1)[:, :n].astype(np.float32)


class RoboArenaServer:
    """RoboArena's ``WebsocketPolicyServer._handler`` in a thread (asyncio websockets)."""

    def __init__(self, port, mode="ok", config=None):
        self.port, self.mode = port, mode
        self.config = dataclasses.asdict(PolicyServerConfig()) if config is None else config
        self.requests, self.endpoints, self.connections = [], [], 0
        self.policy = ARDroidPolicy(self)
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        assert self._started.wait(10)
        return self

    def __exit__(self, *exc):
        self._loop.call_soon_threadsafe(self._stop.set_result, None)
        self._thread.join(5)

    def _run(self):
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._main())

    async def _main(self):
        import websockets
        from websockets.asyncio.server import serve

        async def handler(ws):
            self.connections += 1
            packer = msgpack_numpy.Packer()
            await ws.send(packer.pack(self.config))  # the server config first
            while True:
                try:
                    o = msgpack_numpy.unpackb(await ws.recv())
                    endpoint = o["endpoint"]
                    del o["endpoint"]
                    self.endpoints.append(endpoint)
                    if endpoint == "reset":
                        self.policy.reset(o)
                        to_return = "reset successful"
                    else:
                        to_return = packer.pack(self.policy.infer(o))
                    await ws.send(to_return)
                except websockets.ConnectionClosed:
                    break
                except Exception:  # noqa: BLE001 - the traceback as a text frame, then close
                    await ws.send(traceback.format_exc())
                    await ws.close(code=1011, reason="Internal server error. Traceback included in previous frame.")
                    return

        self._stop = self._loop.create_future()
        async with serve(handler, "127.0.0.1", self.port, compression=None, max_size=None):
            self._started.set()
            await self._stop


def backend(port, **kw):
    cfg = {"host": "127.0.0.1", "port": port, "timeout_s": 5.0, "connect_timeout_s": 2.0, "reconnect_s": 0.0}
    cfg.update(kw)
    return make_backend("dreamzero", cfg)


@pytest.mark.unit
def test_dreamzero_round_trip_maps_one_arm():
    port = free_port()
    with RoboArenaServer(port) as srv:
        b = backend(port)
        o = obs()
        ch = b.infer(o)
        assert b.server_config["image_resolution"] == [180, 320] and b.resolution == (180, 320)
        (req,) = srv.requests  # the server's own checks passed (keys, shapes, dtypes)
        assert srv.endpoints == ["infer"]
        right = o.state[7:14]
        np.testing.assert_allclose(req["observation/joint_position"], np.r_[right[:6], 0.0], atol=1e-6)
        np.testing.assert_allclose(req["observation/gripper_position"], [1.0 - 0.8], atol=1e-6)  # DROID 1 = closed
        assert req["prompt"] == "put the cup in the bin"
        np.testing.assert_array_equal(req["observation/exterior_image_0_left"], resize_with_pad(o.images["cam_high"],
                                                                                                180, 320))
        np.testing.assert_array_equal(req["observation/exterior_image_1_left"], resize_with_pad(o.images["cam_low"],
                                                                                                180, 320))
        np.testing.assert_array_equal(req["observation/wrist_image_left"],
                                      resize_with_pad(o.images["cam_right_wrist"], 180, 320))
        # N model steps at 15 Hz → (N - 1) / 15 s at the node's 50 Hz
        steps = int((N - 1) / 15 / 0.02 + 1e-9) + 1
        assert ch.actions.shape == (steps, 14) and ch.info["model_actions"] == N
        np.testing.assert_allclose(ch.actions[:, :7], np.repeat(o.state[None, :7], steps, 0))  # the left arm holds
        t = np.arange(steps) * 0.02
        np.testing.assert_allclose(ch.actions[:, 7:13], right[None, :6] + 0.01 * 15 * t[:, None], atol=1e-5)
        np.testing.assert_allclose(ch.actions[:, 13], 1.0 - 0.9, atol=1e-6)  # DROID closing 0.9 → ALOHA 0.1
        b.close()

        left = backend(port, arm="left", wrist_camera="cam_left_wrist", action_hz=0.0,
                       joint_slots=[-1, 0, 1, 2, 3, 4, 5], pad_value=0.25, gripper_invert=False)
        ch = left.infer(o)
        req = srv.requests[-1]
        np.testing.assert_allclose(req["observation/joint_position"], np.r_[0.25, o.state[:6]], atol=1e-6)
        np.testing.assert_allclose(req["observation/gripper_position"], [o.state[6]], atol=1e-6)
        assert ch.actions.shape == (N, 14)
        np.testing.assert_allclose(ch.actions[:, 7:], np.repeat(o.state[None, 7:], N, 0))  # the right arm holds
        np.testing.assert_allclose(ch.actions[:, :6], o.state[None, :6] + 0.01 * np.arange(N)[:, None], atol=1e-5)
        np.testing.assert_allclose(ch.actions[:, 6], 0.9, atol=1e-6)
        left.close()


@pytest.mark.unit
def test_dreamzero_new_session_id_per_episode():
    port = free_port()
    with RoboArenaServer(port) as srv:
        b = backend(port)
        b.infer(obs(1))
        b.infer(obs(2))
        ids = [r["session_id"] for r in srv.requests]
        assert ids[0] == ids[1] and srv.policy.resets == 0  # one episode, one session
        b.reset({"episode": 1})
        b.infer(obs(3))
        assert srv.requests[-1]["session_id"] != ids[0] and srv.policy.resets == 1  # the server reset its state
        assert srv.endpoints == ["infer"] * 3 and srv.connections == 1
        b.close()

        r = backend(port, send_reset=True)
        r.infer(obs(1))
        r.reset({"episode": 2})
        r.infer(obs(2))
        assert srv.endpoints[-3:] == ["infer", "reset", "infer"]
        r.close()


@pytest.mark.unit
def test_dreamzero_error_replies_and_reconnect():
    port = free_port()
    b = backend(port)
    with pytest.raises(BackendError, match="dreamzero: cannot connect"):
        b.infer(obs())  # nothing listening
    with RoboArenaServer(port, mode="model_error"):
        with pytest.raises(BackendError, match="dreamzero: server error: RuntimeError: CUDA out of memory"):
            b.infer(obs())
        assert b._ws is None  # the server closed after its traceback: the next request reconnects
    with RoboArenaServer(port, mode="dict_reply"):
        with pytest.raises(BackendError, match="bare \\(N, 8\\) action array"):
            b.infer(obs())
    with RoboArenaServer(port, mode="short_rows"):
        with pytest.raises(BackendError, match="dreamzero: connection to .* failed"):
            b.infer(obs())  # the open connection was to the server that went away
        with pytest.raises(BackendError, match=r"reply has shape \(24, 7\), want \(N, 8\)"):
            b.infer(obs())
    with RoboArenaServer(port) as srv:
        missing = backend(port, exterior_cameras=["cam_high", "cam_side"])
        with pytest.raises(BackendError, match="no image 'cam_side'"):
            missing.infer(obs())
        unsized = backend(port, image_resolution=[0, 0])
        assert unsized.infer(obs()).actions.shape[1] == 14  # takes the server's 180×320
        with pytest.raises(BackendError, match="dreamzero: connection to .* failed"):
            b.infer(obs(2))  # its connection was to the server that went away
        assert b.infer(obs(2)).actions.shape[1] == 14  # and the backend recovers
        assert len(srv.requests) == 2 and srv.connections == 3


@pytest.mark.unit
@pytest.mark.parametrize("change,match", [
    ({"action_space": "joint_velocity"}, "action_space is 'joint_velocity'"),
    ({"image_resolution": (224, 224)}, r"wants image_resolution \[224, 224\]"),
    ({"needs_stereo_camera": True}, "stereo"),
    ({"n_external_cameras": 3}, "wants 3 external cameras"),
    ({"image_resolution": "big"}, "is not \\[height, width\\]"),
    (None, "not a RoboArena/DreamZero policy server"),
])
def test_dreamzero_wrong_first_frame(change, match):
    port = free_port()
    cfg = {"policy": "openpi-style metadata", "action_horizon": 10} if change is None else {
        **dataclasses.asdict(PolicyServerConfig()), **change}
    with RoboArenaServer(port, config=cfg) as srv:
        b = backend(port)
        with pytest.raises(BackendError, match=match):
            b.infer(obs())
        assert srv.requests == [] and b._ws is None  # refused before any request


@pytest.mark.ros
def test_node_holds_on_a_dead_dreamzero_server(probe, domain_id, tmp_path):
    """The real node with the dreamzero backend and nothing listening: each step is a hold (the measured
    state) with an 'inference_error' status naming the unreachable server."""
    from std_msgs.msg import String

    from policy_sim import LockstepSim
    from rosutil import wait_for
    from test_policy_node import start_policy
    from wam_common import topics

    probe.listen(topics.POLICY_STATUS, String)
    sim = LockstepSim(probe, size=(48, 64))
    runner = start_policy(domain_id, {"backend": {"type": "dreamzero", "dreamzero": {
        "port": free_port(), "connect_timeout_s": 0.3, "exterior_cameras": ["cam_high", "cam_left_wrist"]}}},
        tmp_path)
    try:
        assert sim.wait_matched(), runner.log("wam_policy_node")
        cmds = sim.run_episode(0, 5)
        for c in cmds:
            np.testing.assert_allclose(c, sim.state, atol=1e-9)
        assert wait_for(lambda: probe.count(topics.POLICY_STATUS) >= 5, 10)
        st = [json.loads(m.data) for m in probe.decoded(topics.POLICY_STATUS, String)]
        assert all(s["hold"] == "inference_error" for s in st) and "dreamzero: cannot connect" in st[0]["error"]
        assert runner.dead() == {}
    finally:
        runner.stop()
