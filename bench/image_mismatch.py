"""224x224 (an openpi client's resize-with-pad of the sim frame) to the 240x320 ACT: fed as is (the old path)
vs resized with pad back to 240x320 (now), both against the ACT's actions on the 240x320 frame itself; and
the same for a 480x640 render (a camera at twice the trained size, same aspect ratio). Max |Δaction| (rad)
over the 100-step chunk, 5 sim states (seed s, s*20 steps holding the start pose). Prints one JSON object.

    PYTHONPATH=. MUJOCO_GL=egl .venv/bin/python bench/image_mismatch.py
"""
import json
import numpy as np
from sim_bridge.env import SimEnv
from wam_policy_node.backends import Observation, make_backend
from wam_policy_node.observation import resize_with_pad

cfg = {"path": "checkpoints/act_transfer_cube", "device": "cpu", "engine": "eager", "warmup": 0}
act, old = make_backend("lerobot", cfg), make_backend("lerobot", cfg)
old.image_sizes = {}  # the old path: a frame of any size goes to the model as it is
env = SimEnv("transfer_cube", render=True)
out = []
for seed in range(5):
    env.reset(seed)
    for _ in range(seed * 20):
        env.step(env.qpos14())
    frame = env.render("cam_high", 240, 320)
    small = resize_with_pad(frame, 224, 224)  # what openpi's clients send
    state = env.qpos14()
    ref = act.infer(Observation(0, {"cam_high": frame}, state, "")).actions
    a_old = old.infer(Observation(0, {"cam_high": small}, state, "")).actions
    a_new = act.infer(Observation(0, {"cam_high": small}, state, "")).actions
    big = env.render("cam_high", 480, 640)  # a camera at twice the trained size, same aspect ratio
    b_old = old.infer(Observation(0, {"cam_high": big}, state, "")).actions
    b_new = act.infer(Observation(0, {"cam_high": big}, state, "")).actions
    out.append({"seed": seed, "224_as_is": float(np.abs(a_old - ref).max()),
                "224_resized": float(np.abs(a_new - ref).max()),
                "480x640_as_is": float(np.abs(b_old - ref).max()),
                "480x640_resized": float(np.abs(b_new - ref).max())})
print(json.dumps({"rows": out, **{k + "_max": round(max(r[k] for r in out), 3) for k in out[0] if k != "seed"}}))
