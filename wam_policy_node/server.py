"""One policy server for many clients: any backend behind openpi's websocket protocol.

    wam-policy serve --policy config/policies/act_sim.yaml [--host 127.0.0.1] [--port 8000]

The wire format is openpi's ``WebsocketPolicyServer`` (``scripts/serve_policy.py``), so openpi's own
``WebsocketClientPolicy`` and our ``openpi`` backend both talk to it: on connect the server sends a
msgpack-numpy metadata map; then each binary frame ``msgpack({"state": (14,), "images": {key: CHW or
HWC uint8}, "prompt": str})`` is answered with ``msgpack({"actions": (H, 14), "server_timing":
{"infer_ms", "queue_ms", "prev_total_ms"}})``; a request the server cannot answer gets a text frame
(the error; openpi's clients raise it). ``GET /healthz`` answers 200 (no key needed); with an API key,
a handshake without ``Authorization: Api-Key <key>`` is refused (401).

What the server adds to openpi's (advertised under the metadata's ``wam_policy`` key, used by our
client only when present): requests may carry ``privileged`` (the sim's privileged state: a served
``expert``), ``step``, ``stamp_ns`` and ``inference_delay``; ``{"__ctrl__": "episode_start",
"__episode__": {...}}`` resets the connection's episode (answered ``{"__ack__": "episode_start"}``, the
shape an openpi fork's client uses); after an error the connection stays open (openpi closes it), so
the connection's episode state survives a held step.

Many clients, one model: requests run on a single inference thread, in arrival order, one at a time
unless batching is on. With ``batch.max_size`` > 1 (``--batch-max-size``) requests of different clients
that are waiting together go into ONE forward (``Backend.infer_batch``: the LeRobot backend stacks their
pre-processed batches along dim 0; the fast π engines keep one CUDA graph per batch size, captured at
start-up): after the first request of a batch arrives, the server waits at most ``batch.window_ms`` for
others, and not at all once every connected client has a request waiting (a lone client never waits)
or ``max_size`` are in; requests arriving while a forward runs form the next batch. A lone request runs
exactly as without batching. A backend whose inference reads per-client state (Diffusion's queues, RTC,
streaming) or that is built per connection runs the batch one request after the other, and says so (a
log line; the metadata's ``wam_policy.batching``). Batching is off by default: a batched forward is not
bitwise the single one (other GEMM shapes; float tolerance), which would break lockstep replays that
compare commands exactly, and each batch size costs the fast engine its own buffers and CUDA graph.

Admission: ``max_clients`` (``--max-clients``; 0 = no limit) connections at a time; one more is
accepted and at once closed with code 1013 (try again later) and the reason (``server full: ...``),
which openpi's client raises on its first ``recv`` (and our ``openpi`` backend reports); the server logs
it and counts it in ``refused``.

Episode state is per connection: a backend that loads a model (``lerobot``) is built once and the
per-episode attributes its ``reset`` re-creates (``Backend.episode_state``: RTC's last chunk,
Diffusion's observation queues) are swapped in for the connection whose request runs; a model-free backend
(``expert``, ``replay``, ``synthetic``, ...) is built per connection. A streaming backend (LingBot-VA:
``observe`` at every step) is refused: openpi's request/reply protocol has no per-step observations.
"""
from __future__ import annotations

import asyncio
import http
import logging
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from wam_common.config import ConfigError, deep_merge
from wam_common.policies import load_policy_config
from wam_common.topics import STATE_DIM

from .backends import Backend, BackendError, Observation, make_backend, msgpack_numpy
from .observation import IMAGE_MISMATCH

log = logging.getLogger("wam_policy.server")

PROTOCOL = 1
_MISSING = object()
BATCH_DEFAULTS = {"max_size": 1, "window_ms": 2.0}  # batching off; the window once it is on
FULL_CODE = 1013  # websocket close code "try again later" (RFC 6455 registry)


