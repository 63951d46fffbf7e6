"""collect → train → ship → run: scripted-expert demos from the sim core into a LeRobotDataset that
LeRobot loads back; LeRobot's own training for a few steps on it; the fp16 export loaded by the
``lerobot`` backend and driven through the real graph (sim_bridge → perturbation_node →
wam_policy_node → sim_bridge, recorder) in lockstep. CI-sized: 48x64 images, 30-step episodes."""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from wam_common.config import ConfigError  # noqa: E402
from wam_apps.training import collect as C  # noqa: E402
from wam_apps.training import train as TR  # noqa: E402

# Tiers: the graph test is `ros`, the argument checks `unit`; collecting a dataset starts
# multiprocessing workers (no tier: not unit, not a ROS node).

H, W, STEPS = 48, 64, 30


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("ds") / "tc"
    info = C.collect("sim", ["transfer_cube"], 2, out, seed=7, cameras=["cam_high"], height=H, width=W,
                     camera_every=5, workers=2, keep_failed=True, max_steps=STEPS, quiet=True)  # 2 shards, aggregated
    return out, info


def test_collect_sim_dataset_loads_in_lerobot(dataset):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    from sim_bridge.env import SimEnv
    from sim_bridge.experts import make_expert

    out, info = dataset
    assert info["episodes"] == 2 and info["frames"] == 2 * STEPS and info["shards"] == 2
    ds = LeRobotDataset(info["repo_id"], root=out)
    assert ds.num_episodes == 2 and ds.num_frames == 2 * STEPS and ds.fps == 50
    f0 = ds[0]
    assert tuple(f0["observation.images.cam_high"].shape) == (3, H, W)
    assert tuple(f0["observation.state"].shape) == (14,) and tuple(f0["action"].shape) == (14,)
    assert f0["task"] == "Pick up the red cube with the right arm and transfer it to the left arm."
    # the actions are the scripted expert's plan for that seed, the states the sim's
    env, ex = SimEnv("transfer_cube"), make_expert("transfer_cube")
    env.reset(7)
    ex.reset(env.privileged(0, 0, 0, 0) | {"max_steps": STEPS})
    acts = np.stack([ds[i]["action"].numpy() for i in range(STEPS)])
    np.testing.assert_allclose(acts, ex.trajectory.astype(np.float32), atol=1e-6)
    np.testing.assert_allclose(f0["observation.state"].numpy(), env.qpos14().astype(np.float32), atol=1e-6)
    # frame 0 is the sim's cam_high render (through lossy video: compared in mean), and cameras are
    # held between renders (every 5th step), as sim_bridge publishes them
    ref = torch.from_numpy(env.render("cam_high", H, W)).permute(2, 0, 1).float() / 255
    assert (f0["observation.images.cam_high"] - ref).abs().mean() < 0.04 < ref.mean()
    imgs = [ds[i]["observation.images.cam_high"] for i in range(6)]
    for i in range(1, 5):
        assert (imgs[i] - imgs[0]).abs().mean() < 0.01
    assert ds[STEPS]["episode_index"].item() == 1


@pytest.mark.unit
def test_collect_rejects_bad_input(tmp_path):
    with pytest.raises(ConfigError, match="--task"):
        C.collect("sim", ["no_such_task"], 1, tmp_path / "x")
    with pytest.raises(ConfigError, match="--cameras"):
        C.collect("sim", ["transfer_cube"], 1, tmp_path / "x", cameras=["cam_nowhere"])
    (tmp_path / "exists").mkdir()
    with pytest.raises(ConfigError, match="exists"):
        C.collect("sim", ["transfer_cube"], 1, tmp_path / "exists")


def _train_args(**kw):
    p = argparse.ArgumentParser()
    TR.add_arguments(p)
    args = p.parse_args(["--dataset", "x"])
    for k, v in kw.items():
        setattr(args, k, v)
    return args


@pytest.mark.unit
def test_train_rejects_a_non_dataset(tmp_path):
    with pytest.raises(ConfigError, match="--dataset"):
        TR.train(_train_args(dataset=str(tmp_path), device="cpu"))


@pytest.mark.ros
def test_train_export_and_run_through_the_graph(dataset, tmp_path, domain_id):
    from safetensors.torch import load_file

    from wam_apps.cli.demo import run_demo
    from wam_common.bag.reader import Bag, json_event
    from wam_common import topics as T

    root, _ = dataset
    ship = tmp_path / "act_ship"
    args = _train_args(dataset=str(root), steps=3, batch_size=4, workers=0, device="cpu", dim_model=32,
                       dim_feedforward=64, layers=1, chunk_size=10, log_freq=1, out=str(tmp_path / "train"),
                       export=str(ship))
    result = TR.train(args)
    assert result["steps"] == 3 and result["export"]["dtype"] == "float16"
    assert any("loss" in line for line in result["log"])
    sd = load_file(str(ship / "model.safetensors"))
    assert sd and all(v.dtype == torch.float16 for v in sd.values() if v.is_floating_point())
    cfg = json.loads((ship / "config.json").read_text())
    assert cfg["type"] == "act" and cfg["chunk_size"] == 10
    assert list(cfg["input_features"]) == ["observation.images.cam_high", "observation.state"]
    assert sorted(p.name for p in ship.glob("policy_*processor*.json")) == ["policy_postprocessor.json",
                                                                           "policy_preprocessor.json"]

    # the shipped folder drives the sim through the real graph, lockstep, with the lerobot backend
    sets = [f"sim_bridge.max_steps={12}", f"sim_bridge.render.height={H}", f"sim_bridge.render.width={W}",
            "sim_bridge.render.camera_every=5", "sim_bridge.seed=3",
            "wam_policy_node.backend.type=lerobot", f"wam_policy_node.backend.lerobot.path={ship}",
            "wam_policy_node.backend.lerobot.device=cpu", "wam_policy_node.observation.cameras=[cam_high]",
            "wam_policy_node.observation.image_keys=[cam_high]", "wam_policy_node.runtime.strategy=sync",
            "wam_policy_node.runtime.execute_steps=5"]
    res = run_demo(sets, timeout=240, output_dir=str(tmp_path / "bags"), show_progress=False, domain_id=domain_id,
                   log_dir=tmp_path / "logs")
    assert res.error is None, res.error
    assert res.steps == 12 and res.latency_ms.get("n") == 12  # every step answered
    statuses = []
    with Bag(res.bag) as bag:
        for m in bag.messages([T.POLICY_STATUS]):
            statuses.append(json_event(m))
    statuses = [s for s in statuses if s]
    assert len(statuses) >= 12
    assert sum(bool(s.get("inferred")) for s in statuses) >= 3  # steps 0, 5, 10
    assert all(s.get("hold") is None for s in statuses), [s.get("hold") for s in statuses]
