"""DreamZero's published inference protocol: RoboArena's websocket policy protocol, as DreamZero-DROID is served.

DreamZero's release (``socket_test_optimized_AR.py`` of its code, indexed as ``ruziniuuuuu/dreamzero``) serves
DreamZero-DROID through RoboArena's ``WebsocketPolicyServer`` (``roboarena/policy_server.py`` of
robo-arena/roboarena, vendored by DreamZero as ``droid_sim_evals/policy_server.py``); vLLM-Omni serves the same
model on ``WS /v1/realtime/robot/openpi`` (its *OpenPI Robot Policy WebSocket API* page). The transport is
openpi's (this backend subclasses :class:`~.openpi.OpenPIBackend`: msgpack-numpy binary frames, a text frame is
the server's traceback, after which the server closes), the messages are RoboArena's:

- first frame: the server's ``PolicyServerConfig`` as a dict — DreamZero-DROID's is ``image_resolution
  (180, 320)``, ``n_external_cameras 2``, ``needs_wrist_camera true``, ``needs_stereo_camera false``,
  ``needs_session_id true``, ``action_space "joint_position"``. It is checked before any request: a server that
  wants stereo images, another camera count, another action space than ``joint_position`` or (when
  ``image_resolution`` is set here) another resolution is refused with an error naming the field.
- request: ``endpoint: "infer"`` (the server routes on it), ``observation/exterior_image_{i}_left`` for each
  external camera and ``observation/wrist_image_left``, each HxWx3 uint8 RGB at the announced resolution,
  ``observation/joint_position`` (7,), ``observation/gripper_position`` (1,), ``prompt`` and, when
  ``needs_session_id``, ``session_id`` — a new uuid4 string per episode (DreamZero resets its frame buffers
  and video history when the id changes, the way ``test_client_AR.py`` starts a session). RoboArena also lists
  ``observation/cartesian_position`` (6,); DreamZero does not read it and the node has no Franka pose, so it is
  not sent. With ``send_reset`` the episode start also sends RoboArena's ``endpoint: "reset"`` message (answered
  by the text frame ``"reset successful"``).
- reply: a bare float32 array (N, 8): 7 joint positions + 1 gripper position (``_convert_action``), executed at
  the DROID control rate (15 Hz); resampled here onto the node's 50 Hz step (``action_hz``).

ALOHA mapping (DreamZero's checkpoints are single-arm: DreamZero-DROID is a 7-joint Franka with one gripper;
no ALOHA checkpoint is released). One arm (``arm``, default right) is driven by the model, the other holds
the position it had when the chunk was asked. The vx300s has 6 arm joints: ``joint_slots`` says which of them
fills each of the 7 model joints (``-1``: a padding slot sent as ``pad_value``, its action ignored); by default
the 6 joints in order and the 7th padded. The model's joint positions are executed as that arm's joint
targets, so a DROID checkpoint's (Franka) joint angles are only meaningful on ALOHA after post-training on
ALOHA single-arm data mapped this way; the safety filter still bounds every command. Grippers: DROID's
``gripper_position`` is 0 = open … 1 = closed (Robotiq closure), ALOHA's normalised gripper is 0 = closed …
1 = open (``wam_common.aloha``): with ``gripper_invert`` (default) the node sends ``1 - g`` and executes
``1 - a``, clipped to [0, 1]. Cameras: ``exterior_cameras`` (one node image key per external camera, in order
``exterior_image_0_left``, ``exterior_image_1_left``) and ``wrist_camera``.
"""
from __future__ import annotations

import uuid

import cv2
import numpy as np

from wam_common.config import ConfigError
from wam_common.schema import Param, defaults
from wam_common.topics import DT

from . import BackendError, Observation, register_backend
from . import openpi as _openpi
from ..observation import resize_to