def batch_config(batch: Mapping | None) -> dict:
    """``batch`` settings (``max_size`` ≥ 1: requests per forward, 1 = off; ``window_ms`` ≥ 0: the most a
    batch waits for more requests) with the defaults, or a ConfigError naming the bad key."""
    cfg = dict(BATCH_DEFAULTS)
    for k, v in dict(batch or {}).items():
        if k not in cfg:
            raise ConfigError(f"key 'batch.{k}': unknown (known: {', '.join(cfg)})")
        cfg[k] = v
    try:
        size, window = int(cfg["max_size"]), float(cfg["window_ms"])
    except (TypeError, ValueError):
        raise ConfigError(f"key 'batch': max_size must be an integer and window_ms a number, got {cfg}") from None
    if size < 1 or size != cfg["max_size"]:
        raise ConfigError(f"key 'batch.max_size': an integer ≥ 1 (1 = no batching), got {cfg['max_size']!r}")
    if not (0.0 <= window <= 60_000.0):
        raise ConfigError(f"key 'batch.window_ms': 0 to 60000 ms, got {cfg['window_ms']!r}")
    return {"max_size": size, "window_ms": window}


class RequestError(ValueError):
    """A request the server cannot read: answered with a text frame, the connection stays open."""


def to_observation(msg: Any) -> Observation:
    """An openpi request map → :class:`Observation` (images CHW or HWC uint8 → HWC)."""
    if not isinstance(msg, Mapping):
        raise RequestError(f"a request must be a map, got {type(msg).__name__}")
    if "state" not in msg:
        raise RequestError(f"the request has no 'state' (keys: {sorted(map(str, msg))})")
    try:
        state = np.asarray(msg["state"], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise RequestError(f"'state' is not numeric: {exc}") from None
    if state.shape != (STATE_DIM,):
        raise RequestError(f"'state' must be {STATE_DIM} finite numbers, got shape {state.shape}")
    bad = np.flatnonzero(~np.isfinite(state))
    if bad.size:
        what = ", ".join(f"state[{i}] = {state[i]}" for i in bad[:4]) + (f" (+{bad.size - 4} more)" if bad.size > 4 else "")
        raise RequestError(f"'state' must be {STATE_DIM} finite numbers: {what}")
    images = msg.get("images")
    images = {} if images is None else images
    if not isinstance(images, Mapping):
        raise RequestError(f"'images' must map key → image, got {type(images).__name__}")
    out = {}
    for key, img in images.items():
        if not isinstance(img, np.ndarray):
            raise RequestError(f"image '{key}' must be an array (msgpack-numpy), got {type(img).__name__}")
        a = img
        if a.dtype != np.uint8 or a.ndim != 3 or 3 not in (a.shape[0], a.shape[2]):
            raise RequestError(f"image '{key}' must be CHW or HWC uint8 with 3 channels, got {a.dtype} {a.shape}")
        out[str(key)] = np.ascontiguousarray(a if a.shape[2] == 3 else a.transpose(1, 2, 0))
    prompt = msg.get("prompt")
    prompt = "" if prompt is None else prompt
    priv = msg.get("privileged")
    if not isinstance(prompt, str) or not (priv is None or isinstance(priv, Mapping)):
        raise RequestError("'prompt' must be a string and 'privileged' a map")
    try:
        step = None if msg.get("step") is None else int(msg["step"])
        return Observation(int(msg.get("stamp_ns", 0)), out, state, prompt, dict(priv) if priv else None, step,
                           inference_delay=int(msg.get("inference_delay", 0)))
    except (TypeError, ValueError, OverflowError) as exc:
        raise RequestError(f"'stamp_ns', 'step' and 'inference_delay' must be integers: {exc}") from None


def read_request(raw: Any) -> Observation | Mapping:
    """One websocket frame as the server reads it: an :class:`Observation`, or the control map of a
    ``{"__ctrl__": ...}`` frame; anything else raises :class:`RequestError` naming the problem (what the
    bytes failed on: msgpack, the array header, a field)."""
    if not isinstance(raw, (bytes, bytearray)):
        raise RequestError("expected a binary msgpack frame, got text")
    try:
        msg = msgpack_numpy.unpackb(bytes(raw))
    except Exception as exc:  # noqa: BLE001 - any undecodable payload is the client's error
        raise RequestError(f"not msgpack-numpy: {type(exc).__name__}: {exc}") from None
    if isinstance(msg, Mapping) and "__ctrl__" in msg:
        if not isinstance(msg["__ctrl__"], str):
            raise RequestError(f"'__ctrl__' must be a string, got {type(msg['__ctrl__']).__name__}")
        return msg
    return to_observation(msg)


def _get(obj, path: str):
    for part in path.split("."):
        obj = getattr(obj, part, _MISSING)
        if obj is _MISSING:
            break
    return obj


def _set(obj, path: str, value) -> None:
    head, _, last = path.rpartition(".")
    owner = _get(obj, head) if head else obj
    if owner is not _MISSING and value is not _MISSING:
        setattr(owner, last, value)


@dataclass(eq=False)
class _Session:
    """One connection: its backend (shared or its own) and, while another connection's request holds
    a shared backend, the episode state it left there (None: a fresh episode, reset on its next turn)."""

    backend: Backend
    peer: str
    state: dict | None = None
    episode: dict | None = None


class PolicyServer:
    """Serve one backend (``make_backend(btype, cfg)``) to many websocket clients.

    ``start()`` runs it in a thread (``port`` 0 picks a free port; ``self.port`` says which);
    ``serve_forever()`` runs it in the calling thread. The backend is built here, before either."""

    def __init__(self, btype: str, cfg: Mapping | None = None, host: str = "127.0.0.1", port: int = 8000,
                 api_key: str = "", name: str = "", image_mismatch: str | None = None,
                 batch: Mapping | None = None, max_clients: int = 0):
        self.btype, self.cfg = btype, dict(cfg or {})
        self.batch = batch_config(batch)
        if int(max_clients) < 0 or int(max_clients) != max_clients:
            raise ConfigError(f"key 'max_clients': an integer ≥ 0 (0 = no limit), got {max_clients!r}")
        self.max_clients = int(max_clients)
        if image_mismatch is not None:
            if image_mismatch not in IMAGE_MISMATCH:
                raise ConfigError(f"image_mismatch must be one of {', '.join(IMAGE_MISMATCH)}, got {image_mismatch!r}")
            self.cfg["image_mismatch"] = image_mismatch  # the lerobot backend's option (the others take any size)
        self.host, self.port, self.api_key = host, int(port), api_key
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="policy-server")  # the one inference thread
        template = make_backend(btype, self.cfg)
        if template.streams_observations:
            template.close()
            raise ConfigError(f"backend '{btype}' streams observations (observe() at every step): it cannot be "
                              "served over openpi's request/reply protocol; run it in wam_policy_node")
        self.flags = {k: bool(getattr(template, k)) for k in ("needs_images", "needs_privileged", "supports_rtc")}
        # a backend naming its episode state is built ONCE and shared; the others per connection
        self.shared = template if template.episode_state else None
        if self.shared is None:
            template.close()
        # the image sizes the checkpoint was trained at (model key → [height, width]) and what happens
        # to other sizes: a client can resize with pad itself (openpi's clients do, to 224x224)
        self.image_sizes = {k: [int(v) for v in hw] for k, hw in dict(template.image_sizes).items()}
        self.image_mismatch = str(getattr(template, "image_mismatch", "")) if self.image_sizes else ""
        # batching: "off" (max_size 1), "batched" (one forward per batch) or "sequential" (why: the reason)
        self.batch_mode, self.batch_why = "off", ""
        if self.batch["max_size"] > 1:
            why = (f"backend '{btype}' is built per connection (no shared model)" if self.shared is None
                   else self.shared.batch_unsupported())
            self.batch_mode, self.batch_why = ("sequential", why) if why else ("batched", "")
            if self.batch_mode == "batched":
                self.shared.warm_batches(range(2, self.batch["max_size"] + 1))
        self.metadata = {"policy": name or btype, "backend": btype,
                         "wam_policy": {"protocol": PROTOCOL, "episode_start": True, **self.flags,
                                        "image_sizes": self.image_sizes, "image_mismatch": self.image_mismatch,
                                        "batching": {"mode": self.batch_mode, **self.batch, "why": self.batch_why},
                                        "max_clients": self.max_clients}}
        self._owner: _Session | None = None  # whose episode state the shared backend holds
        self.requests = self.errors = self.refused = 0
        self.connections = 0
        self.open = 0  # connections open now (admission, and the batch window: all of them waiting)
        self.batches: dict[int, int] = {}  # batch size → how many ran (batched mode; 1: a lone request)
        self._pending: list[tuple] = []  # (session, observation, queued, future) waiting for a batch
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Future | None = None
        self._thread: threading.Thread | None = None

    # -- what a client needs ---------------------------------------------------------------
    def client_config(self, lockstep: bool = False) -> dict:
        """``backend.openpi`` settings for a wam_policy_node served by this server: images as the node
        maps them (no resize), privileged state / cameras as the served backend needs them; in lockstep a
        request waits as long as the sim does (a timeout would be a hold: the run would not replay)."""
        cfg = {"host": self.host, "port": self.port, "api_key": self.api_key, "image_size": [0, 0],
               "privileged": self.flags["needs_privileged"], "images": self.flags["needs_images"]}
        if lockstep:
            cfg.update(timeout_s=600.0, connect_timeout_s=30.0)
        return cfg

    # -- the model thread (everything that touches a backend runs here, one call at a time) ----------
    def _turn(self, s: _Session) -> None:
        """Give the shared backend to session ``s``: park its holder's episode state, restore s's."""
        if self.shared is None or self._owner is s:
            return
        attrs = self.shared.episode_state
        if self._owner is not None:
            self._owner.state = {a: _get(self.shared, a) for a in attrs}
        if s.state is None:
            self.shared.reset(s.episode)  # re-creates every attribute in episode_state
        else:
            for a, v in s.state.items():
                _set(self.shared, a, v)
            s.state = None
        self._owner = s

    def _open(self, peer: str) -> _Session:
        return _Session(self.shared or make_backend(self.btype, self.cfg), peer)

    def _reset(self, s: _Session, episode: dict | None) -> None:
        s.episode, s.state = episode, None
        if self.shared is None:
            s.backend.reset(episode)
        elif self._owner is s:
            self._owner = None  # its next turn starts from reset()

    def _infer(self, s: _Session, obs: Observation, queued: float):
        t0 = time.monotonic()
        self._turn(s)
        chunk = s.backend.infer(obs)
        return chunk, (t0 - queued) * 1e3, (time.monotonic() - t0) * 1e3

    def _infer_many(self, items: list[tuple]) -> list:
        """A batch of (session, observation, queued, future): one ``infer_batch`` forward (batched mode,
        two or more) or one request after the other (each on its session's episode state); per item
        (chunk, queue_ms, infer_ms) or the exception its inference raised."""
        if self.batch_mode == "batched":
            self.batches[len(items)] = self.batches.get(len(items), 0) + 1
        if len(items) == 1 or self.batch_mode != "batched":
            out = []
            for s, obs, queued, _ in items:
                try:
                    out.append(self._infer(s, obs, queued))
                except Exception as exc:  # noqa: BLE001 - this request's error
                    out.append(exc)
            return out
        t0 = time.monotonic()
        chunks = self.shared.infer_batch([obs for _, obs, _, _ in items])
        infer_ms = (time.monotonic() - t0) * 1e3
        return [c if isinstance(c, Exception) else (c, (t0 - queued) * 1e3, infer_ms)
                for c, (_, _, queued, _) in zip(chunks, items)]

    def _close(self, s: _Session) -> None:
        if self._owner is s:
            self._owner = None
        if s.backend is not self.shared:
            s.backend.close()

    # -- the websocket side ----------------------------------------------------------------
    async def _call(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def _answer(self, s: _Session, raw) -> dict:
        queued = time.monotonic()
        req = read_request(raw)
        if not isinstance(req, Observation):
            ctrl = req["__ctrl__"]
            if ctrl == "episode_start":
                ep = req.get("__episode__")
                await self._call(self._reset, s, dict(ep) if isinstance(ep, Mapping) else None)
            return {"__ack__": ctrl if ctrl in ("episode_start", "episode_end") else "ignored"}
        if self.batch_mode != "batched":  # off, or sequential anyway: no window to wait
            chunk, queue_ms, infer_ms = await self._call(self._infer, s, req, queued)
            batch = 1
        else:
            fut = asyncio.get_running_loop().create_future()
            self._pending.append((s, req, queued, fut))
            self._wake.set()
            chunk, queue_ms, infer_ms = await fut
            batch = int(chunk.info.get("batch", 1))
        self.requests += 1
        return {"actions": chunk.actions, "server_timing": {"infer_ms": infer_ms, "queue_ms": queue_ms,
                                                            "batch": batch}}

    async def _batcher(self) -> None:
        """Gathers waiting requests into batches (see the module doc) and runs each on the model thread."""
        loop = asyncio.get_running_loop()
        size, window = self.batch["max_size"], self.batch["window_ms"] / 1e3
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._pending:
                continue
            deadline = loop.time() + window
            while len(self._pending) < min(size, self.open):
                left = deadline - loop.time()
                if left <= 0:
                    break
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), left)
                except TimeoutError:
                    break
            items, self._pending = self._pending[:size], self._pending[size:]
            if self._pending:
                self._wake.set()
            try:
                results = await self._call(self._infer_many, items)
            except Exception as exc:  # noqa: BLE001 - every request of the batch gets the error
                results = [exc] * len(items)
            for (_, _, _, fut), r in zip(items, results):
                if fut.done():
                    continue
                if isinstance(r, BaseException):
                    fut.set_exception(r)
                else:
                    fut.set_result(r)

    async def _handler(self, ws) -> None:
        import websockets

        peer = f"{ws.remote_address[0]}:{ws.remote_address[1]}" if ws.remote_address else "?"
        if self.max_clients and self.open >= self.max_clients:
            self.refused += 1
            reason = f"server full: {self.open} of max_clients {self.max_clients} connected; try again later"
            log.warning("refused %s: %s", peer, reason)
            await ws.close(FULL_CODE, reason)
            return
        self.connections += 1
        self.open += 1
        log.info("connection from %s opened", peer)
        packer = msgpack_numpy.Packer()
        try:
            s = await self._call(self._open, peer)
        except BaseException:
            self.open -= 1
            raise
        try:
            await ws.send(packer.pack(self.metadata))
            prev_total = None
            while True:
                raw = await ws.recv()
                t0 = time.monotonic()
                try:
                    reply = await self._answer(s, raw)
                except Exception as exc:  # noqa: BLE001 - answered, never fatal to the server
                    self.errors += 1
                    known = isinstance(exc, (RequestError, BackendError, ConfigError))
                    text = f"{type(exc).__name__}: {exc}" if known else traceback.format_exc()
                    log.warning("%s: %s", peer, text.strip().splitlines()[-1])
                    await ws.send(text)
                    continue
                if prev_total is not None and "server_timing" in reply:
                    reply["server_timing"]["prev_total_ms"] = prev_total
                await ws.send(packer.pack(reply))
                prev_total = (time.monotonic() - t0) * 1e3
        except websockets.ConnectionClosed:
            log.info("connection from %s closed", peer)
        finally:
            self.open -= 1
            await self._call(self._close, s)

    def _process_request(self, conn, request):
        if request.path == "/healthz":
            return conn.respond(http.HTTPStatus.OK, "OK\n")
        if self.api_key:
            got = request.headers.get("Authorization")
            if got != f"Api-Key {self.api_key}":
                addr = getattr(conn, "remote_address", None)
                peer = f"{addr[0]}:{addr[1]}" if addr else "?"
                self.refused += 1
                log.warning("refused %s: %s API key (path %s)", peer,
                            "no" if got is None else "a wrong" if got.startswith("Api-Key ") else "a malformed",
                            request.path)
                return conn.respond(http.HTTPStatus.UNAUTHORIZED, "missing or wrong API key\n")
        return None

    async def _main(self, started: threading.Event | None = None) -> None:
        from websockets.asyncio.server import serve

        self._loop = asyncio.get_running_loop()
        self._stop = self._loop.create_future()
        self._wake = asyncio.Event()
        batcher = self._loop.create_task(self._batcher()) if self.batch_mode == "batched" else None
        async with serve(self._handler, self.host, self.port, compression=None, max_size=None,
                         process_request=self._process_request) as srv:
            self.port = srv.sockets[0].getsockname()[1]
            log.info("serving %s (backend %s) on ws://%s:%d", self.metadata["policy"], self.btype, self.host, self.port)
            for key, (h, w) in self.image_sizes.items():
                log.info("image %s: %dx%d (WxH) as trained; other sizes: %s", key, w, h, self.image_mismatch)
            if self.batch_mode == "batched":
                log.info("batching: up to %d requests per forward (window %.1f ms)", self.batch["max_size"],
                         self.batch["window_ms"])
            elif self.batch_mode == "sequential":
                log.warning("batching asked for (max_size %d) but requests run one at a time: %s",
                            self.batch["max_size"], self.batch_why)
            if self.max_clients:
                log.info("admission: at most %d clients at a time", self.max_clients)
            if started is not None:
                started.set()
            try:
                await self._stop
            finally:
                if batcher is not None:
                    batcher.cancel()

    def serve_forever(self) -> None:
        try:
            asyncio.run(self._main())
        finally:
            self._shutdown_backends()

    def start(self) -> "PolicyServer":
        started, failed = threading.Event(), []

        def run():
            try:
                asyncio.run(self._main(started))
            except BaseException as exc:  # noqa: BLE001 - reported to start()
                failed.append(exc)
                started.set()

        self._thread = threading.Thread(target=run, name="policy-server-loop", daemon=True)
        self._thread.start()
        started.wait()
        if failed:
            raise ConfigError(f"policy server: cannot listen on {self.host}:{self.port}: {failed[0]}")
        return self

    def close(self) -> None:
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(lambda: self._stop.done() or self._stop.set_result(None))
        if self._thread is not None:
            self._thread.join(10)
        self._shutdown_backends()

    def _shutdown_backends(self) -> None:
        self._pool.shutdown(wait=True)
        if self.shared is not None:
            self.shared.close()

    def __enter__(self) -> "PolicyServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


