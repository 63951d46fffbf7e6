"""``wam-policy serve`` batching and admission (issue 22): requests of several clients in one forward,
each client's answer what it would get alone; a configured maximum of clients, refused clearly beyond it.

Real parts only: the zoo's tiny random-weight ACT (LeRobot, eager) and π0.5 (the fast engine, CPU),
openpi's wire protocol over loopback websockets (a raw client doing what openpi's
``WebsocketClientPolicy`` does, and our ``openpi`` backend). No wall-clock threshold: the batch under
test is formed deterministically (a long window that closes once every connected client waits).
"""
from __future__ import annotations

import threading

import numpy as np
import pytest

from rosutil import wait_for
import test_policy_server as _server_tests
from wam_common.config import ConfigError
from wam_policy_node.backends import BackendError, Observation, make_backend, msgpack_numpy
from wam_policy_node.server import PolicyServer, batch_config

# Tiers: the config checks are `unit`; the others carry none (no DDS, no subprocess, but tiny models on
# CPU behind a websocket server: too slow for make test-unit), like tests/test_policy_server.py.

CAMS = ("cam_high", "cam_left_wrist", "cam_right_wrist")
LONG = 30_000.0  # ms: the window never runs out in these tests; a batch closes when every client waits


def obs(i: int, hw=(48, 64), prompt="transfer the cube") -> Observation:
    rng = np.random.default_rng(i)
    return Observation(1_000_000_000 + i * 20_000_000, {c: rng.integers(0, 255, (*hw, 3), dtype=np.uint8) for c in CAMS},
                       rng.uniform(-0.5, 0.5, 14), prompt)


def request(o: Observation) -> bytes:
    """What openpi's client sends: CHW uint8 images, float32 state, a prompt."""
    return msgpack_numpy.packb({"state": o.state.astype(np.float32), "prompt": o.prompt,
                                "images": {c: np.ascontiguousarray(im.transpose(2, 0, 1)) for c, im in o.images.items()}})


act = _server_tests.act  # the tiny random-weight ACT (a module fixture of its own here)
raw_client = _server_tests.raw_client


def _sent(o: Observation) -> Observation:
    """``o`` as the server reads it off the wire (state through float32)."""
    return Observation(o.stamp_ns, o.images, o.state.astype(np.float32).astype(np.float64), o.prompt)


# -- the backend's batched call ----------------------------------------------------------------------

def test_lerobot_batched_forward_gives_each_observation_its_own_chunk(act):
    """One predict_action_chunk for four observations (each pre-processed on its own, stacked) = four
    single inferences; an observation that cannot be pre-processed gets its own error, the rest run."""
    _, local = act
    assert local.batch_unsupported() == ""
    os_ = [obs(i, prompt=p) for i, p in zip(range(4), ("transfer the cube", "", "pick", "transfer the cube"))]
    want = [local.infer(o).actions for o in os_]
    bad = Observation(0, {"cam_high": os_[0].images["cam_high"]}, np.zeros(14))  # two cameras missing
    got = local.infer_batch([os_[0], bad, *os_[1:]])
    assert isinstance(got[1], BackendError) and "lacks image features" in str(got[1])
    for g, w in zip([got[0], *got[2:]], want):
        assert g.info["batch"] == 4 and g.actions.shape == (20, 14)
        np.testing.assert_allclose(g.actions, w, rtol=0, atol=1e-5)
    assert not np.allclose(got[0].actions, got[2].actions)  # rows are not mixed up: each its own


def _pi05_engine_rows(device: str, tmp_path):
    """The π0.5 fast engine at batch sizes 1, 2 and 3: each row of a stacked batch, with its row of the
    noise, gives that row's single-batch chunk; buffers (and on a GPU CUDA graphs) per batch size."""
    import torch

    from lerobot.policies.factory import get_policy_class

    from wam_policy_node.engines import make_engine
    from wam_policy_node.zoo import randomise
    from wam_policy_node.zoo.parts import make_config, random_batch, tiny_dims

    with tiny_dims():
        cfg = make_config("pi05", image_size=56, tokenizer_max_length=12)
        pol = get_policy_class("pi05")(cfg)
        randomise(pol)
        pol.save_pretrained(tmp_path)
        fast = make_engine(tmp_path, impl="fast", device=device, dtype="float32")
    rows = [random_batch(cfg, n_valid_tokens=3 + i, seed=i, device=device) for i in range(3)]
    noise = torch.randn(3, cfg.chunk_size, cfg.max_action_dim, generator=torch.Generator().manual_seed(5)).to(device)
    single = [fast.predict_action_chunk(r, noise=noise[i:i + 1]).clone() for i, r in enumerate(rows)]
    for b in (2, 3):
        stacked = {k: torch.cat([r[k] for r in rows[:b]]) for k in rows[0]}
        out = fast.predict_action_chunk(stacked, noise=noise[:b])
        assert out.shape[0] == b
        for i in range(b):
            torch.testing.assert_close(out[i:i + 1], single[i], rtol=0, atol=1e-4 if device == "cpu" else 2e-3)
    assert {k[0] for k in fast._static} == {1, 2, 3}  # (batch size, prompt length) → buffers
    assert not torch.allclose(single[0], single[1])
    return fast