PARAMS = {
    "host": Param("127.0.0.1", "the server's host, or a ws:// / wss:// URI (vLLM-Omni: "
                  "ws://<server>:8091/v1/realtime/robot/openpi)"),
    "port": Param(8000, "the server's port (0 = the one in host, or none); 8000 for DreamZero's own server",
                  range=(0, 65535)),
    "api_key": Param("", "sent as 'Authorization: Api-Key <key>' when set"),
    "arm": Param("right", "the ALOHA arm the single-arm model drives; the other holds", choices=("left", "right")),
    "exterior_cameras": Param(["cam_high", "cam_low"], "node image keys sent as observation/exterior_image_0_left, "
                              "observation/exterior_image_1_left, ... (as many as the server's n_external_cameras)"),
    "wrist_camera": Param("cam_right_wrist", "node image key sent as observation/wrist_image_left"),
    "image_resolution": Param([180, 320], "[height, width] the checkpoint expects: a server announcing another "
                              "image_resolution is refused ([0, 0]: take the server's)"),
    "resize": Param("pad", "pad: keep the aspect ratio, zero-padded (openpi's resize_with_pad); stretch: a plain "
                    "resize", choices=("pad", "stretch")),
    "joint_slots": Param([0, 1, 2, 3, 4, 5, -1], "for each of the model's 7 joints, the ALOHA arm joint (0..5) "
                         "it is, or -1: padding (sent as pad_value, its action ignored)"),
    "pad_value": Param(0.0, "the value sent in a padding joint slot (rad)"),
    "gripper_invert": Param(True, "DROID gripper 0 = open … 1 = closed vs ALOHA 0 = closed … 1 = open: send "
                            "1 - g and execute 1 - a"),
    "action_hz": Param(15.0, "the rate the reply's actions are meant for (DROID: 15 Hz); resampled onto the "
                       "node's step (0 = execute one action per node step)", range=(0.0, None)),
    "send_reset": Param(False, "also send RoboArena's endpoint 'reset' message at each episode start (the new "
                        "session_id already resets DreamZero)"),
    "connect_timeout_s": Param(3.0, "connection timeout (s)", range=(0.0, None)),
    "timeout_s": Param(30.0, "timeout of one request (s)", range=(0.0, None)),
    "reconnect_s": Param(1.0, "least time between connection attempts (s)", range=(0.0, None)),
    "n_actions": Param(0, "keep the first n actions of each (resampled) chunk (0 = all)", range=(0, None)),
}
DEFAULTS = defaults(PARAMS)
ARM_SLICE = {"left": slice(0, 7), "right": slice(7, 14)}
ACTION_SPACE = "joint_position"


