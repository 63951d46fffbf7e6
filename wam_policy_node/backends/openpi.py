"""openpi's websocket policy protocol (openpi π0/π0.5 servers, LingBot-VA's server).

``ws://host:port``; the server sends a metadata dict first; then each request is
``msgpack(obs)`` → ``msgpack(reply)`` with numpy arrays in openpi's msgpack-numpy encoding. A text
frame instead of a binary reply is the server's error (openpi sends the traceback).
ALOHA observation: ``state`` (14,), ``images{cam: uint8 CHW}`` resized with pad to
``image_size``, ``prompt``; reply ``actions`` (H, 14), ``server_timing.infer_ms``.

Robustness: ``Authorization: Api-Key <key>`` header when ``api_key`` is set; a connect timeout
and a per-request timeout; any failure closes the connection (a late reply must never be read as
the answer to the next request) and raises :class:`BackendError` (the node holds); the next
request reconnects, at most once per ``reconnect_s``.

Against our own server (``wam-policy serve``: its metadata has a ``wam_policy`` key) the request also
carries ``stamp_ns``, ``step``, ``inference_delay`` and, with ``privileged: true``, the sim's privileged
state (a served ``expert``); ``reset`` starts the connection's next episode there
(``__ctrl__: episode_start``); an error reply leaves the connection open. ``images: false`` tells the
node not to gather cameras (a served backend that reads none).
"""
from __future__ import annotations

import time

import numpy as np

from wam_common.config import ConfigError
from wam_common.schema import Param, defaults

from . import ActionChunk, Backend, BackendError, Observation, register_backend
from . import msgpack_numpy
from ..observation import resize_with_pad

PARAMS = {
    "host": Param("127.0.0.1", "the policy server's host, or a ws:// / wss:// URI"),
    "port": Param(8000, "the server's port (0 = the one in host, or none)", range=(0, 65535)),
    "api_key": Param("", "sent as 'Authorization: Api-Key <key>' when set"),
    "image_size": Param([224, 224], "[height, width] the images are resized to with padding before sending; "
                        "[0, 0] = as received"),
    "channels_first": Param(True, "send images CHW (openpi's ALOHA examples), else HWC"),
    "connect_timeout_s": Param(3.0, "connection timeout (s)", range=(0.0, None)),
    "timeout_s": Param(10.0, "timeout of one request (s)", range=(0.0, None)),
    "reconnect_s": Param(1.0, "least time between connection attempts (s)", range=(0.0, None)),
    "n_actions": Param(0, "keep the first n actions of each chunk (0 = all)", range=(0, None)),
    "actions_key": Param("actions", "the reply's key holding the action chunk"),
    "images": Param(True, "the node gathers the cameras for each request (false: a served expert)"),
    "privileged": Param(False, "the node waits for the sim's privileged state and sends it (wam-policy serve only)"),
}
DEFAULTS = defaults(PARAMS)


