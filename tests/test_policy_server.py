"""``wam-policy serve``: one policy server, many clients, over openpi's websocket protocol (loopback).

Real parts only: the zoo's tiny ACT and Diffusion (LeRobot, CPU), the synthetic and expert backends
(the expert fed the sim core's own privileged state), our openpi client backend and a raw client that
does what openpi's ``WebsocketClientPolicy`` does; and ``wam-policy eval --serve`` on the real graph.
"""
from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from rosutil import wait_for
from wam_common.config import ConfigError
from wam_policy_node.backends import BackendError, Observation, make_backend, msgpack_numpy
from wam_policy_node.server import PolicyServer

# Tiers: the CLI tests are `ros`; the in-process ones carry none: no DDS, no subprocess, but a tiny ACT
# on CPU behind a websocket server (too slow for make test-unit).

ROOT = Path(__file__).resolve().parents[1]
CAMS = ("cam_high", "cam_left_wrist", "cam_right_wrist")


def obs(i: int, hw=(48, 64), prompt="transfer the cube") -> Observation:
    rng = np.random.default_rng(i)
    return Observation(1_000_000_000 + i * 20_000_000, {c: rng.integers(0, 255, (*hw, 3), dtype=np.uint8) for c in CAMS},
                       rng.uniform(-0.5, 0.5, 14), prompt)


def raw_client(port: int, key: str | None = None):
    """openpi's WebsocketClientPolicy, step for step: connect (Api-Key header), read the metadata."""
    from websockets.sync.client import connect

    ws = connect(f"ws://127.0.0.1:{port}", compression=None, max_size=None, proxy=None, legacy=True,
                 additional_headers={"Authorization": f"Api-Key {key}"} if key else None)
    return ws, msgpack_numpy.unpackb(ws.recv(timeout=30))


@pytest.fixture(scope="module")
def act(tmp_path_factory):
    from wam_policy_node.zoo import save_random_policy

    path = save_random_policy("act", tmp_path_factory.mktemp("zoo") / "act", size="tiny")
    cfg = {"path": str(path), "device": "cpu", "engine": "eager"}
    return cfg, make_backend("lerobot", cfg)


def test_act_round_trip_matches_local_inference(act):
    cfg, local = act
    with PolicyServer("lerobot", cfg, port=0, api_key="s3cret", name="tiny_act") as srv:
        client = make_backend("openpi", srv.client_config())
        for i in range(2):
            o = obs(i)
            ch = client.infer(o)
            np.testing.assert_allclose(ch.actions, local.infer(o).actions, rtol=0, atol=1e-6)
            assert ch.actions.shape == (20, 14) and ch.info["server_infer_ms"] > 0
        assert client.ours and client.connects == 1
        assert client.metadata["policy"] == "tiny_act" and client.metadata["wam_policy"]["needs_images"]

        # openpi's own client: CHW images resized with pad to 224x224, float32 state, no extras
        ws, meta = raw_client(srv.port, "s3cret")
        assert meta == client.metadata
        o = obs(5)
        ws.send(msgpack_numpy.packb({"state": o.state.astype(np.float32), "prompt": o.prompt, "images": {
            c: np.zeros((3, 224, 224), np.uint8) for c in CAMS}}))
        reply = msgpack_numpy.unpackb(ws.recv(timeout=30))
        assert reply["actions"].shape == (20, 14) and np.isfinite(reply["actions"]).all()
        assert reply["server_timing"]["infer_ms"] > 0
        ws.close()

        # health check without a key; a handshake with the wrong key is refused
        with urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/healthz", timeout=10) as r:
            assert r.status == 200
        with pytest.raises(BackendError, match="cannot connect"):
            make_backend("openpi", {**srv.client_config(), "api_key": "wrong"}).infer(obs(0))
        client.close()