def for_node(name: str, node_overrides: Mapping, **kw) -> PolicyServer:
    """A server for the backend a policy's ``wam_policy_node`` overrides configure (default: expert)."""
    backend = node_overrides.get("backend") or {}
    btype = str(backend.get("type", "expert"))
    bcfg = backend.get(btype) if isinstance(backend.get(btype), Mapping) else {}
    return PolicyServer(btype, bcfg, name=name, **kw)


def served_overrides(node_overrides: Mapping, server: PolicyServer, lockstep: bool = False) -> dict:
    """The policy's ``wam_policy_node`` overrides with the backend replaced by an ``openpi`` client of
    ``server`` (observation mapping, runtime and safety stay the policy's own)."""
    return deep_merge(node_overrides, {"backend": {"type": "openpi", "openpi": server.client_config(lockstep=lockstep)}})


def from_policy(policy: str, **kw) -> PolicyServer:
    """A server for a policy config (``config/policies/<name>.yaml`` or a path): its ``backend``."""
    return for_node(*load_policy_config(policy), **kw)


# -- wam-policy serve -------------------------------------------------------------------------
def add_arguments(p) -> None:
    import os

    p.add_argument("--policy", required=True, metavar="CONFIG",
                   help="policy config (config/policies/<name>.yaml or a path): its backend is served")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8000, help="port (openpi's default 8000; 0 picks a free one)")
    p.add_argument("--image-mismatch", choices=IMAGE_MISMATCH, default=None,
                   help="an image of another size than the checkpoint's input features: resize (with pad, keeping "
                        "the aspect ratio, as openpi's resize_with_pad; logged) or refuse (an error reply naming both "
                        "sizes); default: the policy config's backend.lerobot.image_mismatch (resize)")
    p.add_argument("--api-key", default=os.environ.get("WAM_POLICY_API_KEY", ""),
                   help="require 'Authorization: Api-Key <key>' (default: $WAM_POLICY_API_KEY; empty: none)")
    p.add_argument("--batch-max-size", type=int, default=BATCH_DEFAULTS["max_size"], metavar="N",
                   help="batch up to N requests of different clients into one forward (1 = off, the default; "
                        "LeRobot policies without per-client state; the others run one at a time, logged)")
    p.add_argument("--batch-window-ms", type=float, default=BATCH_DEFAULTS["window_ms"], metavar="MS",
                   help="with batching: the most a request waits for others to join its batch (none once every "
                        "connected client has one waiting)")
    p.add_argument("--max-clients", type=int, default=0, metavar="N",
                   help="at most N clients at a time; one more is closed at connect with code 1013 and the "
                        "reason 'server full' (0 = no limit)")


def run(args) -> int:
    logging.basicConfig(level=logging.INFO, format="[serve] %(message)s")
    logging.getLogger("websockets").setLevel(logging.WARNING)
    server = from_policy(args.policy, host=args.host, port=args.port, api_key=args.api_key,
                         image_mismatch=getattr(args, "image_mismatch", None),
                         batch={"max_size": args.batch_max_size, "window_ms": args.batch_window_ms},
                         max_clients=args.max_clients)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        log.info("stopped (%d requests, %d errors, %d refused)", server.requests, server.errors, server.refused)
        if server.batches:
            log.info("batched forwards (size: count): %s", dict(sorted(server.batches.items())))
    return 0
