"""The ``wam-policy`` command line: one entry, sub-commands registered by name.

Each sub-command is a module with ``add_arguments(parser)`` and ``run(args) -> int``; it is
imported only when used, so ``wam-policy --help`` stays fast. A :class:`ConfigError` anywhere
becomes one line on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from wam_common.config import ConfigError

#: name → (module, one-line help); each module is imported only when its command runs
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("wam_apps.cli.demo", "run one sim transfer-cube episode through the full graph and record it"),
    "up": ("wam_apps.cli.up", "start a graph description (what `ros2 launch` does) until Ctrl-C"),
    "graph": ("wam_apps.cli.up", "print the nodes, parameters and remappings of a graph description"),
    "eval": ("wam_apps.evaluation.cli", "robustness evaluation over a perturbation suite"),
    "serve": ("wam_policy_node.server", "serve a policy config's backend to many clients (openpi's websocket protocol)"),
    "analyze": ("wam_apps.analysis.cli_analyze", "per-episode and per-perturbation tables and plots from bags"),
    "parity": ("wam_apps.analysis.cli_parity", "sim-vs-real parity report from two bags"),
    "parity-study": ("wam_apps.analysis.cli_parity_study", "sim-vs-real success over a policy family: Pearson, MMRV, "
                     "prediction-powered real success from paired eval runs"),
    "calibrate": ("wam_apps.analysis.cli_calibrate", "fit the sim's arm dynamics (gain, damping, friction per joint) "
                  "to recorded bags: writes a world config"),
    "export-lerobot": ("wam_apps.export_lerobot", "bags → LeRobotDataset (v3)"),
    "collect": ("wam_apps.training.collect", "scripted-expert demos → LeRobotDataset"),
    "train": ("wam_apps.training.train", "train ACT / Diffusion Policy with LeRobot"),
    "perturb-sheet": ("wam_apps.sheets.perturb", "contact sheet PNG of perturbation ops × levels"),
    "contact-sheet": ("wam_apps.sheets.contact", "contact sheet PNG of sim tasks × physical perturbations"),
    "preflight": ("wam_apps.robot.preflight", "pre-flight checks before arming a real robot"),
    "operator": ("wam_apps.robot.operator", "real-robot evaluation: start/stop/label episodes from the keyboard or a topic"),
    "cameras": ("wam_apps.robot.cameras", "list connected RealSense cameras (serials for config/aloha.yaml)"),
    "nodes-doc": ("wam_apps.nodes_doc", "print docs/NODES.md: every node's topics, services and parameters, from the code"),
}


def register(name: str, module: str, help_: str) -> None:
    COMMANDS[name] = (module, help_)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="wam-policy",
                                     description="Deploy and stress-test VLA / WAM policies on ALOHA over ROS 2.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    argv = sys.argv[1:] if argv is None else argv
    wanted = argv[0] if argv and not argv[0].startswith("-") else None
    modules = {}
    for name, (mod, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        if name == wanted:
            try:
                modules[name] = importlib.import_module(mod)
            except ModuleNotFoundError as exc:
                print(f"wam-policy {name}: not available ({exc})", file=sys.stderr)
                return 2
            modules[name].add_arguments(p) if name != "graph" else modules[name].add_graph_arguments(p)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        module = modules[args.command]
        return int((module.run if args.command != "graph" else module.run_graph)(args) or 0)
    except ConfigError as exc:
        print(f"wam-policy {args.command}: config error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"wam-policy {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
