"""Remote backends against servers started in the test process: an openpi-protocol websocket
server (metadata first, msgpack-numpy, text frame on error) and a Cosmos-style HTTP ``POST /act``
(json_numpy); plus dead servers, timeouts, reconnects, and the node holding on a dead server."""
from __future__ import annotations

import asyncio
import http.server
import json
import socket
import threading
import time

import numpy as np
import pytest

from wam_policy_node.backends import BackendError, Observation, make_backend
from wam_policy_node.backends import msgpack_numpy

HOME = np.array([0.0, -0.96, 1.16, 0.0, -0.3, 0.0, 0.5] * 2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def obs(stamp=1):
    rng = np.random.default_rng(stamp)
    return Observation(stamp, {c: rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)
                               for c in ("cam_high", "cam_left_wrist", "cam_right_wrist")},
                       HOME + 0.01 * stamp, "transfer the cube")


class OpenPIServer:
    """openpi's WebsocketPolicyServer protocol in a thread (asyncio websockets)."""

    def __init__(self, port, delay_s=0.0, fail=False, require_key=None):
        self.port, self.delay_s, self.fail, self.require_key = port, delay_s, fail, require_key
        self.requests, self.headers = [], []
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
        from websockets.asyncio.server import serve
        from websockets.http11 import Response
        from websockets.datastructures import Headers

        def check(conn, request):
            self.headers.append({"Authorization": request.headers.get("Authorization")})
            if self.require_key and request.headers.get("Authorization") != f"Api-Key {self.require_key}":
                return Response(401, "Unauthorized", Headers(), b"bad key\n")
            return None

        async def handler(ws):
            await ws.send(msgpack_numpy.packb({"policy": "test", "action_horizon": 10}))
            async for msg in ws:
                o = msgpack_numpy.unpackb(msg)
                self.requests.append(o)
                if self.fail:
                    await ws.send("Traceback (most recent call last):\nRuntimeError: model exploded")
                    await ws.close(1011, "internal error")
                    return
                await asyncio.sleep(self.delay_s)  # the point: a slow server
                acts = np.asarray(o["state"], np.float64)[None, :] + 0.001 * np.arange(10)[:, None]
                await ws.send(msgpack_numpy.packb({"actions": acts, "server_timing": {"infer_ms": 1.5}}))

        self._stop = self._loop.create_future()
        async with serve(handler, "127.0.0.1", self.port, compression=None, max_size=None,
                         process_request=check):
            self._started.set()
            await self._stop


@pytest.mark.unit
def test_openpi_protocol_round_trip_with_api_key():
    port = free_port()
    with OpenPIServer(port, require_key="s3cret") as srv:
        b = make_backend("openpi", {"port": port, "api_key": "s3cret"})
        o = obs()
        ch = b.infer(o)
        assert b.metadata == {"policy": "test", "action_horizon": 10}
        np.testing.assert_allclose(ch.actions[0], o.state.astype(np.float32), atol=1e-6)
        assert ch.actions.shape == (10, 14) and ch.info["server_infer_ms"] == 1.5
        req = srv.requests[0]
        assert set(req) == {"state", "images", "prompt"} and req["prompt"] == "transfer the cube"
        img = req["images"]["cam_high"]
        assert img.shape == (3, 224, 224) and img.dtype == np.uint8  # CHW, resized with pad
        assert img[:, :27, :].max() == 0 and img[:, 28:196, :].max() > 0  # 320x240 → 224x168 + bars
        assert srv.headers[0]["Authorization"] == "Api-Key s3cret"
        b.infer(obs(2))
        assert b.connects == 1  # one connection, reused
        bad = make_backend("openpi", {"port": port, "api_key": "wrong"})
        with pytest.raises(BackendError, match="cannot connect"):
            bad.infer(o)
        b.close()


@pytest.mark.unit
def test_openpi_dead_server_timeout_error_and_reconnect():
    port = free_port()
    b = make_backend("openpi", {"port": port, "reconnect_s": 0.0, "connect_timeout_s": 1.0, "timeout_s": 0.5})
    with pytest.raises(BackendError, match="cannot connect"):
        b.infer(obs())  # nothing listening
    with OpenPIServer(port, delay_s=1.0):
        with pytest.raises(BackendError, match="no reply"):
            b.infer(obs())
        assert b._ws is None  # dropped: the late reply is never taken for the next request
    with OpenPIServer(port) as srv:
        ch = b.infer(obs(3))  # reconnected
        assert ch.actions.shape == (10, 14) and len(srv.requests) == 1
    with OpenPIServer(port, fail=True):
        b2 = make_backend("openpi", {"port": port})
        with pytest.raises(BackendError, match="model exploded"):
            b2.infer(obs())
    b.close()