def test_two_clients_at_once_each_get_their_own_answers(act):
    cfg, local = act
    want = {i: local.infer(obs(i)).actions for i in range(8)}
    got: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []
    with PolicyServer("lerobot", cfg, port=0) as srv:
        def worker(ids):
            try:
                c = make_backend("openpi", srv.client_config())
                for i in ids:
                    got[i] = c.infer(obs(i)).actions
                c.close()
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(ids,)) for ids in ([0, 2, 4, 6], [1, 3, 5, 7])]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors
        assert srv.connections == 2 and srv.requests == 8
    for i in range(8):
        np.testing.assert_allclose(got[i], want[i], rtol=0, atol=1e-6)


def test_malformed_requests_get_error_replies_and_the_server_keeps_serving(act):
    cfg, local = act
    good = obs(1)
    bad = [
        b"\xc1 not msgpack",
        "a text frame",
        msgpack_numpy.packb([1, 2, 3]),
        msgpack_numpy.packb({"images": {}}),
        msgpack_numpy.packb({"state": np.zeros(7)}),
        msgpack_numpy.packb({"state": np.full(14, np.nan)}),
        msgpack_numpy.packb({"state": np.zeros(14), "images": {"cam_high": np.zeros((48, 64, 3), np.float32)}}),
        msgpack_numpy.packb({"state": np.zeros(14), "images": {"cam_high": np.zeros((48, 64, 3), np.uint8)}}),
        msgpack_numpy.packb({"state": np.zeros(14), "prompt": 3}),
    ]
    want = ["not msgpack", "binary msgpack frame", "must be a map", "no 'state'", "14 finite numbers",
            "14 finite numbers", "CHW or HWC uint8", "lacks image features", "'prompt' must be a string"]
    with PolicyServer("lerobot", cfg, port=0) as srv:
        ws, _ = raw_client(srv.port)
        for msg, text in zip(bad, want):
            ws.send(msg)
            reply = ws.recv(timeout=30)
            assert isinstance(reply, str) and text in reply, (text, reply)
        ws.send(msgpack_numpy.packb({"state": good.state, "images": good.images, "prompt": good.prompt}))
        reply = msgpack_numpy.unpackb(ws.recv(timeout=30))  # the same connection still works
        np.testing.assert_allclose(reply["actions"], local.infer(good).actions, rtol=0, atol=1e-6)
        ws.send(msgpack_numpy.packb({"state": good.state, "images": good.images}))
        ws.close()  # gone before its answer: the server only logs it
        assert srv.errors == len(bad)
        c = make_backend("openpi", srv.client_config())
        np.testing.assert_allclose(c.infer(good).actions, local.infer(good).actions, rtol=0, atol=1e-6)
        c.close()


def test_episode_state_is_per_connection_on_a_shared_model(tmp_path):
    """Diffusion conditions on its last two observations (LeRobot's queues): two clients interleaved on
    ONE served model each get what a model of their own would give (same noise: seeded per request)."""
    import torch

    from wam_policy_node.zoo import save_random_policy

    path = save_random_policy("diffusion", tmp_path / "dp", size="tiny", cameras=("cam_high",))
    cfg = {"path": str(path), "device": "cpu", "engine": "eager"}

    def one(o):
        return Observation(o.stamp_ns, {"cam_high": o.images["cam_high"]}, o.state, o.prompt)

    a, b = [one(obs(i, (96, 96))) for i in (0, 1, 2)], [one(obs(i, (96, 96))) for i in (10, 11)]
    ref_a, ref_b, mixed = make_backend("lerobot", cfg), make_backend("lerobot", cfg), make_backend("lerobot", cfg)

    def seeded(backend, o):
        torch.manual_seed(0)
        return backend.infer(o).actions

    want_a = [seeded(ref_a, o) for o in a[:2]]
    want_b = [seeded(ref_b, o) for o in b]
    ref_a.reset()
    want_a.append(seeded(ref_a, a[2]))  # after an episode start: conditioned on a[2] alone
    seeded(mixed, b[0])
    assert not np.allclose(seeded(mixed, a[1]), want_a[1])  # the queues matter: a shared one would mix
    with PolicyServer("lerobot", cfg, port=0) as srv:
        ca, cb = make_backend("openpi", srv.client_config()), make_backend("openpi", srv.client_config())
        got_a = [seeded(ca, a[0])]
        got_b = [seeded(cb, b[0])]
        got_a.append(seeded(ca, a[1]))
        got_b.append(seeded(cb, b[1]))
        ca.reset({"episode": 1})
        got_a.append(seeded(ca, a[2]))
        ca.close(), cb.close()
    for got, want in ((got_a, want_a), (got_b, want_b)):
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=0, atol=1e-5)


