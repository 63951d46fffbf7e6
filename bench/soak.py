"""Soak: the real-time closed loop for a long time, with its policy server and recorder killed again and
again; prints one JSON object.

The graph is ``config/aloha_sim.yaml`` as ``wam-policy up`` runs it (``wam_common.launcher.GraphRunner``,
one process per node) with the sim on its real-time clock (``clock: realtime``, episodes forever), the
perturbation node and the policy node in real-time mode, and the policy node's backend the ``openpi``
client of a ``wam-policy serve --policy POLICY`` process (default: the served scripted expert, cheap on a
CPU). During ``--duration-s``:

- the policy server is killed with SIGKILL every ``--server-kill-every-s`` and started again (the node
  holds while it is gone and reconnects: ``backend.openpi.reconnect_s``);
- the recorder is killed with SIGKILL every ``--recorder-kill-every-s`` and started again into a new bag
  (``soak_NNN``); the last one is stopped with SIGINT at the end.

Figures: every bag opened and read to its end with ``wam_common.bag.reader.Bag`` (a killed bag is repaired
first, ``wam_common.bag.repair``): ``readable``; per kill, ``lost_s`` = the span of the left arm's joint
states that a probe on the same domain received before the kill and the killed bag lacks (what the
recorder had taken and not yet written: its ``flush_period_s`` + ``reorder_window_s``
(``recorder.node.kill_bound_s``) bound it on an idle machine), in the data's own time (header stamps: sim time;
``lost_wall_s``: by the probe's clock),
``lost_messages`` their count,
``since_last_s`` = kill time − the bag's last log time (an upper bound), and ``unrecorded_s`` = the gap
from the kill to the next bag's first joint state (the restart: nobody records); per server kill, the
node's hold reason and the time from the kill to its first recorded status without a hold once the new
server is up (``policy_back_after_s``, a recorder restart can delay its sighting); RSS (MB) per
node at the start (after
``--warmup-s``) and at the end, restarted processes per incarnation (first and last).

    PYTHONPATH=. .venv/bin/python bench/soak.py --duration-s 1800          # the full figure: 30 min
    PYTHONPATH=. nice -n 5 .venv/bin/python bench/soak.py --duration-s 240 --recorder-kill-every-s 10 \\
        --server-kill-every-s 60                                          # a short version
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from wam_common import topics as T  # noqa: E402
from wam_common.graph import load_graph  # noqa: E402
from wam_common.launcher import GraphRunner, node_command, params_yaml  # noqa: E402


STREAM = T.joint_state_topic("left")  # 50 Hz from the sim, never latched: where a bag's stream starts


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


class Probe:
    """A subscriber on the graph's domain (its own thread) noting each raw joint state of the left arm (its
    arrival wall time and header stamp): what was published, to compare with what a killed recorder kept."""

    def __init__(self, domain_id: int):
        import threading

        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from sensor_msgs.msg import JointState

        from wam_common import qos

        os.environ["ROS_DOMAIN_ID"] = str(domain_id)
        self.ctx = rclpy.Context()
        rclpy.init(context=self.ctx)
        self.node = rclpy.create_node("soak_probe", context=self.ctx)
        self.got: list[tuple[int, int]] = []  # (wall ns at arrival, header stamp ns)
        self.node.create_subscription(
            JointState, STREAM, lambda m: self.got.append(
                (time.time_ns(), m.header.stamp.sec * 1_000_000_000 + m.header.stamp.nanosec)), qos.SENSOR)
        self.ex = SingleThreadedExecutor(context=self.ctx)
        self.ex.add_node(self.node)
        self.thread = threading.Thread(target=self.ex.spin, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.ex.shutdown()
        self.node.destroy_node()
        self.ctx.try_shutdown()
        self.thread.join(5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill_group(p: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(p.pid, sig)
    except ProcessLookupError:
        pass


class Server:
    """``wam-policy serve`` as its own process (its own session: killed as a group)."""

    def __init__(self, policy: str, port: int, log_dir: Path, env: dict):
        self.policy, self.port, self.log_dir, self.env = policy, port, log_dir, env
        self.proc: subprocess.Popen | None = None
        self.incarnation = 0

    def start(self, timeout: float = 180.0) -> float:
        self.incarnation += 1
        log = open(self.log_dir / f"serve_{self.incarnation:03d}.log", "wb")
        t0 = time.monotonic()
        self.proc = subprocess.Popen([sys.executable, "-m", "wam_apps.cli", "serve", "--policy", self.policy, "--port",
                                      str(self.port)], cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"wam-policy serve exited {self.proc.returncode}: see {log.name}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2):
                    return time.monotonic() - t0
            except (urllib.error.URLError, OSError):
                time.sleep(0.2)
        raise RuntimeError(f"wam-policy serve did not answer /healthz within {timeout} s")

    def metadata(self) -> dict:
        from websockets.sync.client import connect

        from wam_policy_node.backends import msgpack_numpy

        with connect(f"ws://127.0.0.1:{self.port}", compression=None, max_size=None, proxy=None) as ws:
            return msgpack_numpy.unpackb(ws.recv(timeout=30))


def graph_overrides(port: int, meta: dict, bag_dir: Path, cameras: list[str]) -> dict:
    flags = meta.get("wam_policy", {})
    return {
        "sim_bridge": {"clock": "realtime", "episodes": 0,
                       "render": {"camera_every": 5, "quality": "fast", "cameras": cameras},
                       "start_wait_nodes": ["wam_policy_node", "perturbation_node", "recorder"]},
        "perturbation_node": {"lockstep": False},
        "wam_policy_node": {"lockstep": False,
                            "observation": {"cameras": cameras, "image_keys": cameras},
                            "backend": {"type": "openpi", "openpi": {
                                "host": "127.0.0.1", "port": port, "image_size": [0, 0],
                                "images": bool(flags.get("needs_images", True)),
                                "privileged": bool(flags.get("needs_privileged", False)),
                                "timeout_s": 10.0, "connect_timeout_s": 3.0, "reconnect_s": 0.5}}},
        "recorder": {"output_dir": str(bag_dir), "bag_name": "soak_000"},
    }


def read_bag(path: Path) -> dict:
    """Open (repairing a killed bag) and read every message: counts, first/last log time, the first joint
    state's log time (latched topics replay older messages at a recorder's start), command stamps."""
    from wam_common.bag.reader import Bag, BagReadError, json_event

    out = {"bag": path.name, "readable": False}
    t0 = time.monotonic()
    try:
        with Bag(path) as bag:
            n, first, last, stamps, cmds, holds = 0, None, None, set(), [], []
            for m in bag.messages():
                n += 1
                if m.topic == STREAM:
                    first = m.log_ns if first is None else min(first, m.log_ns)
                    sec, nsec = struct.unpack_from("<iI", m.data, 4)  # CDR: header.stamp after the encapsulation
                    stamps.add(sec * 1_000_000_000 + nsec)
                last = m.log_ns if last is None else max(last, m.log_ns)
                if m.topic == T.COMMAND:
                    cmds.append(m.log_ns)
                elif m.topic == T.POLICY_STATUS:
                    st = json_event(m)
                    if st is not None:
                        holds.append((m.log_ns, st.get("hold")))
        out.update(readable=True, messages=n, first_stream_ns=first, stream_stamps=stamps, last_ns=last,
                   commands=cmds, holds=holds)
    except (BagReadError, OSError) as exc:
        out["error"] = str(exc)
    out["read_s"] = round(time.monotonic() - t0, 2)
    return out


def soak(duration_s: float, recorder_every_s: float, server_every_s: float, policy: str, warmup_s: float,
         out_dir: Path, cameras: list[str]) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    bag_dir, log_dir = out_dir / "bags", out_dir / "logs"
    log_dir.mkdir(exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    server = Server(policy, free_port(), log_dir, env)
    server.start()
    meta = server.metadata()
    g = load_graph("aloha_sim", graph_overrides(server.port, meta, bag_dir, cameras))
    runner = GraphRunner(g, log_dir=log_dir)
    probe = Probe(runner.domain_id)
    rec_spec = next(n for n in g.nodes if n.name == "recorder")
    rss: dict[str, list] = {}
    kills: list[dict] = []
    server_kills: list[dict] = []
    recorder_incarnation = 0

    def sample(tag: str) -> None:
        for name, p in list(runner.procs.items()):
            key = f"recorder#{recorder_incarnation}" if name == "recorder" else name
            rss.setdefault(key, []).append((tag, rss_mb(p.pid)))
        if server.proc is not None:
            rss.setdefault(f"serve#{server.incarnation}", []).append((tag, rss_mb(server.proc.pid)))

    def start_recorder(k: int) -> None:
        rec_spec.parameters["bag_name"] = f"soak_{k:03d}"
        pfile = log_dir / f"recorder_{k:03d}.params.yaml"
        pfile.write_text(params_yaml(rec_spec.name, rec_spec.ros_parameters(g.use_sim_time)))
        logf = open(log_dir / f"recorder_{k:03d}.log", "wb")
        runner.procs["recorder"] = subprocess.Popen(node_command(rec_spec, pfile), env=runner.env(), stdout=logf,
                                                    stderr=subprocess.STDOUT, start_new_session=True)

    started = time.monotonic()
    try:
        runner.start()
        # the first episode starts once every node is up (start_wait_nodes): wait for it in the bag dir
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not any(bag_dir.glob("soak_000/*.mcap")):
            if runner.dead():
                raise RuntimeError(f"node(s) exited at start: {runner.dead()}")
            time.sleep(0.5)
        time.sleep(warmup_s)
        sample("start")
        t0 = time.monotonic()
        next_rec, next_srv = t0 + recorder_every_s, t0 + server_every_s
        next_sample = t0 + 10
        while time.monotonic() - t0 < duration_s:
            now = time.monotonic()
            dead = {n: c for n, c in runner.dead().items() if n != "recorder"}
            if dead:
                raise RuntimeError(f"node(s) exited during the soak: {dead}")
            if now >= next_rec:
                p = runner.procs["recorder"]
                sample(f"kill{recorder_incarnation}")
                kill_ns = time.time_ns()
                kill_group(p, signal.SIGKILL)
                p.wait()
                kills.append({"bag": f"soak_{recorder_incarnation:03d}", "kill_ns": kill_ns})
                recorder_incarnation += 1
                start_recorder(recorder_incarnation)
                next_rec = now + recorder_every_s
            if now >= next_srv:
                sample(f"server_kill{server.incarnation}")
                kill_ns = time.time_ns()
                kill_group(server.proc, signal.SIGKILL)
                server.proc.wait()
                up_s = server.start()
                server_kills.append({"kill_ns": kill_ns, "restart_s": round(up_s, 2)})
                next_srv = time.monotonic() + server_every_s
            if now >= next_sample:
                sample(f"t{int(now - t0)}")
                next_sample = now + 10
            time.sleep(0.05)
        sample("end")
        ran_s = time.monotonic() - t0
    finally:
        stop = runner.stop(timeout=20, order=["sim_bridge", "wam_policy_node", "perturbation_node", "recorder"])
        if server.proc is not None and server.proc.poll() is None:
            kill_group(server.proc, signal.SIGINT)
            try:
                server.proc.wait(15)
            except subprocess.TimeoutExpired:
                kill_group(server.proc, signal.SIGKILL)
                server.proc.wait()
        probe.close()
    wall_s = time.monotonic() - started

    # -- the bags ----------------------------------------------------------------------------------
    bags = {p.name: read_bag(p) for p in sorted(bag_dir.iterdir()) if p.is_dir()}
    per_kill = []
    names = sorted(bags)
    for k in kills:
        b = bags.get(k["bag"], {"readable": False, "error": "missing"})
        nxt = names[names.index(k["bag"]) + 1] if k["bag"] in names and names.index(k["bag"]) + 1 < len(names) else None
        row = {"bag": k["bag"], "readable": b["readable"], "messages": b.get("messages")}
        if b.get("last_ns") is not None:
            row["since_last_s"] = round((k["kill_ns"] - b["last_ns"]) / 1e9, 3)
        if b.get("stream_stamps"):
            # joint states the probe had before the kill, published after this bag's first one, not in it: lost
            kept = b["stream_stamps"]
            missed = sorted(st for wall, st in probe.got if wall <= k["kill_ns"] and st > min(kept) and st not in kept)
            row["lost_messages"] = len(missed)
            # in the data's own time (header stamps, sim time): from the last kept to the last lost
            row["lost_s"] = round((missed[-1] - max(x for x in kept if x < missed[-1])) / 1e9, 3) if missed else 0.0
            # the same in wall time (the probe's arrivals): on a loaded machine the sim runs slower than real time
            wall = dict((st, w) for w, st in probe.got)
            last_kept = max((x for x in kept if x in wall), default=None)
            row["lost_wall_s"] = (round((wall[missed[-1]] - wall[last_kept]) / 1e9, 3) if missed and last_kept
                                  else 0.0)
        if nxt and bags[nxt].get("first_stream_ns") is not None:
            row["unrecorded_s"] = round((bags[nxt]["first_stream_ns"] - k["kill_ns"]) / 1e9, 3)
        per_kill.append(row)
    cmds = sorted(t for b in bags.values() for t in b.get("commands") or [])
    holds = sorted(h for b in bags.values() for h in b.get("holds") or [])
    for sk in server_kills:
        # the node holds (repeats its last command) from the failed request on; back to the policy's
        # commands at the first recorded status without a hold after the new server is up
        up_ns = sk["kill_ns"] + int(sk["restart_s"] * 1e9)
        held = [(t, h) for t, h in holds if t >= sk["kill_ns"]]
        first_hold = next(((t, h) for t, h in held if h), None)
        back = next((t for t, h in held if not h and t >= up_ns), None)
        sk["hold_reason"] = first_hold[1] if first_hold else None
        sk["policy_back_after_s"] = round((back - sk["kill_ns"]) / 1e9, 2) if back else None
    lost = [r["lost_s"] for r in per_kill if "lost_s" in r]
    lost_wall = [r["lost_wall_s"] for r in per_kill if "lost_wall_s" in r]
    since = [r["since_last_s"] for r in per_kill if "since_last_s" in r]
    walls = [w for w, _ in probe.got]
    stream_hz = (len(walls) - 1) / ((walls[-1] - walls[0]) / 1e9) if len(walls) > 1 else 0
    unrec = [r["unrecorded_s"] for r in per_kill if "unrecorded_s" in r]
    bag_read_s = [b["read_s"] for b in bags.values()]
    for b in bags.values():
        b.pop("commands", None)
        b.pop("holds", None)
        b["stream_messages"] = len(b.pop("stream_stamps", ()) or ())

    def first_last(series):
        vals = [v for _, v in series if v is not None]
        return {"start": vals[0], "end": vals[-1], "max": max(vals)} if vals else None

    rss_out = {k: first_last(v) for k, v in rss.items() if not k.startswith(("recorder#", "serve#"))}
    # restarted processes: the RSS each incarnation had at its last sample (before its kill, or the end)
    for what in ("recorder", "serve"):
        mine = sorted((int(k.split("#")[1]), v) for k, v in rss.items() if k.startswith(what + "#"))
        last = [[x for _, x in v if x is not None][-1] for _, v in mine if any(x is not None for _, x in v)]
        if last:
            rss_out[f"{what} (per incarnation, last sample)"] = {"first": last[0], "last": last[-1],
                                                                  "max": max(last), "n": len(last)}
    plog = log_dir / "wam_policy_node.log"
    policy_log = plog.read_text(errors="replace") if plog.exists() else ""
    return {
        "duration_s": round(ran_s, 1), "wall_s": round(wall_s, 1), "policy": policy, "cameras": cameras,
        "recorder_kills": len(kills), "server_kills": len(server_kills),
        "bags": len(bags), "bags_readable": sum(b["readable"] for b in bags.values()),
        "lost_s": {"max": max(lost), "mean": round(statistics.mean(lost), 3)} if lost else None,
        "lost_wall_s": {"max": max(lost_wall), "mean": round(statistics.mean(lost_wall), 3)} if lost_wall else None,
        "lost_messages": sum(r.get("lost_messages", 0) for r in per_kill),
        "since_last_message_s": {"max": max(since), "mean": round(statistics.mean(since), 3)} if since else None,
        "unrecorded_s": {"max": max(unrec), "mean": round(statistics.mean(unrec), 3)} if unrec else None,
        "joint_state_hz": round(stream_hz, 1), "load_avg_end": os.getloadavg(),
        "bag_read_s_max": max(bag_read_s) if bag_read_s else None,
        "commands_recorded": len(cmds),
        "server": server_kills,
        "rss_mb": rss_out,
        "policy_node_tracebacks": policy_log.count("Traceback"),
        "exit_codes": stop,
        "per_kill": per_kill,
        "per_bag": list(bags.values()),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration-s", type=float, default=1800.0, help="soak length after the warm-up (s)")
    ap.add_argument("--recorder-kill-every-s", type=float, default=60.0)
    ap.add_argument("--server-kill-every-s", type=float, default=240.0)
    ap.add_argument("--warmup-s", type=float, default=10.0, help="after the first episode starts, before 'start'")
    ap.add_argument("--policy", default="expert", help="the policy config wam-policy serve serves")
    ap.add_argument("--cameras", nargs="+", default=["cam_high"], help="cameras the sim renders")
    ap.add_argument("--out", default=None, help="folder for bags and logs (default: a temporary one, removed)")
    args = ap.parse_args()
    if args.out:
        res = soak(args.duration_s, args.recorder_kill_every_s, args.server_kill_every_s, args.policy, args.warmup_s,
                   Path(args.out), args.cameras)
    else:
        import shutil

        tmp = Path(tempfile.mkdtemp(prefix="wam_soak_"))
        try:
            res = soak(args.duration_s, args.recorder_kill_every_s, args.server_kill_every_s, args.policy,
                       args.warmup_s, tmp, args.cameras)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(res, indent=1))
    ok = res["bags"] == res["bags_readable"] and (res["lost_wall_s"] is None or res["lost_wall_s"]["max"] < 1.0)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