class _CosmosHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def do_POST(self):
        import json_numpy

        srv = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path != "/act":
            self.send_response(404)
            self.end_headers()
            return
        # the real server runs json_numpy.patch(): plain bodies are decoded by it too
        payload = json_numpy.loads(body["encoded"]) if "encoded" in body else json_numpy.loads(json.dumps(body))
        srv.requests.append(payload)
        time.sleep(srv.delay_s)  # the point: a slow server
        if srv.fail:
            reply = "error"
        else:
            acts = np.asarray(payload["proprio"], np.float64)[None, :] + 0.002 * np.arange(16)[:, None]
            resp = {"actions": [a for a in acts], "value_prediction": 0.75, "future_image_predictions": None}
            reply = json_numpy.dumps(resp) if "encoded" in body else json.loads(json_numpy.dumps(resp))
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class CosmosServer:
    def __init__(self, port, delay_s=0.0, fail=False):
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), _CosmosHandler)
        self.httpd.requests, self.httpd.delay_s, self.httpd.fail = [], delay_s, fail
        self.t = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.t.start()
        return self.httpd

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.mark.unit
@pytest.mark.parametrize("double_encode", [True, False])
def test_cosmos_post_act(double_encode):
    port = free_port()
    with CosmosServer(port) as srv:
        b = make_backend("cosmos", {"url": f"http://127.0.0.1:{port}/act", "double_encode": double_encode})
        o = obs()
        ch = b.infer(o)
        assert ch.actions.shape == (16, 14) and ch.info["value"] == 0.75
        np.testing.assert_allclose(ch.actions[0], o.state.astype(np.float32), atol=1e-6)
        p = srv.requests[0]
        assert set(p) == {"primary_image", "left_wrist_image", "right_wrist_image", "proprio", "task_description"}
        np.testing.assert_array_equal(p["primary_image"], o.images["cam_high"])
        assert p["task_description"] == "transfer the cube"


@pytest.mark.unit
def test_cosmos_dead_server_timeout_and_error():
    port = free_port()
    b = make_backend("cosmos", {"url": f"http://127.0.0.1:{port}/act", "timeout_s": 0.5, "connect_timeout_s": 0.5})
    with pytest.raises(BackendError, match="cannot reach"):
        b.infer(obs())
    with CosmosServer(port, delay_s=1.5):
        with pytest.raises(BackendError, match="no reply"):
            b.infer(obs())
    with CosmosServer(port, fail=True):
        with pytest.raises(BackendError, match="server error"):
            b.infer(obs())


@pytest.mark.ros
def test_node_holds_on_a_dead_server(probe, domain_id, tmp_path):
    """The real node with the openpi backend and nothing listening: every step is answered with a
    hold (the measured state), an 'inference_error' status, never a crash or a bad command."""
    from std_msgs.msg import String

    from policy_sim import LockstepSim
    from rosutil import wait_for
    from test_policy_node import start_policy
    from wam_common import topics

    probe.listen(topics.POLICY_STATUS, String)
    sim = LockstepSim(probe, size=(48, 64))
    runner = start_policy(domain_id, {"backend": {"type": "openpi", "openpi": {
        "port": free_port(), "connect_timeout_s": 0.3, "reconnect_s": 0.0}}}, tmp_path)
    try:
        assert sim.wait_matched(), runner.log("wam_policy_node")
        cmds = sim.run_episode(0, 6)
        for c in cmds:
            np.testing.assert_allclose(c, sim.state, atol=1e-9)
        assert wait_for(lambda: probe.count(topics.POLICY_STATUS) >= 6, 10)
        st = [json.loads(m.data) for m in probe.decoded(topics.POLICY_STATUS, String)]
        assert all(s["hold"] == "inference_error" for s in st) and "cannot connect" in st[0]["error"]
        assert runner.dead() == {}
    finally:
        runner.stop()