@register_backend("dreamzero")
class DreamZeroBackend(_openpi.OpenPIBackend):
    def __init__(self, cfg):
        merged = dict(DEFAULTS)
        merged.update({k: v for k, v in dict(cfg).items() if v is not None})
        # the openpi transport's own settings (image handling and reply key are replaced below)
        super().__init__({**{k: merged[k] for k in ("host", "port", "api_key", "connect_timeout_s", "timeout_s",
                                                     "reconnect_s", "n_actions")},
                          "image_size": [0, 0], "images": True, "privileged": False})
        self.cfg.update(merged)
        c = self.cfg
        self.arm = ARM_SLICE[str(c["arm"])]
        slots = [int(v) for v in c["joint_slots"]]
        if len(slots) != 7 or any(s < -1 or s > 5 for s in slots):
            raise ConfigError(f"key 'backend.dreamzero.joint_slots': {slots} must be 7 entries, each an arm joint "
                              "0..5 or -1 (padding)")
        used = [s for s in slots if s >= 0]
        if len(set(used)) != len(used):
            raise ConfigError(f"key 'backend.dreamzero.joint_slots': {slots} uses a joint twice")
        self.slots = slots
        self.exterior = [str(v) for v in c["exterior_cameras"]]
        self.wrist = str(c["wrist_camera"])
        res = [int(v) for v in c["image_resolution"]]
        if len(res) != 2 or min(res) < 0:
            raise ConfigError(f"key 'backend.dreamzero.image_resolution': {res} is not [height, width]")
        self.want_res = tuple(res) if min(res) > 0 else None
        self.server_config: dict | None = None
        self.resolution: tuple[int, int] | None = None
        self.session_id = str(uuid.uuid4())
        self.sessions = [self.session_id]

    # -- the server's first frame ----------------------------------------------------------------
    def check_metadata(self, metadata) -> None:
        if not isinstance(metadata, dict):
            raise BackendError(f"dreamzero: the server's first frame is not a PolicyServerConfig dict: {metadata!r}"[:300])
        missing = [k for k in ("image_resolution", "n_external_cameras", "needs_wrist_camera", "action_space")
                   if k not in metadata]
        if missing:
            raise BackendError(f"dreamzero: the server's config lacks {missing} (have {sorted(metadata)}): not a "
                               "RoboArena/DreamZero policy server")
        res = metadata["image_resolution"]
        if res is None:
            resolution = None
        else:
            try:
                resolution = tuple(int(v) for v in res)
            except (TypeError, ValueError):
                resolution = ()
            if len(resolution) != 2 or min(resolution) <= 0:
                raise BackendError(f"dreamzero: the server's image_resolution {res!r} is not [height, width]")
        if self.want_res is not None and resolution != self.want_res:
            raise BackendError(f"dreamzero: the server wants image_resolution {res!r}, this configuration expects "
                               f"{list(self.want_res)} (backend.dreamzero.image_resolution; [0, 0] takes the server's)")
        if metadata["action_space"] != ACTION_SPACE:
            raise BackendError(f"dreamzero: the server's action_space is {metadata['action_space']!r}; only "
                               f"'{ACTION_SPACE}' maps onto ALOHA joint targets")
        if metadata.get("needs_stereo_camera"):
            raise BackendError("dreamzero: the server needs stereo images (needs_stereo_camera); ALOHA's cameras "
                               "are mono")
        n_ext = int(metadata["n_external_cameras"])
        if n_ext > len(self.exterior):
            raise BackendError(f"dreamzero: the server wants {n_ext} external cameras, "
                               f"backend.dreamzero.exterior_cameras names {len(self.exterior)}: {self.exterior}")
        if metadata["needs_wrist_camera"] and not self.wrist:
            raise BackendError("dreamzero: the server wants a wrist camera and backend.dreamzero.wrist_camera is "
                               "empty")
        self.server_config = dict(metadata)
        self.resolution = resolution

    # -- episodes --------------------------------------------------------------------------------
    def reset(self, episode=None) -> None:
        super().reset(episode)
        self.session_id = str(uuid.uuid4())  # DreamZero resets its history when the session id changes
        self.sessions.append(self.session_id)

    def start_episode(self) -> None:
        if not self.cfg["send_reset"]:
            return
        ack = self._roundtrip({"endpoint": "reset"})
        if ack != "reset successful":
            self._drop()  # RoboArena's server closes after an error
            text = ack.strip().splitlines()[-1] if isinstance(ack, str) and ack.strip() else repr(ack)[:200]
            raise BackendError(f"dreamzero: server refused the reset: {text}")

    # -- request / reply -------------------------------------------------------------------------
    def _image(self, key: str, obs: Observation) -> np.ndarray:
        if key not in obs.images:
            raise BackendError(f"dreamzero: no image '{key}' in the observation (have {sorted(obs.images)})")
        return resize_to(obs.images[key], self.resolution, self.cfg["resize"], cv2.INTER_AREA)

    def request(self, obs: Observation) -> dict:
        sc = self.server_config or {}
        req: dict = {"endpoint": "infer"}
        for i in range(int(sc.get("n_external_cameras", len(self.exterior)))):
            req[f"observation/exterior_image_{i}_left"] = self._image(self.exterior[i], obs)
        if sc.get("needs_wrist_camera", True):
            req["observation/wrist_image_left"] = self._image(self.wrist, obs)
        if sc.get("needs_session_id"):
            req["session_id"] = self.session_id
        arm = np.asarray(obs.state, np.float64)[self.arm]
        joints = np.array([arm[s] if s >= 0 else float(self.cfg["pad_value"]) for s in self.slots], np.float32)
        g = float(arm[6])
        g = 1.0 - g if self.cfg["gripper_invert"] else g
        req["observation/joint_position"] = joints
        req["observation/gripper_position"] = np.array([min(max(g, 0.0), 1.0)], np.float32)
        req["prompt"] = obs.prompt or ""
        return req

    def actions(self, out, obs: Observation) -> tuple[np.ndarray, dict]:
        if isinstance(out, dict):
            raise BackendError(f"dreamzero: the reply is a dict with keys {sorted(out)[:5]}, want RoboArena's bare "
                               "(N, 8) action array (is this DreamZero's legacy non-RoboArena server?)")
        try:
            a = np.asarray(out, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise BackendError(f"dreamzero: malformed reply ({type(exc).__name__}: {exc})") from None
        if a.ndim != 2 or a.shape[1] != 8 or a.shape[0] < 1:
            raise BackendError(f"dreamzero: reply has shape {a.shape}, want (N, 8) (7 joint positions + gripper)")
        if not np.all(np.isfinite(a)):
            raise BackendError("dreamzero: reply has non-finite actions")
        n_model = a.shape[0]
        hz = float(self.cfg["action_hz"])
        if hz > 0 and a.shape[0] > 1:  # the model's steps at 1/hz → the node's steps at DT, linearly
            t_model = np.arange(a.shape[0]) / hz
            t_node = np.arange(int(np.floor(t_model[-1] / DT + 1e-9)) + 1) * DT
            a = np.stack([np.interp(t_node, t_model, a[:, j]) for j in range(8)], axis=1)
        held = np.asarray(obs.state, np.float64)
        out14 = np.repeat(held[None, :], a.shape[0], axis=0)  # the other arm (and padded joints) hold
        arm = out14[:, self.arm]
        for k, s in enumerate(self.slots):
            if s >= 0:
                arm[:, s] = a[:, k]
        g = 1.0 - a[:, 7] if self.cfg["gripper_invert"] else a[:, 7]
        arm[:, 6] = np.clip(g, 0.0, 1.0)
        out14[:, self.arm] = arm
        return out14, {"model_actions": n_model, "session_id": self.session_id}
