"""``sim_bridge`` node: the real robot's topics from MuJoCo, in lockstep or in real time.

Publishes ``/clock``, the three cameras (rgb8, realsense2_camera names and frames), both
``/follower_{arm}/joint_states``, ``/sim/privileged_state``, the task prompt on ``/instruction``
(latched) and episode events on ``/sim/episode``; applies 14-dim commands from
``/forward_position_controller/commands``. The handshake is docs/GRAPH_CONTRACT.md's:

- ``clock: lockstep``: per step k publish /clock t_k, due cameras, privileged state, joint states;
  wait for one command; apply; step DT. Resend step k after ``lockstep.resend_s`` without an
  answer, end the episode (``policy_timeout``) after ``lockstep.give_up_s``.
- ``clock: realtime``: physics paced by the wall clock; the newest command is applied at every
  step (the last one is held when none came).

The episode loop runs in its own thread; subscriptions are served by the executor.
"""
from __future__ import annotations

import json
import threading
import time

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float64MultiArray, String

from wam_common import aloha, qos, topics
from wam_common.imageio import Stamp, encode_image
from wam_common.node_main import run_node
from wam_common.params import declare_tree
from wam_common.schema import Param, defaults, publishes, subscribes

from .env import BACKENDS, RENDER_QUALITY, SimEnv
from .tasks import TASKS

PARAMS = {
    "task": Param("transfer_cube", "the sim task (sim_bridge/tasks.py)", choices=tuple(TASKS)),
    "backend": Param("mujoco", "physics: mujoco, or sapien (PhysX on CPU; its cameras need a Vulkan device)",
                     choices=BACKENDS),
    "clock": Param("lockstep", "lockstep: each step waits for its command (sim time stands still); realtime: "
                   "physics paced by the wall clock, the newest command applied", choices=("lockstep", "realtime")),
    "seed": Param(0, "episode i uses seed + i", range=(0, None)),
    "episodes": Param(1, "episodes to run, then idle (0 = forever)", range=(0, None)),
    "max_steps": Param(0, "steps per episode (0 = the task's time limit)", range=(0, None)),
    "end_on_success": Param(True, "end an episode at its first success (as gym-aloha terminates)", dynamic=True),
    "world": Param("nominal", "the world simulated: a config/worlds/<name>.yaml name or a path (nominal; cousin = the "
                   "same ALOHA with a documented reality gap; docs/sim_bridge.md → Worlds)"),
    "physical": Param({}, "physical perturbations {dimension: level 0..5}, e.g. {light: 3, camera: 2} "
                      "(docs/sim_bridge.md)"),
    "start_wait_s": Param(30.0, "before the first episode: wait at most this long for a COMMAND publisher, "
                          "joint-state subscribers and start_wait_nodes (s)", range=(0.0, None)),
    "start_delay_s": Param(0.5, "before the first episode: the matched endpoints must stay unchanged this long (s)",
                           range=(0.0, None)),
    "start_wait_nodes": Param([""], "before the first episode: wait for these nodes to be up (e.g. [recorder, "
                              "wam_policy_node]; \"\" = none)"),
    "render": {
        "enabled": Param(True, "false: no cameras (physics only, e.g. sapien without Vulkan)"),
        "width": Param(320, "camera image width (px)", range=(8, 1920)),
        "height": Param(240, "camera image height (px)", range=(8, 1080)),
        "camera_every": Param(2, "cameras at episode steps k with k % camera_every == 0", range=(1, None)),
        "quality": Param("gym_aloha", "gym_aloha: the scene XML's 4x MSAA and 4096 px shadows; fast: ~10x cheaper "
                         "on a CPU", choices=tuple(RENDER_QUALITY)),
        "cameras": Param(list(topics.CAMERAS), "the cameras rendered and published",
                         choices=topics.CAMERAS + topics.OPTIONAL_CAMERAS),
    },
    "lockstep": {
        "resend_s": Param(1.0, "republish a step that got no command after this long (wall s; from the next "
                          "episode on when set at run time)", range=(0.001, None), dynamic=True),
        "give_up_s": Param(30.0, "end the episode (policy_timeout) when a step got no command for this long (wall "
                           "s; from the next episode on when set at run time)", range=(0.001, None), dynamic=True),
    },
    "realtime": {
        "speed": Param(1.0, "sim seconds per wall second (from the next episode on when set at run time)",
                       range=(0.001, None), dynamic=True),
    },
}
DEFAULTS = defaults(PARAMS)

