"""The `openvla_oft` backend against a test server that follows OpenVLA-OFT's published REST server field by
field: ``vla-scripts/deploy.py`` of moojink/openvla-oft (``OpenVLAServer.get_server_action``: FastAPI
``POST /act``, ``json_numpy.patch()``, ``{"encoded": ...}`` double encoding answered double-encoded, the
string ``"error"`` on any exception) and the ALOHA client it serves (``experiments/robot/aloha/
run_aloha_eval.py``: ``full_image`` / ``left_wrist_image`` / ``right_wrist_image`` at 224×224 from
``resize_image_for_policy``, ``state`` = qpos (14), ``instruction``; a reply of ``NUM_ACTIONS_CHUNK`` = 25
actions of 14). Plus its error replies, a dead server, a slow one, and the real node holding on a dead one."""
from __future__ import annotations

import http.server
import json
import threading
import time

import numpy as np
import pytest

from wam_policy_node.backends import BackendError, Observation, make_backend

HOME = np.array([0.0, -0.96, 1.16, 0.0, -0.3, 0.0, 0.5] * 2)
CHUNK = 25  # experiments/robot/aloha/constants.py: NUM_ACTIONS_CHUNK on ALOHA


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def obs(stamp=1):
    """Three 480×640 frames (ALOHA's cameras); the top one is black on its left half, white on its right."""
    rng = np.random.default_rng(stamp)
    imgs = {c: rng.integers(0, 255, (480, 640, 3), dtype=np.uint8) for c in ("cam_left_wrist", "cam_right_wrist")}
    top = np.zeros((480, 640, 3), np.uint8)
    top[:, 320:] = 255
    imgs["cam_high"] = top
    return Observation(stamp, imgs, HOME + 0.01 * stamp, "Fold the towel")


class _Handler(http.server.BaseHTTPRequestHandler):
    """``OpenVLAServer.get_server_action`` with a stand-in for ``get_vla_action`` (state + 0.001·i)."""

    def log_message(self, *a):
        pass

    def _send(self, code: int, text: str):
        data = text.encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        import json_numpy

        srv = self.server
        raw = self.rfile.read(int(self.headers["Content-Length"]))
        if self.path != "/act":
            return self._send(404, '{"detail":"Not Found"}')
        if srv.mode == "http500":
            return self._send(500, "Internal Server Error")
        payload = json_numpy.loads(raw)  # FastAPI's body parse under json_numpy.patch()
        try:
            if double_encode := "encoded" in payload:
                assert len(payload.keys()) == 1, "Only uses encoded payload!"
                payload = json_numpy.loads(payload["encoded"])
            observation = payload
            instruction = observation["instruction"]
            srv.requests.append((double_encode, observation))
            time.sleep(srv.delay_s)  # the point: a slow server
            # get_vla_action reads these (openvla_utils.prepare_images_for_vla / proprio normalisation)
            imgs = [observation["full_image"]] + [observation[k] for k in sorted(observation) if "wrist" in k]
            assert all(i.dtype == np.uint8 and i.shape == (224, 224, 3) for i in imgs), "bad image"
            state = np.asarray(observation["state"], np.float64)
            assert state.shape == (14,) and isinstance(instruction, str)
            if srv.mode == "model_error":
                raise RuntimeError("CUDA out of memory")
            n = 3 if srv.mode == "short_rows" else 14
            action = [state[:n] + 0.001 * i for i in range(CHUNK)]  # a list of NUM_ACTIONS_CHUNK arrays
            return self._send(200, json.dumps(json_numpy.dumps(action) if double_encode else
                                              json.loads(json_numpy.dumps(action))))
        except Exception:  # noqa: BLE001 - deploy.py: logs the traceback, returns "error"
            return self._send(200, json.dumps("error"))


class OFTServer:
    def __init__(self, port, mode="ok", delay_s=0.0):
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), _Handler)
        self.httpd.requests, self.httpd.mode, self.httpd.delay_s = [], mode, delay_s
        self.t = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.t.start()
        return self.httpd

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.mark.unit
@pytest.mark.parametrize("double_encode", [False, True])
def test_openvla_oft_round_trip(double_encode):
    port = free_port()
    with OFTServer(port) as srv:
        b = make_backend("openvla_oft", {"url": f"http://127.0.0.1:{port}/act", "double_encode": double_encode})
        o = obs()
        ch = b.infer(o)
        assert ch.actions.shape == (CHUNK, 14)
        np.testing.assert_allclose(ch.actions, o.state[None] + 0.001 * np.arange(CHUNK)[:, None])
        (was_encoded, req), = srv.requests
        assert was_encoded == double_encode
        assert set(req) == {"full_image", "left_wrist_image", "right_wrist_image", "state", "instruction"}
        assert req["instruction"] == "Fold the towel"
        np.testing.assert_array_equal(req["state"], o.state)
        top = req["full_image"]  # stretched to 224×224, not padded: the black/white edge stays in the middle
        assert top.shape == (224, 224, 3) and top.dtype == np.uint8
        assert top[:, :100].max() < 10 and top[:, 124:].min() > 245
        small = b._image(o.images["cam_left_wrist"])
        np.testing.assert_array_equal(req["left_wrist_image"], small)
        b.close()