def test_synthetic_and_expert_are_served_per_connection(tmp_path):
    """Model-free backends get one instance per connection: the synthetic one anchors on each client's
    first state and indexes its time by stamp_ns; the served expert plans from the privileged state the
    client sends (the sim core's own), as a local expert does."""
    from sim_bridge.env import SimEnv

    with PolicyServer("synthetic", {"horizon": 10}, port=0) as srv:
        c1, c2 = make_backend("openpi", srv.client_config()), make_backend("openpi", srv.client_config())
        l1, l2 = make_backend("synthetic", {"horizon": 10}), make_backend("synthetic", {"horizon": 10})
        for i in range(3):
            for c, loc, o in ((c1, l1, obs(i)), (c2, l2, obs(100 + i))):
                np.testing.assert_allclose(c.infer(o).actions, loc.infer(o).actions, rtol=0, atol=1e-6)
        c1.reset(), l1.reset()  # a new episode: a new anchor, on c1 only
        np.testing.assert_allclose(c1.infer(obs(7)).actions, l1.infer(obs(7)).actions, rtol=0, atol=1e-6)
        np.testing.assert_allclose(c2.infer(obs(8)).actions, l2.infer(obs(8)).actions, rtol=0, atol=1e-6)
        c1.close(), c2.close()

    envs = {seed: SimEnv("transfer_cube", render=False) for seed in (3, 4)}
    for seed, env in envs.items():
        env.reset(seed)
    with PolicyServer("expert", {}, port=0) as srv:
        cfg = srv.client_config()
        assert cfg["privileged"] and not cfg["images"]
        clients = {seed: make_backend("openpi", cfg) for seed in envs}
        local = {seed: make_backend("expert", {}) for seed in envs}
        got = {}
        for step in (0, 30):
            for seed, env in envs.items():
                priv = json.loads(json.dumps(env.privileged(0, step, step * 20_000_000, 0)))  # as on the topic
                o = Observation(step * 20_000_000, {}, np.zeros(14), "", privileged=priv, step=step)
                got[seed] = clients[seed].infer(o).actions
                np.testing.assert_allclose(got[seed], local[seed].infer(o).actions, rtol=0, atol=1e-9)
        assert not np.allclose(got[3], got[4])  # two plans: each connection its own expert
        for c in clients.values():
            c.close()
    for env in envs.values():
        env.close()


def test_streaming_backends_are_refused():
    from wam_policy_node.backends import Backend, register_backend

    @register_backend("test_streaming")
    class Streaming(Backend):
        streams_observations = True

    with pytest.raises(ConfigError, match="streams observations"):
        PolicyServer("test_streaming", {}, port=0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.ros
def test_cli_serve_until_interrupted(act, tmp_path):
    cfg, local = act
    policy = tmp_path / "tiny_act.yaml"
    policy.write_text(json.dumps({"name": "tiny_act", "wam_policy_node": {"backend": {"type": "lerobot", "lerobot": cfg}}}))
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "wam_apps.cli", "serve", "--policy", str(policy), "--port",
                             str(port)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        def healthy() -> bool:
            assert proc.poll() is None, proc.stdout.read()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5):
                    return True
            except (urllib.error.URLError, OSError):
                return False

        assert wait_for(healthy, 120, interval=0.5), "the server never answered /healthz"
        c = make_backend("openpi", {"port": port, "image_size": [0, 0]})
        np.testing.assert_allclose(c.infer(obs(3)).actions, local.infer(obs(3)).actions, rtol=0, atol=1e-6)
        assert c.metadata["policy"] == "tiny_act"
        c.close()
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert f"on ws://127.0.0.1:{port}" in out and "stopped (1 requests, 0 errors, 0 refused)" in out