def endpoints(cfg: dict) -> list:
    """The node's topics for a validated config (docs/NODES.md; tests/test_ros2_params.py holds them against the
    running node)."""
    sensor = qos.sensor(cfg["clock"] == "lockstep")
    cams = cfg["render"]["cameras"] if cfg["render"]["enabled"] else []
    return [
        publishes(topics.CLOCK, Clock, 10, "sim time, one tick per control step"),
        *[publishes(topics.camera_topic(cam), Image, sensor, f"camera {cam} (rgb8, every render.camera_every steps)")
          for cam in cams],
        *[publishes(topics.joint_state_topic(arm), JointState, sensor, f"the {arm} arm's joint states (each step; "
                    "they close the step)") for arm in topics.ARMS],
        publishes(topics.PRIVILEGED_STATE, String, sensor, "JSON: the step's full sim state (expert backend)"),
        publishes(topics.INSTRUCTION, String, qos.LATCHED, "the task prompt"),
        publishes(topics.EPISODE, String, qos.EVENTS, "JSON episode events: start, end, done"),
        publishes(topics.DIAGNOSTICS, DiagnosticArray, 10, "rejected commands"),
        subscribes(topics.COMMAND, Float64MultiArray, qos.COMMAND, "the 14-joint command applied to the arms"),
    ]


T0_NS = 1_000_000_000  # sim time of the very first step (1 s: 0 means "no clock yet" to rclpy)
DT_NS = int(round(topics.DT * 1e9))


def latency_summary(samples_ms: list[float]) -> dict:
    if not samples_ms:
        return {"mean": None, "p50": None, "p99": None, "n": 0}
    a = np.asarray(samples_ms)
    return {"mean": round(float(a.mean()), 3), "p50": round(float(np.percentile(a, 50)), 3),
            "p99": round(float(np.percentile(a, 99)), 3), "n": int(a.size)}


def parse_command(data) -> np.ndarray:
    """A COMMAND payload → (14,) float array; ValueError saying what is wrong."""
    a = np.asarray(data, dtype=np.float64)
    if a.shape != (topics.STATE_DIM,):
        raise ValueError(f"command has {a.size} values, expected {topics.STATE_DIM}")
    if not np.all(np.isfinite(a)):
        raise ValueError("command has NaN/inf values")
    return a


