"""``wam-policy eval --robot``: the suite on a real robot, with a person in the loop.

The robot's graph is already up (``ros2 launch wam_policy aloha.launch.py``). For each
configuration that applies on hardware this sets its stream-level part on the live nodes
(``perturbation_node`` profile, through the node's own ``set_parameters`` service), tells the
operator what to set by hand (lighting, layout, ...), then runs the episodes: Enter starts one,
``y``/``n`` labels it a success/failure (``x`` discards it: a setup problem, the seed is run
again). Start/end are published as EPISODE events by :class:`wam_apps.robot.operator.Operator`, so the
recorder keeps the labels in the bag; rows go to the same resumable store as in sim.
"""
from __future__ import annotations

import sys
import time
from typing import Callable, TextIO

from wam_common.config import ConfigError, flatten
from wam_apps.evaluation.results import ResultStore
from wam_apps.evaluation.suites import Suite


def set_parameters(node, target: str, params: dict, timeout: float = 5.0) -> None:
    """Set (dotted) parameters on a live node through its ``/<target>/set_parameters`` service."""
    from rcl_interfaces.msg import Parameter, ParameterValue
    from rcl_interfaces.srv import SetParameters
    from rclpy.parameter import Parameter as RclpyParameter

    client = node.create_client(SetParameters, f"/{target}/set_parameters")
    try:
        if not client.wait_for_service(timeout_sec=timeout):
            raise ConfigError(f"robot: node '{target}' is not running (no /{target}/set_parameters service)")
        req = SetParameters.Request()
        for name, value in flatten(params).items():
            msg: Parameter = RclpyParameter(name, value=value).to_parameter_msg()
            assert isinstance(msg.value, ParameterValue)
            req.parameters.append(msg)
        future = client.call_async(req)
        end = time.monotonic() + timeout
        while not future.done() and time.monotonic() < end:
            time.sleep(0.02)
        if not future.done():
            raise ConfigError(f"robot: node '{target}' did not answer set_parameters within {timeout:.0f} s")
        for p, r in zip(req.parameters, future.result().results):
            if not r.successful:
                raise ConfigError(f"robot: node '{target}' refused parameter '{p.name}': {r.reason}")
    finally:
        node.destroy_client(client)


def run_robot(suite: Suite, policy: str, task: str, episodes: int, seed0: int, store: ResultStore,
              stdin: TextIO = sys.stdin, say: Callable[[str], None] = print, domain_id: int | None = None,
              max_duration_s: float = 120.0) -> list[dict]:
    from wam_apps.robot.operator import EpisodeBook, Operator

    done = store.done()
    configs = [c for c in suite.configurations if c.on_robot()]
    skipped = [c.name for c in suite.configurations if not c.on_robot()]
    if skipped:
        say(f"[eval] not applicable on a robot (sim-only): {', '.join(skipped)}")
    book = EpisodeBook(task=task, seed=seed0, max_duration_s=max_duration_s)
    op = Operator(book, domain_id, say=lambda s: None)
    rows: list[dict] = []

    def ask(prompt: str) -> str:
        say(prompt)
        line = stdin.readline()
        if line == "":
            raise EOFError("operator input closed")
        return line.strip().lower()

    try:
        # the labels must reach the bag: wait for the recorder (any EPISODE subscriber) to match, and
        # for discovery to settle (the count unchanged for a second: the graph has several listeners)
        end = time.monotonic() + 20.0
        count, since = -1, time.monotonic()
        while time.monotonic() < end:
            n = op.pub_episode.get_subscription_count()
            if n != count:
                count, since = n, time.monotonic()
            elif n > 0 and time.monotonic() - since >= 1.0:
                break
            time.sleep(0.1)
        if op.pub_episode.get_subscription_count() == 0:
            say("[eval] warning: nothing subscribes to the episode topic (no recorder?): labels are kept in "
                "episodes.jsonl only")
        for conf in configs:
            seeds = [seed0 + j for j in range(episodes) if (policy, conf.name, task, seed0 + j) not in done]
            if not seeds:
                continue
            for node, params in (conf.robot or {}).items():
                set_parameters(op.node, node, params)
            say(f"[eval] configuration {conf.name} ({conf.dimension} level {conf.level})"
                + (f" — set up by hand: {conf.operator}" if conf.operator else ""))
            for seed in seeds:
                while True:
                    ask(f"[eval] {conf.name} seed {seed}: reset the scene, then Enter to start")
                    book.next_episode(seed - seed0)  # the event's seed is seed0 + episode index
                    say(op.handle("start"))
                    label = ""
                    while label not in ("y", "n", "x"):
                        label = ask("[eval] label the episode: y success, n failure, x discard (rerun)")
                    say(op.handle({"y": "success", "n": "failure", "x": "discard"}[label]))
                    if label != "x":
                        break
                end = [e for e in op.events if e.get("event") == "end"][-1]
                row = {"policy": policy, "configuration": conf.name, "dimension": conf.dimension,
                       "level": conf.level, "task": task, "seed": seed, "success": bool(end["success"]),
                       "steps": int(end["steps"]), "reason": end["reason"], "clock": "robot",
                       "latency_ms_mean": (end.get("latency_ms") or {}).get("mean"), "infer_ms_mean": None,
                       "stalls": None, "bag": None, "label": end.get("label")}
                store.append(row)
                rows.append(row)
        say(op.handle("done"))
        op.wait_delivered()
    finally:
        op.close()
    return rows