@pytest.mark.ros
@pytest.mark.timeout(900)  # three evals (plain, served, served + batched): 419 s measured at load 5-7
def test_eval_serve_with_two_workers_gives_the_same_table_and_commands(tmp_path):
    """The trained ACT loaded once in a policy server, two parallel graphs using it, against the plain
    sequential run: the same outcomes and, lockstep being deterministic, the very same commands; with
    batching on, the same outcomes."""
    from wam_apps.evaluation.results import ResultStore
    from wam_policy_node.backends.replay import read_commands

    suite = tmp_path / "clean.yaml"
    suite.write_text("suite: {name: clean, task: transfer_cube, episodes: 2, seed: 700, levels: [3]}\n")

    def run(out, *extra):
        proc = subprocess.run([sys.executable, "-m", "wam_apps.cli", "eval", "--policy", "act_sim", "--suite",
                               str(suite), "--out", str(out), *extra], cwd=ROOT, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        rows = {r["seed"]: r for r in ResultStore(out).rows()}
        by_bag: dict[str, list[int]] = {}
        for r in rows.values():
            by_bag.setdefault(r["bag"], []).append(r["seed"])
        cmds = {}
        for bag, seeds in by_bag.items():  # a bag holds its graph's episodes in seed order
            episodes = read_commands(bag)
            assert len(episodes) == len(seeds)
            cmds.update({s: np.asarray(c) for s, c in zip(sorted(seeds), episodes)})
        return proc.stdout, rows, cmds

    _, ref_rows, ref_cmds = run(tmp_path / "ref", "--episodes-per-graph", "2")
    out, rows, cmds = run(tmp_path / "served", "--workers", "2", "--episodes-per-graph", "1", "--serve")
    assert "--serve: act_sim on ws://127.0.0.1:" in out
    logs = "".join(p.read_text() for p in (tmp_path / "served" / "logs").rglob("wam_policy_node*") if p.is_file())
    assert logs.count("backend=openpi") == 2 and "backend=lerobot" not in logs
    assert sorted(rows) == [700, 701]
    keys = ("success", "steps", "reason")
    assert {s: [r[k] for k in keys] for s, r in rows.items()} == {s: [r[k] for k in keys] for s, r in ref_rows.items()}
    for s in rows:
        np.testing.assert_array_equal(cmds[s], ref_cmds[s])

    # batching on (issue 22): the workers' waiting requests share forwards; the same table, the commands
    # equal within float tolerance (a batched forward is not bitwise the single one)
    out, rows, cmds = run(tmp_path / "batched", "--workers", "2", "--episodes-per-graph", "1", "--serve",
                          "--serve-batch", "2")
    assert "--serve: act_sim batch sizes (size: forwards): {" in out
    assert {s: [r[k] for k in keys] for s, r in rows.items()} == {s: [r[k] for k in keys] for s, r in ref_rows.items()}
    for s in rows:
        np.testing.assert_allclose(cmds[s], ref_cmds[s], rtol=0, atol=1e-3)


# -- input checks (issue 23): the image size the checkpoint was trained at, error texts, refused keys -----

TRAINED = ROOT / "checkpoints" / "act_transfer_cube"  # ACT trained at cam_high 240x320


@pytest.fixture(scope="module")
def trained_act():
    cfg = {"path": str(TRAINED), "device": "cpu", "engine": "eager", "warmup": 0}
    return cfg, make_backend("lerobot", cfg)


def _request(img: np.ndarray, state: np.ndarray) -> bytes:
    """What openpi's WebsocketClientPolicy sends: CHW uint8 images (its clients resize with pad to 224),
    float32 state, a prompt."""
    return msgpack_numpy.packb({"state": state.astype(np.float32), "prompt": "transfer the cube",
                                "images": {"cam_high": np.ascontiguousarray(img.transpose(2, 0, 1))}})


def test_an_image_of_another_size_than_trained_is_resized_with_pad_or_refused_per_config(trained_act, caplog):
    from wam_policy_node.observation import resize_with_pad

    cfg, local = trained_act
    assert local.image_sizes == {"observation.images.cam_high": (240, 320)}
    rng = np.random.default_rng(7)
    small = rng.integers(0, 255, (224, 224, 3), dtype=np.uint8)
    state = rng.uniform(-0.3, 0.3, 14).astype(np.float32).astype(np.float64)
    # what the checkpoint gets on resize: the 224x224 frame fitted into 240x320 (240x240, 40 px black each side)
    padded = resize_with_pad(small, 240, 320)
    assert padded.shape == (240, 320, 3) and not padded[:, :40].any() and not padded[:, -40:].any()
    want = local.infer(Observation(0, {"cam_high": padded}, state, "transfer the cube")).actions

    caplog.set_level("INFO", logger="wam_policy")
    with PolicyServer("lerobot", cfg, port=0, image_mismatch="resize") as srv:
        ws, meta = raw_client(srv.port)
        assert meta["wam_policy"]["image_sizes"] == {"observation.images.cam_high": [240, 320]}
        assert meta["wam_policy"]["image_mismatch"] == "resize"
        ws.send(_request(small, state))
        reply = msgpack_numpy.unpackb(ws.recv(timeout=60))
        np.testing.assert_allclose(reply["actions"], want, rtol=0, atol=1e-5)
        ws.close()
    assert "image 'cam_high' is 224x224, the checkpoint's observation.images.cam_high is 320x240: resized" in caplog.text

    with PolicyServer("lerobot", cfg, port=0, image_mismatch="refuse") as srv:
        ws, meta = raw_client(srv.port)
        assert meta["wam_policy"]["image_mismatch"] == "refuse"
        ws.send(_request(small, state))
        reply = ws.recv(timeout=60)
        assert isinstance(reply, str) and "image 'cam_high' is 224x224" in reply and "trained at 320x240" in reply, reply
        ws.send(_request(padded, state))  # the trained size passes, on the same connection
        np.testing.assert_allclose(msgpack_numpy.unpackb(ws.recv(timeout=60))["actions"], want, rtol=0, atol=1e-5)
        ws.close()
        assert srv.errors == 1 and srv.requests == 1


def test_error_texts_name_the_nan_and_the_bytes_and_refused_keys_are_logged(act, caplog):
    cfg, _ = act
    caplog.set_level("INFO", logger="wam_policy")
    state = np.zeros(14)
    state[3], state[11] = np.nan, np.inf
    bad_array = msgpack_numpy.packb({"state": np.zeros(14)})
    bad_array = bad_array.replace(b"<f8", b"<f4")  # the header's dtype no longer fits its 112 bytes
    with PolicyServer("lerobot", cfg, port=0, api_key="s3cret") as srv:
        ws, _ = raw_client(srv.port, "s3cret")
        ws.send(msgpack_numpy.packb({"state": state}))
        assert ws.recv(timeout=30) == "RequestError: 'state' must be 14 finite numbers: state[3] = nan, state[11] = inf"
        ws.send(bad_array)
        reply = ws.recv(timeout=30)
        assert "not msgpack-numpy" in reply and "shape (14,) needs 56 bytes, got 112" in reply, reply
        ws.close()
        for key in (None, "wrong"):
            with pytest.raises(Exception, match="401"):
                raw_client(srv.port, key)
        assert srv.refused == 2
    refused = [r.getMessage() for r in caplog.records if r.getMessage().startswith("refused ")]
    assert len(refused) == 2 and all(m.startswith("refused 127.0.0.1:") for m in refused), refused
    assert "no API key" in refused[0] and "a wrong API key" in refused[1]
