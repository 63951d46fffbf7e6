"""``wam-policy up GRAPH`` starts a graph like ``ros2 launch``; ``wam-policy graph GRAPH`` prints it."""
from __future__ import annotations

import time

import yaml

from wam_common.graph import load_graph, parse_set
from wam_common.launcher import GraphRunner


def _common(p) -> None:
    p.add_argument("graph", nargs="?", default="aloha_sim", help="config name or path (default: aloha_sim)")
    p.add_argument("--set", action="append", default=[], metavar="NODE.KEY=VALUE",
                   help="override a node parameter, e.g. wam_policy_node.backend.type=lerobot; NODE.enabled=false drops a node")


def add_arguments(p) -> None:
    _common(p)
    p.add_argument("--domain-id", type=int, default=None, help="ROS_DOMAIN_ID (default: a free one)")
    p.add_argument("--log-dir", default=None, help="where node logs go (default: print to the terminal)")


def add_graph_arguments(p) -> None:
    _common(p)


def run_graph(args) -> int:
    g = load_graph(args.graph, parse_set(args.set))
    out = {"graph": g.name, "source": str(g.source), "use_sim_time": g.use_sim_time, "env": g.env(),
           "nodes": [{"name": n.name, "executable": n.executable, "parameters": n.parameters,
                      "remappings": n.remappings} for n in g.nodes]}
    print(yaml.safe_dump(out, sort_keys=False))
    return 0


def run(args) -> int:
    g = load_graph(args.graph, parse_set(args.set))
    runner = GraphRunner(g, domain_id=args.domain_id, log_dir=args.log_dir, quiet=args.log_dir is not None)
    runner.start()
    print(f"graph '{g.name}' up on ROS_DOMAIN_ID={runner.domain_id}: {', '.join(runner.procs)} (Ctrl-C stops)")
    try:
        while True:
            dead = runner.dead()
            if dead:
                print(f"node(s) exited: {dead}; stopping the graph")
                break
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        runner.stop()
    return 0