@register_backend("openpi")
class OpenPIBackend(Backend):
    def __init__(self, cfg):
        merged = dict(DEFAULTS)
        merged.update({k: v for k, v in dict(cfg).items() if v is not None})
        super().__init__(merged)
        c = self.cfg
        host = str(c["host"])
        if not host:
            raise ConfigError("key 'backend.openpi.host' must not be empty")
        self.uri = host if host.startswith(("ws://", "wss://")) else f"ws://{host}"
        if int(c["port"]) > 0 and ":" not in self.uri.split("//", 1)[1]:
            self.uri += f":{int(c['port'])}"
        size = [int(v) for v in c["image_size"]]
        self.size = tuple(size) if len(size) == 2 and min(size) > 0 else None
        self._ws = None
        self.metadata: dict | None = None
        self._last_attempt = -1e9
        self._packer = msgpack_numpy.Packer()
        self.connects = 0
        self.needs_images = bool(c["images"])
        self.needs_privileged = bool(c["privileged"])
        self.ours = False  # the server is wam-policy serve (speaks the extensions above)
        self._episode: dict | None = None
        self._reset_pending = False

    # -- connection --------------------------------------------------------------------------
    def _connect(self):
        from websockets.sync.client import connect

        now = time.monotonic()
        if now - self._last_attempt < float(self.cfg["reconnect_s"]):
            raise BackendError(f"{self.name}: not connected to {self.uri} (next attempt in "
                               f"{float(self.cfg['reconnect_s']) - (now - self._last_attempt):.1f} s)")
        self._last_attempt = now
        headers = {"Authorization": f"Api-Key {self.cfg['api_key']}"} if self.cfg["api_key"] else None
        try:
            ws = connect(self.uri, compression=None, max_size=None, additional_headers=headers, proxy=None, legacy=True,
                         open_timeout=float(self.cfg["connect_timeout_s"]), close_timeout=1.0)
            meta = ws.recv(timeout=float(self.cfg["connect_timeout_s"]))
            self.metadata = msgpack_numpy.unpackb(meta) if isinstance(meta, bytes) else {"raw": meta}
        except Exception as exc:  # noqa: BLE001 - refused, timeout, handshake rejected (401), ...
            raise BackendError(f"{self.name}: cannot connect to {self.uri}: {type(exc).__name__}: {exc}") from None
        self._ws = ws
        self.connects += 1
        self.ours = isinstance(self.metadata, dict) and isinstance(self.metadata.get("wam_policy"), dict)
        self._reset_pending = False  # a new connection is a new episode on the server
        try:
            self.check_metadata(self.metadata)
        except BackendError:
            self._drop()
            raise

    def check_metadata(self, metadata) -> None:
        """The server's first frame, checked before any request (a protocol subclass refuses a server that
        wants another observation). openpi's metadata is free-form: nothing to check."""

    def reset(self, episode=None) -> None:
        self._episode = dict(episode) if episode else None
        self._reset_pending = True

    def _drop(self):
        if self._ws is not None:
            try:
                self._ws.close()
            except Exception:  # noqa: BLE001
                pass
        self._ws = None

    def close(self) -> None:
        self._drop()

    # -- inference ---------------------------------------------------------------------------
    def request(self, obs: Observation) -> dict:
        images = {}
        for key, img in obs.images.items():
            a = resize_with_pad(np.asarray(img), *self.size) if self.size else np.asarray(img)
            images[key] = np.ascontiguousarray(a.transpose(2, 0, 1)) if self.cfg["channels_first"] else a
        req = {"state": np.asarray(obs.state, np.float32), "images": images, "prompt": obs.prompt or ""}
        if self.ours:
            req.update(stamp_ns=int(obs.stamp_ns), step=obs.step, inference_delay=int(obs.inference_delay))
            if self.needs_privileged and obs.privileged is not None:
                req["privileged"] = obs.privileged
        return req

    def start_episode(self) -> None:
        """Called on the open connection before the first request of an episode (``reset`` was called):
        against ``wam-policy serve``, the ``episode_start`` control message."""
        if self.ours:
            ack = self._roundtrip({"__ctrl__": "episode_start", "__episode__": self._episode or {}})
            if isinstance(ack, str):
                raise BackendError(f"openpi: server refused the episode start: {ack.strip()}")

    def actions(self, out, obs: Observation) -> tuple[np.ndarray, dict]:
        """The decoded reply → ((H, 14) actions, chunk info). openpi: ``out[actions_key]``."""
        actions, infer_ms = parse_actions(out, self.cfg["actions_key"], self.name)
        return actions, {"server_infer_ms": infer_ms}

    def _roundtrip(self, msg: dict):
        self._ws.send(self._packer.pack(msg))
        return self._ws.recv(timeout=float(self.cfg["timeout_s"]))

    def infer(self, obs: Observation) -> ActionChunk:
        t0 = time.perf_counter()
        if self._ws is None:
            self._connect()
        try:
            if self._reset_pending:
                self.start_episode()
            self._reset_pending = False
            reply = self._roundtrip(self.request(obs))
        except BackendError:
            raise
        except TimeoutError:
            self._drop()
            raise BackendError(f"{self.name}: no reply from {self.uri} within {self.cfg['timeout_s']} s") from None
        except Exception as exc:  # noqa: BLE001 - connection closed / reset
            self._drop()
            raise BackendError(f"{self.name}: connection to {self.uri} failed: {type(exc).__name__}: {exc}") from None
        if isinstance(reply, str):
            if not self.ours:
                self._drop()  # openpi closes after an error
            raise BackendError(f"{self.name}: server error: "
                               f"{reply.strip().splitlines()[-1] if reply.strip() else reply}")
        try:
            out = msgpack_numpy.unpackb(reply)
        except Exception as exc:  # noqa: BLE001 - any undecodable payload is the server's error
            raise BackendError(f"{self.name}: malformed reply (not msgpack-numpy: {type(exc).__name__}: {exc})") from None
        actions, info = self.actions(out, obs)
        n = int(self.cfg["n_actions"])
        if n > 0:
            actions = actions[:n]
        return ActionChunk(actions, obs.stamp_ns, (time.perf_counter() - t0) * 1e3, info)


def read_reply(reply: bytes, actions_key: str = "actions") -> tuple[np.ndarray, float | None]:
    """A server's binary reply → ((H, 14) float64 actions, the server's infer_ms or None); anything else
    (not msgpack-numpy, no such key, not an (H, >=14) numeric array) is a BackendError naming it; non-finite
    actions pass to the safety filter, which refuses the chunk."""
    try:
        out = msgpack_numpy.unpackb(reply)
    except Exception as exc:  # noqa: BLE001 - any undecodable payload is the server's error
        raise BackendError(f"openpi: malformed reply (not msgpack-numpy: {type(exc).__name__}: {exc})") from None
    return parse_actions(out, actions_key)


def parse_actions(out, actions_key: str = "actions", name: str = "openpi") -> tuple[np.ndarray, float | None]:
    """A decoded openpi reply → ((H, 14) float64 actions, the server's infer_ms or None), or a BackendError
    naming what is wrong."""
    if not isinstance(out, dict) or actions_key not in out:
        keys = sorted(map(str, out)) if isinstance(out, dict) else type(out).__name__
        raise BackendError(f"{name}: malformed reply (no '{actions_key}'; got {keys})")
    try:
        actions = np.asarray(out[actions_key], dtype=np.float64)
    except (TypeError, ValueError, OverflowError) as exc:
        raise BackendError(f"{name}: malformed reply ('{actions_key}' is not numeric: {exc})") from None
    if actions.ndim != 2 or actions.shape[1] < 14 or actions.shape[0] < 1:
        raise BackendError(f"{name}: reply '{actions_key}' has shape {actions.shape}, want (H, 14)")
    timing = out.get("server_timing")
    infer_ms = timing.get("infer_ms") if isinstance(timing, dict) else None
    return actions[:, :14], float(infer_ms) if isinstance(infer_ms, (int, float)) else None
