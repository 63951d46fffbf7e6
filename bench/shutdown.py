"""Shutdown under repeated SIGINT: N runs of `ros2 launch wam_policy aloha_sim.launch.py` as a user runs
it (colcon-built workspace of a copy of this package, tests/ros2_tools.py), each stopped at a random
moment mid-episode by SIGINT to the whole process group twice, 0.1-0.5 s apart (what a terminal's
Ctrl-C pressed twice, `timeout -s INT` or `kill -INT -PGID` do; `ros2 launch` passes a SIGINT on to
its nodes as well when its stdin is not a terminal, so each node gets 3-4).

Prints one JSON object. Per run: the moment and the gap, ros2 launch's exit status, how many nodes
"finished cleanly", anything bad in the output (Traceback, RCLError, [ERROR], a node that died), the
time from the first SIGINT to the launch's exit, and the bag: read without repair by ``rosbags`` and
by ``mcap`` + ``mcap-ros2-support`` (every message decoded, the same counts), and every message a
probe on the same domain received before the first SIGINT (commands, joint states, privileged state:
a lower bound of what the graph sent before it) present in the bag, byte for byte.

    .venv/bin/python bench/shutdown.py [--runs 10] [--seed 0]
"""
from __future__ import annotations

import argparse
import collections
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import ros2_tools as rt  # noqa: E402  (tests/: the workspace and the bag readers the tests use)

BAD = ("Traceback", "RCLError", "ERROR]", "Segmentation fault", "core dumped", "process has died")


def probe_topics() -> dict:
    from sensor_msgs.msg import JointState
    from std_msgs.msg import Float64MultiArray, String

    from wam_common import topics as T

    return {T.COMMAND: Float64MultiArray, T.joint_state_topic("left"): JointState,
            T.joint_state_topic("right"): JointState, T.PRIVILEGED_STATE: String}


def raw_messages(bag: Path) -> dict[str, collections.Counter]:
    """Per topic, the multiset of raw CDR payloads in the bag's MCAP files."""
    from mcap.reader import make_reader

    out: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for f in sorted(bag.glob("*.mcap")):
        with open(f, "rb") as fh:
            for _, channel, message in make_reader(fh).iter_messages():
                out[channel.topic][bytes(message.data)] += 1
    return out


def one_run(ws: rt.Workspace, probe, out: Path, log: Path, delay_s: float, gap_s: float) -> dict:
    from wam_common import topics as T

    topics = probe_topics()
    probe.clear()
    p = ws.start(f"ros2 launch wam_policy aloha_sim.launch.py set:='sim_bridge.episodes=0;recorder.output_dir={out}'", log)
    res: dict = {"delay_s": round(delay_s, 3), "gap_s": round(gap_s, 3)}
    try:
        if not probe.wait_count(T.COMMAND, 1, timeout=240):
            return {**res, "error": "no command within 240 s", "log_tail": rt.read_log(p)[-2000:]}
        time.sleep(delay_s)  # a random moment of the (endless) episode
        before = {t: collections.Counter(probe.raw(t)) for t in topics}
        t0 = time.monotonic()
        rt.signal_group(p)
        time.sleep(gap_s)
        rt.signal_group(p)
        try:
            code = rt.wait_exit(p, 60)
        except AssertionError:
            code = None  # still running after 60 s: killed
    finally:
        rt.kill_group(p)
    res["shutdown_s"] = round(time.monotonic() - t0, 2)
    text = rt.read_log(p)
    res.update(exit=code, nodes_finished_cleanly=text.count("process has finished cleanly"),
               bad_output={b: text.count(b) for b in BAD if b in text},
               signals_ignored=text.count("again: ignored"))
    bags = [d for d in out.iterdir() if d.is_dir()] if out.is_dir() else []
    if len(bags) != 1:
        return {**res, "error": f"{len(bags)} bags in {out}"}
    try:
        counts = rt.bag_counts(bags[0])  # rosbags and mcap + mcap-ros2-support, no repair
        res["readable"] = True
    except Exception as exc:  # noqa: BLE001 - the figure is whether it reads
        return {**res, "readable": False, "error": f"{type(exc).__name__}: {exc}"}
    stored = raw_messages(bags[0])
    res["messages"] = sum(counts.values())
    res["before_first_sigint"] = {t: sum(c.values()) for t, c in before.items()}
    res["missing"] = {t: sum((c - stored[t]).values()) for t, c in before.items()}
    return res


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--delay", type=float, nargs=2, default=(0.5, 8.0), metavar=("MIN", "MAX"),
                    help="seconds after the first command before the first SIGINT")
    ap.add_argument("--gap", type=float, nargs=2, default=(0.1, 0.5), metavar=("MIN", "MAX"),
                    help="seconds between the two SIGINTs")
    a = ap.parse_args()
    if rt.missing():
        print(json.dumps({"error": rt.missing()}))
        return 1
    import rclpy
    from rclpy.context import Context
    from rosutil import Probe

    from wam_common.launcher import DomainLease

    rng = random.Random(a.seed)
    lease = DomainLease()
    tmp = Path(tempfile.mkdtemp(prefix="wam_shutdown_"))
    ctx = Context()
    try:
        ws = rt.Workspace(tmp / "ws", lease.domain_id)
        rclpy.init(context=ctx, domain_id=lease.domain_id)
        probe = Probe(ctx)
        for topic, cls in probe_topics().items():
            probe.listen(topic, cls, depth=1000)
        runs = []
        for i in range(a.runs):
            r = one_run(ws, probe, tmp / f"bags_{i}", tmp / f"launch_{i}.log", rng.uniform(*a.delay), rng.uniform(*a.gap))
            runs.append({"run": i, **r})
            print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
        probe.close()
        ok = [r for r in runs if "error" not in r]
        clean = [r for r in ok if r["exit"] == 0 and r["nodes_finished_cleanly"] == 4 and not r["bad_output"]]
        complete = [r for r in ok if not any(r["missing"].values())]
        shut = [r["shutdown_s"] for r in ok]
        result = {
            "bench": "shutdown", "command": "ros2 launch wam_policy aloha_sim.launch.py (double SIGINT to the group)",
            "tools": rt.describe(), "runs": a.runs, "seed": a.seed, "delay_s": list(a.delay), "gap_s": list(a.gap),
            "clean_exits": len(clean), "bags_readable": sum(1 for r in ok if r.get("readable")),
            "bags_complete": len(complete),
            "messages_before_first_sigint": sum(sum(r["before_first_sigint"].values()) for r in ok),
            "missing": sum(sum(r["missing"].values()) for r in ok),
            "shutdown_s": {"p50": round(statistics.median(shut), 2), "max": max(shut)} if shut else None,
            "target_met": len(clean) == len(complete) == a.runs,
            "per_run": runs,
        }
        print(json.dumps(result, indent=1))
        return 0
    finally:
        ctx.try_shutdown()
        lease.release()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
