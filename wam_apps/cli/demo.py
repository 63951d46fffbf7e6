"""``wam-policy demo``: one sim episode through the full graph, recorded.

Starts the ``aloha_sim`` graph description (sim_bridge → perturbation_node → wam_policy_node →
sim_bridge, plus the recorder) exactly as ``ros2 launch wam_policy aloha_sim.launch.py`` would,
watches the episode events on the graph's own ROS_DOMAIN_ID, shows progress, stops the graph
(policy first, recorder last so the bag closes cleanly) and prints the outcome and the bag path.
"""
from __future__ import annotations

import json
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from wam_common.background_node import BackgroundNode
from wam_common.config import deep_merge
from wam_common.graph import load_graph, parse_set
from wam_common.launcher import GraphRunner
from wam_common.progress import Progress

#: the demo's own overrides on top of config/aloha_sim.yaml (kept small: the graph's defaults rule)
DEMO_OVERRIDES = {
    "sim_bridge": {"episodes": 1},
}
STOP_ORDER = ["wam_policy_node", "perturbation_node", "sim_bridge", "recorder"]


@dataclass
class DemoResult:
    success: bool | None = None
    steps: int = 0
    latency_ms: dict = field(default_factory=dict)
    bag: Path | None = None
    events: list = field(default_factory=list)
    commands: int = 0
    error: str | None = None
    domain_id: int | None = None
    log_dir: Path | None = None


class _Watcher(BackgroundNode):
    """Episode events and the command count, on the graph's domain."""

    def __init__(self, domain_id: int):
        from std_msgs.msg import Float64MultiArray, String

        from wam_common import qos, topics

        super().__init__("wam_policy_demo_watcher", domain_id)
        self.events: list[dict] = []
        self.commands = 0
        self.cond = threading.Condition()
        self.node.create_subscription(String, topics.EPISODE, self._on_event, qos.EVENTS)
        self.node.create_subscription(Float64MultiArray, topics.COMMAND, self._on_command, qos.COMMAND)
        self.start()

    def _on_event(self, msg):
        try:
            ev = json.loads(msg.data)
        except ValueError:
            return
        with self.cond:
            self.events.append(ev)
            self.cond.notify_all()

    def _on_command(self, _msg):
        with self.cond:
            self.commands += 1


def run_demo(sets: list[str] | None = None, graph: str = "aloha_sim", timeout: float = 600.0,
             policy: str | None = None,
             bag_name: str | None = None, output_dir: str | None = None, show_progress: bool = True,
             domain_id: int | None = None, log_dir: str | Path | None = None) -> DemoResult:
    """Run one episode through the graph; returns what happened (used by the CLI and the tests)."""
    stamp = time.strftime("%Y%m%d_%H%M%S")
    bag_name = bag_name or f"demo_{stamp}"
    overrides = dict(DEMO_OVERRIDES)
    if policy:  # a policy config (config/policies/<name>.yaml): its wam_policy_node overrides
        from wam_common.policies import load_policy_config

        overrides["wam_policy_node"] = load_policy_config(policy)[1]
    overrides = deep_merge(overrides, parse_set(list(sets or [])))
    rec = overrides.setdefault("recorder", {})
    rec.setdefault("bag_name", bag_name)
    if output_dir is not None:
        rec["output_dir"] = str(output_dir)
    g = load_graph(graph, overrides)
    out_dir = Path(g.node("recorder").parameters.get("output_dir", "runs/bags")).resolve()
    g.node("recorder").parameters["output_dir"] = str(out_dir)
    log_dir = Path(log_dir) if log_dir else Path("runs/logs") / f"{rec['bag_name']}"
    runner = GraphRunner(g, domain_id=domain_id, log_dir=log_dir)
    res = DemoResult(bag=out_dir / rec["bag_name"], domain_id=runner.domain_id, log_dir=runner.log_dir)
    watcher = None
    runner.start()
    try:
        watcher = _Watcher(runner.domain_id)
        started = time.monotonic()
        deadline = started + timeout
        bar = None
        while True:
            with watcher.cond:
                watcher.cond.wait(timeout=0.25)
                events = list(watcher.events)
                commands = watcher.commands
            start = next((e for e in events if e.get("event") == "start"), None)
            end = next((e for e in events if e.get("event") == "end"), None)
            if start and bar is None and show_progress:
                bar = Progress(int(start.get("max_steps") or 0), "demo", "steps (the episode ends early on success)")
            if bar is not None:
                bar.update(commands)
            if end is not None:
                res.success = bool(end.get("success"))
                res.steps = int(end.get("steps", 0))
                res.latency_ms = dict(end.get("latency_ms") or {})
                break
            dead = runner.dead()
            if dead:
                name, code = next(iter(dead.items()))
                tail = runner.log(name).strip().splitlines()[-5:]
                res.error = f"node '{name}' exited with status {code}: " + (" | ".join(tail) or "no output")
                break
            if time.monotonic() > deadline:
                res.error = f"no episode end within {timeout:.0f} s (logs in {runner.log_dir})"
                break
        if bar is not None:
            bar.close(res.steps or commands)
        # give the recorder a moment to receive the last messages before the graph stops
        time.sleep(1.0)
        with watcher.cond:
            res.events = list(watcher.events)
            res.commands = watcher.commands
    finally:
        if watcher is not None:
            watcher.close()
        runner.stop(order=STOP_ORDER)
    return res


def add_arguments(p) -> None:
    p.add_argument("--graph", default="aloha_sim", help="graph description (default: aloha_sim)")
    p.add_argument("--policy", default="act_sim",
                   help="policy config (config/policies/<name>.yaml; default act_sim: the ACT trained here on scripted "
                        "demos, checkpoints/act_transfer_cube); 'graph' keeps the graph's own backend (the scripted expert)")
    p.add_argument("--set", action="append", default=[], metavar="NODE.KEY=VALUE",
                   help="override a node parameter, e.g. sim_bridge.seed=3 or wam_policy_node.backend.type=lerobot")
    p.add_argument("--output-dir", default=None, help="where the bag goes (default: the recorder's, runs/bags)")
    p.add_argument("--timeout", type=float, default=600.0, help="give up after this many seconds")


def run(args) -> int:
    print(f"[demo] starting graph '{args.graph}' (sim_bridge → perturbation_node → wam_policy_node → sim_bridge, "
          "+ recorder)", flush=True)
    policy = None if args.policy == "graph" else args.policy
    print(f"[demo] policy: {args.policy}", flush=True)
    res = run_demo(args.set, graph=args.graph, timeout=args.timeout, output_dir=args.output_dir, policy=policy)
    if res.error:
        print(f"[demo] FAILED: {res.error}", file=sys.stderr)
        print(f"[demo] node logs: {res.log_dir}", file=sys.stderr)
        return 1
    if res.bag:
        try:  # the recorded figure: the demo's own monitor may join after the first command
            from wam_apps.analysis.episodes import analyze_bag

            res.commands = sum(e.commands for e in analyze_bag(res.bag))
        except Exception:  # noqa: BLE001 - the monitor's count stays
            pass
    lat = res.latency_ms
    lat_s = (f"{lat.get('mean', float('nan')):.1f} ms mean, {lat.get('p99', float('nan')):.1f} ms p99"
             if lat else "n/a")
    print(f"[demo] {'SUCCESS' if res.success else 'FAILURE'}: steps={res.steps} commands={res.commands} "
          f"obs->command latency {lat_s}")
    print(f"[demo] bag: {res.bag}")
    print(f"[demo] next: wam-policy analyze {res.bag}   (or open the .mcap in Foxglove / `ros2 bag info`)")
    return 0 if res.success else 1