@pytest.mark.unit
def test_openvla_oft_relative_actions_and_pad_resize():
    port = free_port()
    with OFTServer(port) as srv:
        b = make_backend("openvla_oft", {"url": f"http://127.0.0.1:{port}/act", "relative": True, "resize": "pad",
                                         "n_actions": 10})
        o = obs()
        ch = b.infer(o)
        deltas = o.state[None] + 0.001 * np.arange(CHUNK)[:, None]  # what the server answered
        np.testing.assert_allclose(ch.actions, o.state[None] + np.cumsum(deltas, axis=0)[:10])
        top = srv.requests[0][1]["full_image"]  # 480×640 padded into 224×224: bars above and below
        assert top[:20].max() == 0 and top[-20:].max() == 0 and top[112, 200].min() > 245


@pytest.mark.unit
def test_openvla_oft_error_replies_dead_and_slow_server():
    port = free_port()
    url = f"http://127.0.0.1:{port}/act"
    b = make_backend("openvla_oft", {"url": url, "timeout_s": 0.5, "connect_timeout_s": 0.5})
    with pytest.raises(BackendError, match="openvla_oft: cannot reach"):
        b.infer(obs())  # nothing listening
    with OFTServer(port, mode="model_error"):
        with pytest.raises(BackendError, match="server error"):
            b.infer(obs())
    with OFTServer(port, mode="short_rows"):
        with pytest.raises(BackendError, match=r"has shape \(25, 3\), want \(H, 14\)"):
            b.infer(obs())
    with OFTServer(port, mode="http500"):
        with pytest.raises(BackendError, match="HTTP 500"):
            b.infer(obs())
    with OFTServer(port, delay_s=1.5):
        with pytest.raises(BackendError, match="no reply"):
            b.infer(obs())
    with OFTServer(port) as srv:
        missing = make_backend("openvla_oft", {"url": url, "image_map": ["cam_low:full_image"]})
        with pytest.raises(BackendError, match="no image 'cam_low'"):
            missing.infer(obs())
        wrong_size = make_backend("openvla_oft", {"url": url, "image_size": [0, 0]})  # 480×640 sent as is
        with pytest.raises(BackendError, match="server error"):
            wrong_size.infer(obs())  # the server's own check answers "error"
        assert b.infer(obs(2)).actions.shape == (CHUNK, 14)  # and the backend recovers
        assert len(srv.requests) == 2


@pytest.mark.ros
def test_node_holds_on_a_dead_openvla_oft_server(probe, domain_id, tmp_path):
    """The real node with the openvla_oft backend and nothing listening: each step is a hold (the measured
    state) with an 'inference_error' status naming the unreachable server."""
    from std_msgs.msg import String

    from policy_sim import LockstepSim
    from rosutil import wait_for
    from test_policy_node import start_policy
    from wam_common import topics

    probe.listen(topics.POLICY_STATUS, String)
    sim = LockstepSim(probe, size=(48, 64))
    runner = start_policy(domain_id, {"backend": {"type": "openvla_oft", "openvla_oft": {
        "url": f"http://127.0.0.1:{free_port()}/act", "connect_timeout_s": 0.3}}}, tmp_path)
    try:
        assert sim.wait_matched(), runner.log("wam_policy_node")
        cmds = sim.run_episode(0, 5)
        for c in cmds:
            np.testing.assert_allclose(c, sim.state, atol=1e-9)
        assert wait_for(lambda: probe.count(topics.POLICY_STATUS) >= 5, 10)
        st = [json.loads(m.data) for m in probe.decoded(topics.POLICY_STATUS, String)]
        assert all(s["hold"] == "inference_error" for s in st) and "openvla_oft: cannot reach" in st[0]["error"]
        assert runner.dead() == {}
    finally:
        runner.stop()
