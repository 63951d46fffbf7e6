"""Cosmos-Policy's HTTP policy server: ``POST /act`` with json_numpy payloads.

Request (Cosmos-Policy ``experiments/robot/aloha/deploy.py``): ``primary_image``,
``left_wrist_image``, ``right_wrist_image`` (HxWx3 uint8), ``proprio`` (14,), and
``task_description``; sent double-encoded (``{"encoded": json_numpy.dumps(obs)}``) so no global
json patching is needed. Reply: ``actions`` (a chunk, 50 on ALOHA), plus ``value_prediction`` and
``future_image_predictions`` that are kept out of the command path. The server answers the string
``"error"`` when inference fails. Timeouts and connection errors raise :class:`BackendError`.
"""
from __future__ import annotations

import json
import time

import numpy as np

from wam_common.config import ConfigError
from wam_common.schema import Param, defaults

from . import ActionChunk, Backend, BackendError, Observation, register_backend
from ..observation import resize_with_pad

PARAMS = {
    "url": Param("http://127.0.0.1:8777/act", "the Cosmos-Policy server's act endpoint"),
    "image_map": Param(["cam_high:primary_image", "cam_left_wrist:left_wrist_image",
                        "cam_right_wrist:right_wrist_image"], "node image key : server image key, per camera sent"),
    "image_size": Param([0, 0], "[height, width] the images are resized to with padding before sending; "
                        "[0, 0] = as received"),
    "timeout_s": Param(10.0, "timeout of one request (s)", range=(0.0, None)),
    "connect_timeout_s": Param(3.0, "connection timeout (s)", range=(0.0, None)),
    "n_actions": Param(0, "keep the first n actions of each chunk (0 = all)", range=(0, None)),
    "double_encode": Param(True, "send the payload json_numpy-encoded inside {\"encoded\": ...} (the server's "
                           "deploy.py)"),
}
DEFAULTS = defaults(PARAMS)


@register_backend("cosmos")
class CosmosBackend(Backend):
    def __init__(self, cfg):
        merged = dict(DEFAULTS)
        merged.update({k: v for k, v in dict(cfg).items() if v is not None})
        super().__init__(merged)
        import requests

        self.requests = requests
        self.session = requests.Session()
        self.image_map = image_map(self.cfg["image_map"], "backend.cosmos.image_map")
        size = [int(v) for v in self.cfg["image_size"]]
        self.size = tuple(size) if len(size) == 2 and min(size) > 0 else None
        self.last_value: float | None = None

    def payload(self, obs: Observation) -> dict:
        out = {}
        for src, dst in self.image_map.items():
            if src not in obs.images:
                raise BackendError(f"cosmos: no image '{src}' in the observation (have {sorted(obs.images)})")
            img = np.asarray(obs.images[src], np.uint8)
            out[dst] = resize_with_pad(img, *self.size) if self.size else np.ascontiguousarray(img)
        out["proprio"] = np.asarray(obs.state, np.float32)
        out["task_description"] = obs.prompt or ""
        return out

    def infer(self, obs: Observation) -> ActionChunk:
        t0 = time.perf_counter()
        reply = post_act(self, "cosmos", self.payload(obs))
        if not isinstance(reply, dict) or "actions" not in reply:
            raise BackendError(f"cosmos: malformed reply (no 'actions': {type(reply).__name__})")
        actions = chunk14("cosmos", reply["actions"], "'actions'")
        n = int(self.cfg["n_actions"])
        if n > 0:
            actions = actions[:n]
        v = reply.get("value_prediction")
        self.last_value = float(v) if isinstance(v, (int, float)) else None
        return ActionChunk(actions, obs.stamp_ns, (time.perf_counter() - t0) * 1e3, {"value": self.last_value})

    def close(self) -> None:
        self.session.close()


def image_map(items, key: str) -> dict[str, str]:
    """``["node_key:server_key", ...]`` → {node_key: server_key}; a malformed item is a ConfigError naming ``key``."""
    out = {}
    for item in items:
        if ":" not in str(item):
            raise ConfigError(f"key '{key}': '{item}' is not 'node_key:server_key'")
        a, b = str(item).split(":", 1)
        out[a] = b
    return out


def post_act(backend, name: str, payload: dict):
    """POST ``payload`` json_numpy-encoded to ``backend.cfg["url"]`` as OpenVLA-OFT's ``deploy.py`` (and
    Cosmos-Policy's, derived from it) take it — ``{"encoded": json_numpy.dumps(obs)}`` with
    ``double_encode``, else the plain json_numpy body their ``json_numpy.patch()`` decodes — and return the
    decoded reply. The server's ``"error"`` string, an HTTP error, a timeout, a refused connection and a
    reply that is not JSON are :class:`BackendError`."""
    import json_numpy

    cfg = backend.cfg
    body = {"encoded": json_numpy.dumps(payload)} if cfg["double_encode"] else json.loads(json_numpy.dumps(payload))
    try:
        r = backend.session.post(cfg["url"], json=body,
                                 timeout=(float(cfg["connect_timeout_s"]), float(cfg["timeout_s"])))
    except backend.requests.Timeout:
        raise BackendError(f"{name}: no reply from {cfg['url']} within {cfg['timeout_s']} s") from None
    except backend.requests.RequestException as exc:
        raise BackendError(f"{name}: cannot reach {cfg['url']}: {type(exc).__name__}") from None
    if r.status_code != 200:
        raise BackendError(f"{name}: HTTP {r.status_code} from {cfg['url']}: {r.text[:200]}")
    try:
        reply = r.json()
        if isinstance(reply, str):
            if reply.strip() == "error":
                raise BackendError(f"{name}: server error (it answered 'error'; see the server log)")
            return json_numpy.loads(reply)  # double-encoded
        return json_numpy.loads(json.dumps(reply))
    except BackendError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise BackendError(f"{name}: malformed reply ({type(exc).__name__}: {exc})") from None


def chunk14(name: str, value, what: str) -> np.ndarray:
    """A reply's action chunk as an (H, 14) float64 array, or :class:`BackendError` naming its shape."""
    try:
        actions = np.asarray(value, dtype=np.float64)
    except Exception as exc:  # noqa: BLE001
        raise BackendError(f"{name}: malformed reply {what} ({type(exc).__name__}: {exc})") from None
    if actions.ndim != 2 or actions.shape[1] != 14 or len(actions) == 0:
        raise BackendError(f"{name}: reply {what} has shape {actions.shape}, want (H, 14)")
    return actions