class SimBridge(Node):
    def __init__(self, **kwargs):
        super().__init__("sim_bridge", **kwargs)
        self.cfg = declare_tree(self, PARAMS)
        c = self.cfg
        self.lockstep = c["clock"] == "lockstep"
        self.env = SimEnv(c["task"], dict(c["physical"]) or None, c["max_steps"], backend=c["backend"],
                          render=bool(c["render"]["enabled"]), quality=c["render"]["quality"], world=c["world"])
        self.cameras = list(c["render"]["cameras"]) if c["render"]["enabled"] else []
        self.h, self.w = int(c["render"]["height"]), int(c["render"]["width"])
        self.every = int(c["render"]["camera_every"])

        sensor_qos = qos.sensor(self.lockstep)
        self.pub_clock = self.create_publisher(Clock, topics.CLOCK, 10)
        self.pub_cam = {cam: self.create_publisher(Image, topics.camera_topic(cam), sensor_qos) for cam in self.cameras}
        self.pub_js = {arm: self.create_publisher(JointState, topics.joint_state_topic(arm), sensor_qos)
                       for arm in topics.ARMS}
        self.pub_priv = self.create_publisher(String, topics.PRIVILEGED_STATE, sensor_qos)
        self.pub_instr = self.create_publisher(String, topics.INSTRUCTION, qos.LATCHED)
        self.pub_event = self.create_publisher(String, topics.EPISODE, qos.EVENTS)
        self.pub_diag = self.create_publisher(DiagnosticArray, topics.DIAGNOSTICS, 10)

        self._cond = threading.Condition()
        self._cmd: np.ndarray | None = None      # newest valid command
        self._cmd_seq = 0                        # commands received (valid or not)
        self._cmd_ns = 0                         # wall monotonic ns of the newest command
        self._bad_cmds = 0
        self._expect_ns: int | None = None      # lockstep: the stamp of the step awaiting its command
        self._stale_cmds = 0                     # lockstep: answers to an earlier step, dropped
        self._last_warn = 0.0
        self._pub_ns: int | None = None          # realtime latency bookkeeping
        self._rt_lat: list[float] = []
        self.create_subscription(Float64MultiArray, topics.COMMAND, self._on_command, qos.COMMAND,
                                 callback_group=MutuallyExclusiveCallbackGroup())

        self.t_ns = T0_NS
        self._stop = threading.Event()
        self.results: list[dict] = []
        self._thread = threading.Thread(target=self._run, name="sim_bridge_loop", daemon=True)
        self._thread.start()
        self.get_logger().info(
            f"task={c['task']} world={self.env.world.name} backend={c['backend']}"
            f" clock={c['clock']} episodes={c['episodes']} seed={c['seed']} "
            f"render={self.w}x{self.h} every {self.every} physical={dict(c['physical'])}")

    # ------------------------------------------------------------------ commands
    def _on_command(self, msg: Float64MultiArray) -> None:
        now = time.monotonic_ns()
        answers = aloha.command_answers(msg.layout)
        with self._cond:
            if self.lockstep and answers is not None and self._expect_ns is not None and answers != self._expect_ns:
                # a late answer to a step we already moved past (e.g. the policy re-answered a
                # resend that crossed its first answer): applying it to this step would break
                # lockstep's one-command-per-step determinism
                self._stale_cmds += 1
                return
        try:
            a = parse_command(msg.data)
        except ValueError as exc:
            a = None
            self._bad_cmds += 1
            self._warn(f"rejected command: {exc}; holding the last command")
        with self._cond:
            if a is not None:
                self._cmd = a
            self._cmd_seq += 1
            self._cmd_ns = now
            if self._pub_ns is not None:  # realtime: first command after a step's joint states
                self._rt_lat.append((now - self._pub_ns) / 1e6)
                self._pub_ns = None
            self._cond.notify_all()

    def _warn(self, text: str) -> None:
        if time.monotonic() - self._last_warn > 2.0:
            self._last_warn = time.monotonic()
            self.get_logger().warning(text)
        arr = DiagnosticArray()
        arr.header.stamp = self._stamp_msg(self.t_ns)
        st = DiagnosticStatus(level=DiagnosticStatus.WARN, name="sim_bridge", message=text[:200],
                              hardware_id="mujoco")
        st.values = [KeyValue(key="bad_commands", value=str(self._bad_cmds))]
        arr.status = [st]
        self.pub_diag.publish(arr)

    # ------------------------------------------------------------------ publishing
    @staticmethod
    def _stamp_msg(t_ns: int):
        from builtin_interfaces.msg import Time

        return Time(sec=int(t_ns // 1_000_000_000), nanosec=int(t_ns % 1_000_000_000))

    def _publish_event(self, ev: dict) -> None:
        self.pub_event.publish(String(data=json.dumps(ev)))

    def _build_step(self, episode: int, k: int, episode_start_ns: int, cameras: bool) -> list:
        """Step k's messages in publishing order: clock, due cameras, privileged state, joint states."""
        t = self.t_ns
        stamp = self._stamp_msg(t)
        out = [(self.pub_clock, Clock(clock=stamp))]
        if cameras:
            st = Stamp.from_ns(t)
            for cam in self.cameras:
                img = self.env.render(cam, self.h, self.w)
                out.append((self.pub_cam[cam], encode_image(img, "rgb8", st, topics.camera_frame(cam))))
        priv = self.env.privileged(episode, k, t, episode_start_ns)
        out.append((self.pub_priv, String(data=json.dumps(priv))))
        for arm in topics.ARMS:
            pos, vel, eff = self.env.arm_joint_state(arm)
            js = JointState()
            js.header.stamp = stamp
            js.name = list(aloha.JOINT_STATE_NAMES)
            js.position, js.velocity, js.effort = pos, vel, eff
            out.append((self.pub_js[arm], js))
        return out

    @staticmethod
    def _publish_all(msgs: list) -> None:
        for pub, msg in msgs:
            pub.publish(msg)

    def _publish_step(self, episode: int, k: int, episode_start_ns: int, cameras: bool) -> list:
        msgs = self._build_step(episode, k, episode_start_ns, cameras)
        self._publish_all(msgs)
        return msgs

    # ------------------------------------------------------------------ loop
    def _wait_for_graph(self) -> None:
        """Start when a policy publishes COMMAND, someone reads the joint states and discovery settled."""
        settle = float(self.cfg["start_delay_s"])
        deadline = time.monotonic() + float(self.cfg["start_wait_s"])
        pubs = list(self.pub_js.values()) + list(self.pub_cam.values()) + [self.pub_priv]
        last, since = None, time.monotonic()
        wanted = [n.strip("/") for n in self.cfg["start_wait_nodes"] if n and n.strip("/")]
        missing = wanted
        while not self._stop.is_set() and time.monotonic() < deadline:
            counts = (self.count_publishers(topics.COMMAND), *[p.get_subscription_count() for p in pubs])
            names = set(self.get_node_names()) if wanted else set()
            missing = [n for n in wanted if n not in names]
            if counts != last:
                last, since = counts, time.monotonic()
            ready = counts[0] > 0 and all(c > 0 for c in counts[1:1 + len(self.pub_js)]) and not missing
            if ready and time.monotonic() - since >= settle:
                return
            self._stop.wait(0.05)
        if not self._stop.is_set():
            self.get_logger().warning(f"starting without a matched policy/readers after {self.cfg['start_wait_s']} s "
                                      f"(COMMAND publishers, subscribers per topic: {last}; missing nodes: {missing})")

    def _run(self) -> None:
        try:
            self._wait_for_graph()
            if self._stop.is_set():
                return
            n = int(self.cfg["episodes"])
            i = 0
            while not self._stop.is_set() and (n == 0 or i < n):
                self.results.append(self._episode(i, int(self.cfg["seed"]) + i))
                i += 1
            if not self._stop.is_set():
                succ = sum(1 for r in self.results if r["success"])
                self._publish_event({"event": "done", "episodes": len(self.results), "successes": succ,
                                     "stamp_ns": self.t_ns})
                self.get_logger().info(f"done: {succ}/{len(self.results)} successes; idle")
        except Exception as exc:  # noqa: BLE001 - keep the node (and the graph) alive, say why
            if self._stop.is_set():  # shutting down: nothing is published any more
                return
            self.get_logger().error(f"episode loop failed: {type(exc).__name__}: {exc}")
            self._publish_event({"event": "error", "error": f"{type(exc).__name__}: {exc}", "stamp_ns": self.t_ns})

    def _episode(self, i: int, seed: int) -> dict:
        env, c = self.env, self.cfg
        physical = env.reset(seed)
        task = env.task
        t_start = self.t_ns
        with self._cond:
            self._cmd = None  # a new episode never applies the previous episode's command
        self.pub_instr.publish(String(data=task.prompt))
        self._publish_event({
            "event": "start", "episode": i, "task": task.name, "seed": seed, "stamp_ns": t_start,
            "instruction": task.prompt, "physical": physical, "camera_every": self.every,
            "max_steps": env.max_steps, "world": env.world.name,
            "clock": c["clock"], "backend": c["backend"], "width": self.w, "height": self.h,
            "cameras": self.cameras,
        })
        step_fn = self._lockstep_episode if self.lockstep else self._realtime_episode
        reason, steps, lat, extra = step_fn(i, t_start)
        res = {"event": "end", "episode": i, "task": task.name, "seed": seed, "stamp_ns": self.t_ns,
               "success": bool(env.success or (reason == "success")), "steps": steps, "reason": reason,
               "max_reward": int(env.best_reward), "latency_ms": latency_summary(lat), "world": env.world.name,
               "physical": physical, **extra}
        if not self._stop.is_set():  # an episode aborted by close() ends in the log only
            self._publish_event(res)
        self.get_logger().info(f"episode {i} seed {seed}: {reason} after {steps} steps "
                               f"(max reward {env.best_reward}, latency p50 {res['latency_ms']['p50']} ms)")
        return res

    def _finish_step(self, k: int) -> str | None:
        if self.cfg["end_on_success"] and self.env.success:
            return "success"
        if k + 1 >= self.env.max_steps:
            return "success" if self.env.success else "timeout"
        return None

    def _lockstep_episode(self, i: int, t_start: int):
        lat: list[float] = []
        resend_ns = int(self.cfg["lockstep"]["resend_s"] * 1e9)
        give_up_ns = int(self.cfg["lockstep"]["give_up_s"] * 1e9)
        hold = None
        resends = 0
        with self._cond:
            stale0 = self._stale_cmds

        def extra() -> dict:
            with self._cond:
                self._expect_ns = None
                return {"resends": resends, "stale_commands": self._stale_cmds - stale0}

        for k in range(self.env.max_steps):
            cams = k % self.every == 0
            with self._cond:
                seq0 = self._cmd_seq
                self._expect_ns = self.t_ns
            msgs = self._build_step(i, k, t_start, cams)
            self._publish_all(msgs)
            sent = first_sent = time.monotonic_ns()  # latency counts from the joint states (sent last)
            cmd = None
            while True:
                with self._cond:
                    deadline = sent + resend_ns
                    while self._cmd_seq == seq0 and not self._stop.is_set():
                        left = (deadline - time.monotonic_ns()) / 1e9
                        if left <= 0:
                            break
                        self._cond.wait(left)
                    if self._cmd_seq != seq0:
                        cmd = self._cmd
                        got_ns = self._cmd_ns
                        break
                if self._stop.is_set():
                    return "aborted", k, lat, extra()
                if time.monotonic_ns() - first_sent >= give_up_ns:
                    return "policy_timeout", k, lat, extra()
                resends += 1
                self._publish_all(msgs)  # republish step k: the same messages, same stamp
                sent = time.monotonic_ns()
            lat.append(max(0.0, (got_ns - first_sent) / 1e6))
            if cmd is None:
                cmd = hold if hold is not None else self.env.qpos14()
            hold = cmd
            self.env.step(cmd)
            self.t_ns += DT_NS
            end = self._finish_step(k)
            if end:
                return end, k + 1, lat, extra()
        return "timeout", self.env.max_steps, lat, extra()

    def _realtime_episode(self, i: int, t_start: int):
        speed = float(self.cfg["realtime"]["speed"])
        period = topics.DT / speed
        hold = self.env.qpos14()
        with self._cond:
            self._rt_lat = []
            self._pub_ns = None
        wall0 = time.monotonic()
        late = 0
        reason, steps = "timeout", self.env.max_steps
        for k in range(self.env.max_steps):
            if self._stop.is_set():
                reason, steps = "aborted", k
                break
            msgs = self._build_step(i, k, t_start, k % self.every == 0)
            self._publish_all(msgs)
            with self._cond:
                self._pub_ns = time.monotonic_ns()
            target = wall0 + (k + 1) * period
            # physics keeps the wall clock's pace; the newest command at the deadline wins
            with self._cond:
                while not self._stop.is_set():
                    left = target - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                if self._cmd is not None:
                    hold = self._cmd
            if time.monotonic() > target + period:
                late += 1  # the sim itself could not keep real time at this step
            self.env.step(hold)
            self.t_ns += DT_NS
            end = self._finish_step(k)
            if end:
                reason, steps = end, k + 1
                break
        wall = time.monotonic() - wall0
        with self._cond:
            lat, self._pub_ns = list(self._rt_lat), None
        return reason, steps, lat, {"rtf": round(steps * topics.DT / max(wall, 1e-9), 3), "late_steps": late}

    def close(self) -> None:
        """Stop the episode loop (it publishes nothing more), then the physics; run_node calls this
        while the ROS context is still valid."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        self._thread.join(timeout=5)
        self.env.close()


def main(args=None) -> int:
    return run_node(SimBridge, "sim_bridge", args)


if __name__ == "__main__":
    import sys

    sys.exit(main())
