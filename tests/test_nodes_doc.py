"""The nodes' parameter schemas and docs/NODES.md without DDS: every parameter of every node (backends
included) has a description, each module's plain ``DEFAULTS`` are its schema's defaults, the descriptors carry
type, range, allowed values and read-only, and docs/NODES.md is what ``wam-policy nodes-doc`` prints now."""
from __future__ import annotations

import importlib
import math
import re
from pathlib import Path

import pytest

from wam_common.config import ConfigError
from wam_common.graph import EXECUTABLES
from wam_common.schema import Param, Service, Topic, check, defaults, find, leaves
from wam_policy_node.backends import BUILTIN

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
#: the pure cores whose PARAMS are blocks of wam_policy_node's
CORES = ["wam_policy_node.observation", "wam_policy_node.runtime", "wam_policy_node.safety",
         *(f"wam_policy_node.backends.{b}" for b in BUILTIN)]


@pytest.mark.parametrize("module", [*EXECUTABLES.values(), *CORES])
def test_every_parameter_is_described_and_its_default_allowed(module):
    mod = importlib.import_module(module)
    assert mod.DEFAULTS == defaults(mod.PARAMS), "DEFAULTS must be defaults(PARAMS)"
    params = dict(leaves(mod.PARAMS))
    assert params and all(isinstance(p, Param) for p in params.values())
    assert not [n for n, p in params.items() if not p.description.strip()], "parameters without a description"
    assert not {n: p.problem(p.default) for n, p in params.items() if p.problem(p.default)}
    # what may change at run time has a fixed scalar type (rclpy then refuses any other type)
    scalars = ("bool", "integer", "double", "string")
    assert not [n for n, p in params.items() if p.dynamic and p.type_name not in scalars]


def test_the_policy_node_declares_every_backend():
    from wam_policy_node import node

    assert set(node.PARAMS["backend"]) == {"type", *BUILTIN}
    assert node.PARAMS["backend"]["type"].choices == BUILTIN
    assert find(node.PARAMS, "backend.lerobot.zoo.kind") is node.PARAMS["backend"]["lerobot"]["zoo"]  # open table
    assert find(node.PARAMS, "backend.nosuch.key") is None and find(node.PARAMS, "safety") is None


def test_descriptors_carry_type_range_choices_and_read_only():
    from rcl_interfaces.msg import ParameterType

    from recorder.node import PARAMS as REC
    from sim_bridge.node import PARAMS as SIM
    from wam_common.params import descriptor
    from wam_policy_node.safety import PARAMS as SAFETY

    d = descriptor("safety.max_joint_velocity", SAFETY["max_joint_velocity"])
    assert d.type == ParameterType.PARAMETER_DOUBLE and not d.read_only and not d.dynamic_typing
    assert d.description == SAFETY["max_joint_velocity"].description
    (r,) = d.floating_point_range
    assert r.from_value == 0.0 and math.isinf(r.to_value) and not d.integer_range
    d = descriptor("render.width", SIM["render"]["width"])
    assert d.type == ParameterType.PARAMETER_INTEGER and d.read_only
    assert (d.integer_range[0].from_value, d.integer_range[0].to_value) == (8, 1920)
    d = descriptor("clock", SIM["clock"])
    assert d.type == ParameterType.PARAMETER_STRING and d.additional_constraints == "one of: lockstep, realtime"
    assert descriptor("render.cameras", SIM["render"]["cameras"]).additional_constraints.startswith("each item one of:")
    d = descriptor("topic_types./tf", REC["topic_types"])  # a key of an open table: the table's descriptor
    assert d.dynamic_typing and d.read_only and d.description == REC["topic_types"].description


def test_check_names_the_key_and_the_allowed_values():
    spec = {"a": {"rate": Param(1.0, "r", range=(0.5, 2.0))}, "mode": Param("x", "m", choices=("x", "y")),
            "n": Param(1, "n", range=(1, None)), "cams": Param(["c1"], "c", choices=("c1", "c2"))}
    cfg = defaults(spec)
    check(spec, cfg, "node 't'")
    for bad, text in [({"a": {"rate": 3.0}}, "key 'a.rate' must be within 0.5..2.0, got 3.0"),
                      ({"mode": "z"}, "key 'mode' must be one of x, y, got 'z'"),
                      ({"n": 0}, "key 'n' must be >= 1, got 0"),
                      ({"cams": ["c1", "c3"]}, "key 'cams' must be one of c1, c2, got 'c3'")]:
        with pytest.raises(ConfigError, match=re.escape(f"node 't': {text}")):
            check(spec, {**cfg, **bad}, "node 't'")


@pytest.mark.parametrize("module", EXECUTABLES.values())
def test_endpoints_are_named_and_typed(module):
    mod = importlib.import_module(module)
    eps = mod.endpoints(defaults(mod.PARAMS))
    topics = [(e.name, e.direction) for e in eps if isinstance(e, Topic)]
    assert topics and len(set(topics)) == len(topics), "a topic twice in one direction"
    for e in eps:
        assert e.description and re.fullmatch(r"\w+/(msg|srv)/\w+", e.type), e
        assert e.name.startswith("/") if isinstance(e, Topic) else e.name.startswith("~/"), e
        assert isinstance(e, Service) or e.direction in ("publishes", "subscribes"), e


def test_nodes_md_is_what_nodes_doc_prints():
    from wam_apps.nodes_doc import render

    doc = ROOT / "docs" / "NODES.md"
    assert doc.read_text(encoding="utf-8") == render(), "docs/NODES.md is stale: wam-policy nodes-doc > docs/NODES.md"
