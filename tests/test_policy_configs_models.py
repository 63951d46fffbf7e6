"""The policy configs of the study's models (config/policies/, docs/MODELS.md) are valid node configs: every
key is a parameter of wam_policy_node with a value its schema accepts, each zoo kind exists, and each remote
backend builds from its config."""
from __future__ import annotations

import pytest

from wam_common.policies import load_policy_config
from wam_common.schema import check, defaults, find

pytestmark = pytest.mark.unit

CONFIGS = ("xvla_random", "vla_jepa_random", "pi0_random", "pi05_random", "fastwam_random", "lingbot_va_random",
           "openvla_oft", "cosmos_policy", "openpi_aloha",
           "dreamzero_droid")


def _leaves(d: dict, prefix: str = ""):
    for k, v in d.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict) and name != "backend.lerobot.zoo":
            yield from _leaves(v, name + ".")
        else:
            yield name, v


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


@pytest.mark.parametrize("name", CONFIGS)
def test_model_config_is_a_valid_node_config(name):
    from wam_policy_node import zoo
    from wam_policy_node.backends import make_backend
    from wam_policy_node.node import PARAMS

    _, ov = load_policy_config(name)
    for key, _ in _leaves(ov):
        assert find(PARAMS, key) is not None, f"{name}: '{key}' is not a wam_policy_node parameter"
    cfg = _merge(defaults(PARAMS), ov)
    check(PARAMS, cfg, name)  # ranges and choices
    btype = cfg["backend"]["type"]
    if btype == "lerobot":
        assert cfg["backend"]["lerobot"]["zoo"]["kind"] in zoo.kinds()
    else:  # a remote backend builds from it (no connection is made before the first request)
        b = make_backend(btype, cfg["backend"][btype])
        b.close()
    assert len(cfg["observation"]["cameras"]) == len(cfg["observation"]["image_keys"]) == 3