def test_pi05_fast_engine_batches_rows_independently(tmp_path):
    _pi05_engine_rows("cpu", tmp_path)


@pytest.mark.gpu
def test_pi05_fast_engine_batches_on_cuda_graphs_per_batch_size(tmp_path):
    """On CUDA (TF32 matmuls: a looser bound than CPU's fp32): one captured graph per batch size, each
    row its own; and the backend's start-up warm-up captures the server's batch sizes."""
    from wam_policy_node.backends.lerobot import LeRobotBackend
    from wam_policy_node.zoo import save_random_policy
    from wam_policy_node.zoo.parts import tiny_dims

    fast = _pi05_engine_rows("cuda", tmp_path / "engine")
    assert {k[0] for k in fast._graphs if k[0] != "vision"} == {1, 2, 3}
    with tiny_dims():
        path = save_random_policy("pi05", tmp_path / "pi05", size="tiny", seed=3)
        b = LeRobotBackend({"path": str(path), "device": "cuda", "engine": "fast", "warmup": 1})
    b.warm_batches([2, 4])
    assert {1, 2, 4} <= {k[0] for k in b.policy._graphs if k[0] != "vision"}
    got = b.infer_batch([obs(i) for i in range(4)])
    assert all(g.info["batch"] == 4 and np.isfinite(g.actions).all() for g in got)
    assert not np.allclose(got[0].actions, got[1].actions)


# -- the server ---------------------------------------------------------------------------------------

def test_requests_waiting_together_run_as_one_forward_each_client_its_own_answer(act, caplog):
    cfg, local = act
    caplog.set_level("INFO", logger="wam_policy")
    os_ = [obs(10 + i) for i in range(4)]
    want = [local.infer(_sent(o)).actions for o in os_]
    with PolicyServer("lerobot", cfg, port=0, batch={"max_size": 4, "window_ms": LONG}) as srv:
        clients = [raw_client(srv.port) for _ in range(4)]
        meta = clients[0][1]["wam_policy"]
        assert meta["batching"] == {"mode": "batched", "max_size": 4, "window_ms": LONG, "why": ""}
        assert wait_for(lambda: srv.open == 4, 30)
        for (ws, _), o in zip(clients, os_):
            ws.send(request(o))
        replies = [msgpack_numpy.unpackb(ws.recv(timeout=120)) for ws, _ in clients]
        for r, w in zip(replies, want):
            assert r["server_timing"]["batch"] == 4
            np.testing.assert_allclose(r["actions"], w, rtol=0, atol=1e-5)
        assert srv.batches == {4: 1}

        # a lone client (the others gone) never waits for the window: its request runs at once, alone
        for ws, _ in clients[1:]:
            ws.close()
        assert wait_for(lambda: srv.open == 1, 30)
        ws = clients[0][0]
        ws.send(request(os_[1]))
        r = msgpack_numpy.unpackb(ws.recv(timeout=120))
        assert r["server_timing"]["batch"] == 1 and r["server_timing"]["queue_ms"] < LONG
        np.testing.assert_allclose(r["actions"], want[1], rtol=0, atol=1e-6)

        # a bad request in a batch is answered with its error; its neighbour gets its chunk
        ws2, _ = raw_client(srv.port)
        assert wait_for(lambda: srv.open == 2, 30)
        ws.send(msgpack_numpy.packb({"state": np.zeros(14), "images": {"cam_high": np.zeros((3, 48, 64), np.uint8)}}))
        ws2.send(request(os_[2]))
        err = ws.recv(timeout=120)
        assert isinstance(err, str) and "lacks image features" in err, err
        np.testing.assert_allclose(msgpack_numpy.unpackb(ws2.recv(timeout=120))["actions"], want[2], rtol=0, atol=1e-5)
        assert srv.batches == {1: 1, 2: 1, 4: 1} and srv.errors == 1
        ws.close(), ws2.close()
    assert "batching: up to 4 requests per forward" in caplog.text


