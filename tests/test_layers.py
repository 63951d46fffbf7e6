"""The package's layers, read from the code's own imports (an AST walk, every import statement, also
those inside functions): the ground (``wam_common``) imports no node package and no app; node packages
import the ground and not each other (one named exception) nor the apps; nothing imports the apps;
no import cycle between modules; no test support (``unittest.mock``, ``pytest``) in runtime code."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
#: top-level package → layer (0 ground, 1 nodes, 2 apps)
LAYERS = {
    "wam_common": 0,
    "sim_bridge": 1, "perturbation_node": 1, "wam_policy_node": 1, "recorder": 1, "robot_io": 1,
    "wam_apps": 2,
}
#: imports between two node packages that the layering allows, each with its reason
ALLOWED = {
    ("wam_policy_node.backends.expert", "sim_bridge.experts"):
        "the scripted expert is a policy backend that plans on the sim's MuJoCo model (privileged state)",
}
TEST_SUPPORT = ("unittest.mock", "pytest", "_pytest")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[str, int]]:
    """Every module ``path`` imports (absolute names; ``from X import y`` also as ``X.y`` when that is
    a module of ours), with its line."""
    mod = module_name(path)
    pkg = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(pkg[: len(pkg) - node.level + 1] + ([node.module] if node.module else []))
            out.append((base, node.lineno))
            out += [(f"{base}.{a.name}", node.lineno) for a in node.names if module_file(f"{base}.{a.name}")]
    return out


def module_file(name: str) -> Path | None:
    p = ROOT.joinpath(*name.split("."))
    for cand in (p.with_suffix(".py"), p / "__init__.py"):
        if cand.is_file():
            return cand
    return None


def runtime_files() -> list[Path]:
    return sorted(f for top in LAYERS for f in (ROOT / top).rglob("*.py"))


def test_every_top_level_package_has_a_layer():
    ours = {p.parent.name for p in ROOT.glob("*/__init__.py")}
    assert ours == set(LAYERS), f"packages without a layer: {sorted(ours - set(LAYERS))}"


def test_imports_point_down_the_layers():
    wrong = []
    for f in runtime_files():
        src = module_name(f)
        for name, line in imports(f):
            top = name.split(".")[0]
            if top not in LAYERS or top == src.split(".")[0]:
                continue
            a, b = LAYERS[src.split(".")[0]], LAYERS[top]
            if b < a or any(src == s and (name == d or name.startswith(d + ".")) for s, d in ALLOWED):
                continue
            wrong.append(f"{f.relative_to(ROOT)}:{line}: {src} (layer {a}) imports {name} (layer {b})")
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def test_allowed_exceptions_are_still_needed():
    for (src, dst), why in ALLOWED.items():
        names = [n for n, _ in imports(module_file(src))]
        assert any(n == dst or n.startswith(dst + ".") for n in names), f"{src} no longer imports {dst}: drop it ({why})"


def test_no_import_cycle_between_modules():
    graph = {}
    for f in runtime_files():
        src = module_name(f)
        deps = set()
        for name, _ in imports(f):
            if name.split(".")[0] in LAYERS and module_file(name) and name != src:
                # a package's __init__ importing its own submodule (a registry) is not a cycle partner
                if not (f.name == "__init__.py" and name.startswith(src + ".")):
                    deps.add(name)
        graph[src] = deps
    cycles, state = [], {}

    def visit(n, stack):
        state[n] = 1
        stack.append(n)
        for d in sorted(graph.get(n, ())):
            if state.get(d) == 1:
                cycles.append(" -> ".join(stack[stack.index(d):] + [d]))
            elif d not in state:
                visit(d, stack)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n, [])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_no_test_support_in_runtime_code():
    bad = [f"{f.relative_to(ROOT)}:{line}: {name}" for f in runtime_files() for name, line in imports(f)
           if any(name == t or name.startswith(t + ".") for t in TEST_SUPPORT)]
    assert not bad, "test support imported by runtime code:\n" + "\n".join(bad)


def test_the_checker_sees_a_wrong_import(tmp_path, monkeypatch):
    """The walk is not blind: a ground module importing a node, written into a scratch tree, is found."""
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    (tmp_path / "wam_common").mkdir()
    (tmp_path / "wam_common" / "__init__.py").write_text("")
    (tmp_path / "wam_common" / "bad.py").write_text("def f():\n    from wam_policy_node import node\n")
    with pytest.raises(AssertionError, match="wam_common.bad .layer 0. imports wam_policy_node"):
        test_imports_point_down_the_layers()
