"""OpenVLA-OFT's REST policy server (``vla-scripts/deploy.py`` of moojink/openvla-oft): ``POST /act``.

The wire format, as ``deploy.py`` (server) and ``experiments/robot/aloha/run_aloha_eval.py`` +
``experiments/robot/openvla_utils.py`` (its ALOHA client) define it:

- request: a JSON object, numpy arrays in ``json_numpy``'s encoding (both sides run ``json_numpy.patch()``),
  or the whole observation double-encoded as ``{"encoded": json_numpy.dumps(obs)}`` (``deploy.py`` accepts
  both; a double-encoded request gets a double-encoded reply). Keys: ``full_image`` (the top camera),
  ``left_wrist_image``, ``right_wrist_image`` — each HxWx3 uint8 RGB at the model's input size, 224×224,
  resized *without* keeping the aspect ratio (``resize_image_for_policy``: a plain square resize, Lanczos)
  — ``state`` (the 14 ALOHA joint positions, ``qpos``: left arm 6 + gripper, right arm 6 + gripper) and
  ``instruction`` (the task text).
- reply: the action chunk as a JSON list of ``NUM_ACTIONS_CHUNK`` arrays of 14 absolute joint positions
  (25 on ALOHA; ``--use_relative_actions`` checkpoints return deltas, see ``relative``); double-encoded
  (a ``json_numpy.dumps`` string) when the request was; on any exception
  the server answers the JSON string ``"error"`` (HTTP 200).

The server un-normalises the actions and normalises the state itself (its ``unnorm_key``), so the node
sends raw joint positions and executes the reply as it is. The client executes ``num_open_loop_steps``
(25) of each chunk before asking again: the node's runtime decides that (``runtime.execute_steps``).
"""
from __future__ import annotations

import time

import cv2
import numpy as np

from wam_common.config import ConfigError
from wam_common.schema import Param, defaults

from . import ActionChunk, Backend, BackendError, Observation, register_backend
from .cosmos import chunk14, image_map, post_act
from ..observation import resize_to

PARAMS = {
    "url": Param("http://127.0.0.1:8777/act", "the OpenVLA-OFT server's act endpoint (deploy.py --port; 8777 "
                 "by default)"),
    "image_map": Param(["cam_high:full_image", "cam_left_wrist:left_wrist_image",
                        "cam_right_wrist:right_wrist_image"], "node image key : request key, per camera sent"),
    "image_size": Param([224, 224], "[height, width] each image is resized to before sending ([0, 0] = as "
                        "received); 224x224 for OpenVLA-OFT's checkpoints"),
    "resize": Param("stretch", "stretch: a plain resize to image_size (resize_image_for_policy, as the model was "
                    "trained); pad: keep the aspect ratio, zero-padded", choices=("stretch", "pad")),
    "relative": Param(False, "the checkpoint acts in joint deltas (--use_relative_actions): the chunk's actions "
                      "are summed onto the measured state it was asked from (the client sums them onto its last "
                      "commanded target)"),
    "timeout_s": Param(10.0, "timeout of one request (s)", range=(0.0, None)),
    "connect_timeout_s": Param(3.0, "connection timeout (s)", range=(0.0, None)),
    "n_actions": Param(0, "keep the first n actions of each chunk (0 = all)", range=(0, None)),
    "double_encode": Param(False, "send the observation json_numpy-encoded inside {\"encoded\": ...} (deploy.py "
                           "accepts both; the ALOHA client sends it plain)"),
}
DEFAULTS = defaults(PARAMS)


@register_backend("openvla_oft")
class OpenVLAOFTBackend(Backend):
    def __init__(self, cfg):
        merged = dict(DEFAULTS)
        merged.update({k: v for k, v in dict(cfg).items() if v is not None})
        super().__init__(merged)
        import requests

        self.requests = requests
        self.session = requests.Session()
        self.image_map = image_map(self.cfg["image_map"], "backend.openvla_oft.image_map")
        size = [int(v) for v in self.cfg["image_size"]]
        if len(size) != 2 or min(size) < 0:
            raise ConfigError(f"key 'backend.openvla_oft.image_size': {size} is not [height, width]")
        self.size = tuple(size) if min(size) > 0 else None

    def _image(self, img: np.ndarray) -> np.ndarray:
        return resize_to(img, self.size, self.cfg["resize"], cv2.INTER_LANCZOS4)

    def payload(self, obs: Observation) -> dict:
        out = {}
        for src, dst in self.image_map.items():
            if src not in obs.images:
                raise BackendError(f"openvla_oft: no image '{src}' in the observation (have {sorted(obs.images)})")
            out[dst] = self._image(obs.images[src])
        out["state"] = np.asarray(obs.state, np.float64)
        out["instruction"] = obs.prompt or ""
        return out

    def infer(self, obs: Observation) -> ActionChunk:
        t0 = time.perf_counter()
        reply = post_act(self, "openvla_oft", self.payload(obs))
        if isinstance(reply, dict):  # forks that wrap it (e.g. {"actions": [...]}) are not deploy.py's format
            raise BackendError(f"openvla_oft: malformed reply (an object with keys {sorted(reply)[:5]}, want a list "
                               "of actions)")
        actions = chunk14("openvla_oft", reply, "(the action list)")
        if self.cfg["relative"]:
            # the client steps target = current + delta, action after action: cumulative from the state
            actions = np.asarray(obs.state, np.float64)[None, :] + np.cumsum(actions, axis=0)
        n = int(self.cfg["n_actions"])
        if n > 0:
            actions = actions[:n]
        return ActionChunk(actions, obs.stamp_ns, (time.perf_counter() - t0) * 1e3)

    def close(self) -> None:
        self.session.close()