def test_batched_clients_interleaved_get_what_each_gets_alone(act):
    """Two clients of the batched server in parallel threads, each its own sequence of observations
    (episode starts between them): every answer is what a model of its own gives."""
    cfg, local = act
    seqs = {0: [obs(i) for i in range(20, 24)], 1: [obs(i) for i in range(40, 44)]}
    want = {k: [local.infer(o).actions for o in v] for k, v in seqs.items()}
    got: dict[int, list] = {0: [], 1: []}
    errors: list[BaseException] = []
    with PolicyServer("lerobot", cfg, port=0, batch={"max_size": 2, "window_ms": 5.0}) as srv:
        def worker(k):
            try:
                c = make_backend("openpi", srv.client_config())
                for j, o in enumerate(seqs[k]):
                    if j == 2:
                        c.reset({"episode": j})
                    got[k].append(c.infer(o).actions)
                c.close()
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(k,)) for k in seqs]
        for t in threads:
            t.start()
        for t in threads:
            t.join(180)
        assert not errors, errors
        assert srv.requests == 8
    for k in seqs:
        for g, w in zip(got[k], want[k], strict=True):
            np.testing.assert_allclose(g, w, rtol=0, atol=1e-5)


def test_diffusion_and_per_connection_backends_run_one_at_a_time_and_say_so(tmp_path, caplog):
    """Diffusion conditions on each client's queues: batching would mix them, so requests run one after
    the other on each session's own state; a model-free backend is one instance per connection."""
    from wam_policy_node.zoo import save_random_policy

    caplog.set_level("INFO", logger="wam_policy")
    path = save_random_policy("diffusion", tmp_path / "dp", size="tiny", cameras=("cam_high",))
    with PolicyServer("lerobot", {"path": str(path), "device": "cpu", "engine": "eager"}, port=0,
                      batch={"max_size": 4}) as srv:
        _, meta = raw_client(srv.port)
        assert meta["wam_policy"]["batching"]["mode"] == "sequential"
        assert "diffusion conditions on each client's observation queues" in meta["wam_policy"]["batching"]["why"]
    assert "batching asked for (max_size 4) but requests run one at a time: lerobot: diffusion" in caplog.text
    srv = PolicyServer("synthetic", {}, port=0, batch={"max_size": 4})
    assert srv.batch_mode == "sequential" and "built per connection" in srv.batch_why
    srv.close()


@pytest.mark.unit
def test_batch_and_admission_settings_are_checked():
    assert batch_config(None) == {"max_size": 1, "window_ms": 2.0}  # off by default
    assert batch_config({"max_size": 8}) == {"max_size": 8, "window_ms": 2.0}
    for bad, key in (({"max_size": 0}, "batch.max_size"), ({"max_size": 2.5}, "batch.max_size"),
                     ({"window_ms": -1}, "batch.window_ms"), ({"window_ms": "soon"}, "batch"),
                     ({"size": 4}, "batch.size")):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            batch_config(bad)
    with pytest.raises(ConfigError, match="max_clients"):
        PolicyServer("synthetic", {}, port=0, max_clients=-1)
    srv = PolicyServer("synthetic", {}, port=0)
    assert srv.batch_mode == "off" and srv.metadata["wam_policy"]["batching"]["mode"] == "off"
    srv.close()


def test_a_client_beyond_max_clients_is_refused_with_the_reason(caplog):
    from websockets.exceptions import ConnectionClosed

    caplog.set_level("INFO", logger="wam_policy")
    with PolicyServer("synthetic", {"horizon": 10}, port=0, max_clients=2) as srv:
        assert srv.metadata["wam_policy"]["max_clients"] == 2
        first = [make_backend("openpi", srv.client_config()) for _ in range(2)]
        for c in first:
            c.infer(obs(0))
        # openpi's own client: the metadata recv raises, naming the reason
        from websockets.sync.client import connect

        ws = connect(f"ws://127.0.0.1:{srv.port}", compression=None, max_size=None, proxy=None, legacy=True)
        with pytest.raises(ConnectionClosed) as exc:
            ws.recv(timeout=30)
        assert exc.value.rcvd.code == 1013 and "server full: 2 of max_clients 2 connected" in exc.value.rcvd.reason
        # our openpi backend reports it as a failed connection (the node holds)
        third = make_backend("openpi", srv.client_config())
        with pytest.raises(BackendError, match="server full"):
            third.infer(obs(1))
        assert srv.refused == 2 and srv.connections == 2
        # a place frees up: the next client is served
        first[0].close()
        assert wait_for(lambda: srv.open == 1, 30)
        c = make_backend("openpi", {**srv.client_config(), "reconnect_s": 0.0})
        assert c.infer(obs(2)).actions.shape == (10, 14)
        c.close(), first[1].close()
    refused = [r.getMessage() for r in caplog.records if r.getMessage().startswith("refused ")]
    assert len(refused) == 2 and all("server full" in m for m in refused), refused
