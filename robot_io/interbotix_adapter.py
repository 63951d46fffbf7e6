"""``interbotix_adapter``: the 14-dim COMMAND → Interbotix ALOHA follower arms.

Subscribes ``/forward_position_controller/commands`` (std_msgs/Float64MultiArray,
``[left 6 rad, left gripper 0..1, right 6 rad, right gripper 0..1]``, see the graph contract)
and publishes, per follower arm, ``/follower_{side}/commands/joint_group``
(interbotix_xs_msgs/JointGroupCommand ``name='arm'``, the 6 arm joints) and
``/follower_{side}/commands/joint_single`` (JointSingleCommand ``name='gripper'``, the
gripper joint angle from :func:`wam_common.aloha.gripper_joint_unnormalize`), as ALOHA's own
``real_env`` does.

The conversion is the pure :func:`to_arm_commands`; ``interbotix_xs_msgs`` is imported only
when the node starts — where it is missing the node says so and exits (status 2). ``output:
float64`` publishes the same per-arm command as one std_msgs/Float64MultiArray (6 joints +
gripper joint angle) for a per-arm ros2_control forward controller: standard messages only.
Bad commands (wrong length, NaN/inf, a joint beyond its vx300s limit by more than
``reject_tolerance``, a joint further than ``max_deviation_rad`` from the measured follower
joint state, or no recent joint state) are dropped with a warning, so the arms hold their last
good command;
an engaged e-stop (``/wam_policy/estop``, latched Bool) drops every command until released.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import numpy as np

from wam_common import aloha, topics
from wam_common.config import ConfigError
from wam_common.schema import Param, defaults, publishes, subscribes

NAME = "interbotix_adapter"

OUTPUTS = ("interbotix", "float64")

PARAMS = {
    "arms": Param(["left", "right"], "the follower arms that receive commands", choices=topics.ARMS),
    "output": Param("interbotix", "interbotix: JointGroupCommand + JointSingleCommand per arm (needs "
                    "interbotix_xs_msgs); float64: one Float64MultiArray [6 joints rad, gripper joint rad] per arm "
                    "(a ros2_control forward_position_controller per arm; standard messages only)", choices=OUTPUTS),
    "command_topic": Param(topics.COMMAND, "the 14-joint command topic"),
    "arm_topic": Param("/follower_{side}/commands/joint_group", "output interbotix: the arm joints' topic"),
    "gripper_topic": Param("/follower_{side}/commands/joint_single", "output interbotix: the gripper's topic"),
    "float64_topic": Param("/follower_{side}/forward_position_controller/commands", "output float64: the "
                           "per-arm topic"),
    "reject_tolerance": Param(0.2, "a joint beyond its limit by more than this → the command is dropped; within "
                              "it → clipped (rad)", range=(0.0, None), dynamic=True),
    "follow_estop": Param(True, "drop commands while /wam_policy/estop is true"),
    "max_deviation_rad": Param(0.5, "a command whose arm joints are further than this from the measured follower "
                               "joint state is dropped and the arm holds (rad; 0 disables the guard)",
                               range=(0.0, None)),
    "state_timeout_s": Param(0.5, "with the guard on, commands are dropped when no joint state is this recent (s)",
                             range=(0.001, None), dynamic=True),
    "diagnostics_period_s": Param(1.0, "period of the status on /diagnostics (s)", range=(0.001, None)),
}
DEFAULTS = defaults(PARAMS)

def endpoints(cfg: dict) -> list:
    """The node's topics for a validated config (docs/NODES.md; tests/test_ros2_params.py holds them against the
    running node)."""
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import JointState
    from std_msgs.msg import Bool, Float64MultiArray

    from wam_common import qos

    out = [subscribes(cfg["command_topic"], Float64MultiArray, qos.COMMAND, "the 14-joint command")]
    for side in cfg["arms"]:
        if cfg["output"] == "interbotix":
            out += [publishes(cfg["arm_topic"].format(side=side), "interbotix_xs_msgs/msg/JointGroupCommand",
                              qos.COMMAND, f"the {side} arm's 6 joints (name 'arm')"),
                    publishes(cfg["gripper_topic"].format(side=side), "interbotix_xs_msgs/msg/JointSingleCommand",
                              qos.COMMAND, f"the {side} gripper joint (name 'gripper')")]
        else:
            out.append(publishes(cfg["float64_topic"].format(side=side), Float64MultiArray, qos.COMMAND,
                                 f"the {side} arm: 6 joints and the gripper joint (rad)"))
        if cfg["max_deviation_rad"] > 0:
            out.append(subscribes(topics.joint_state_topic(side), JointState, qos.SENSOR,
                                  f"the {side} follower's joint states (the deviation guard)"))
    if cfg["follow_estop"]:
        out.append(subscribes(topics.ESTOP, Bool, qos.LATCHED, "e-stop: commands are dropped while it is true"))
    return out + [publishes(topics.DIAGNOSTICS, DiagnosticArray, 10, "sent and dropped commands, e-stop, the "
                            "last error")]


MISSING_MSGS = (
    "interbotix_xs_msgs is not importable, so commands cannot reach the Interbotix arms. Source the "
    "Interbotix ROS 2 workspace (interbotix_ros_core → interbotix_xs_msgs, as installed by the ALOHA "
    "setup) before launching; or set output: float64 (--set interbotix_adapter.output=float64) for "
    "per-arm ros2_control forward_position_controllers; or drive one 14-joint forward controller "
    f"straight from {topics.COMMAND} and drop this node (--set interbotix_adapter.enabled=false)"
)


class CommandError(ValueError):
    """A command that must not reach the motors; the message says why."""


@dataclass(frozen=True)
class ArmCommand:
    side: str
    joints: tuple[float, ...]  # 6 arm joint positions (rad): JointGroupCommand(name='arm')
    gripper: float  # gripper joint angle (rad): JointSingleCommand(name='gripper')


def to_arm_commands(cmd, arms=("left", "right"), reject_tolerance: float = 0.2) -> list[ArmCommand]:
    """14-dim normalised command → one ArmCommand per requested arm (limits clipped)."""
    a = np.asarray(cmd, dtype=np.float64).ravel()
    if a.size != topics.STATE_DIM:
        raise CommandError(f"command has {a.size} values, expected {topics.STATE_DIM} "
                           "([left 6, left gripper, right 6, right gripper])")
    if not np.all(np.isfinite(a)):
        bad = [int(i) for i in np.flatnonzero(~np.isfinite(a))]
        raise CommandError(f"command has non-finite values at indices {bad}")
    out = []
    for side in arms:
        if side not in topics.ARMS:
            raise CommandError(f"unknown arm '{side}' (known: {', '.join(topics.ARMS)})")
        k = topics.ARMS.index(side) * 7
        joints, grip = a[k:k + 6], a[k + 6]
        over = np.maximum(aloha.ARM_LOWER - joints, joints - aloha.ARM_UPPER)
        if np.any(over > reject_tolerance):
            j = int(np.argmax(over))
            raise CommandError(f"{side} {topics.ARM_JOINTS[j]} = {joints[j]:.3f} rad is beyond its limit "
                               f"[{aloha.ARM_LOWER[j]:.3f}, {aloha.ARM_UPPER[j]:.3f}] by more than {reject_tolerance}")
        if grip < -reject_tolerance or grip > 1 + reject_tolerance:
            raise CommandError(f"{side} gripper = {grip:.3f} is outside 0..1 by more than {reject_tolerance}")
        joints = np.clip(joints, aloha.ARM_LOWER, aloha.ARM_UPPER)
        grip_rad = float(aloha.gripper_joint_unnormalize(float(np.clip(grip, 0.0, 1.0))))
        out.append(ArmCommand(side, tuple(float(v) for v in joints), grip_rad))
    return out


def check_deviation(cmd: ArmCommand, measured6, max_deviation: float) -> None:
    """CommandError when an arm joint of ``cmd`` is further than ``max_deviation`` rad from the
    measured position (the gripper is not checked: it stalls on a grasped object by design)."""
    m = np.asarray(measured6, dtype=np.float64)
    if m.shape != (6,) or not np.all(np.isfinite(m)):
        raise CommandError(f"{cmd.side}: measured joint state unusable ({m.tolist()})")
    dev = np.abs(np.asarray(cmd.joints) - m)
    j = int(np.argmax(dev))
    if dev[j] > max_deviation:
        raise CommandError(f"{cmd.side} {topics.ARM_JOINTS[j]}: command {cmd.joints[j]:.3f} rad is {dev[j]:.3f} rad "
                           f"from the measured {m[j]:.3f} (max_deviation_rad {max_deviation:g})")


def _interbotix_msgs():
    try:
        from interbotix_xs_msgs.msg import JointGroupCommand, JointSingleCommand
    except ImportError:
        raise ConfigError(MISSING_MSGS) from None
    return JointGroupCommand, JointSingleCommand


def make_node():
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
    from rclpy.node import Node
    from sensor_msgs.msg import JointState
    from std_msgs.msg import Bool, Float64MultiArray

    from wam_common import qos
    from wam_common.params import declare_tree

    class InterbotixAdapter(Node):
        def __init__(self):
            super().__init__(NAME)
            cfg = declare_tree(self, PARAMS, on_set=self._on_params)
            arms = [str(s) for s in cfg["arms"]]
            if not arms:
                raise ConfigError(f"node '{NAME}': parameter 'arms' is empty")
            self.cfg, self.arms = cfg, arms
            self.estop = False
            self.sent = self.dropped = 0
            self.last_error = ""
            self._last_warn = -1e9
            if cfg["output"] == "interbotix":
                group, single = _interbotix_msgs()  # ConfigError naming what is missing
                arm_pub = {s: self.create_publisher(group, cfg["arm_topic"].format(side=s), qos.COMMAND) for s in arms}
                grip_pub = {s: self.create_publisher(single, cfg["gripper_topic"].format(side=s), qos.COMMAND)
                            for s in arms}

                def send(c: ArmCommand) -> None:
                    arm_pub[c.side].publish(group(name="arm", cmd=list(c.joints)))
                    grip_pub[c.side].publish(single(name="gripper", cmd=c.gripper))

                where = f"{cfg['arm_topic']} + {cfg['gripper_topic']}"
            else:
                pubs = {s: self.create_publisher(Float64MultiArray, cfg["float64_topic"].format(side=s), qos.COMMAND)
                        for s in arms}

                def send(c: ArmCommand) -> None:
                    pubs[c.side].publish(Float64MultiArray(data=list(c.joints) + [c.gripper]))

                where = cfg["float64_topic"]
            self._send = send
            self.max_dev = float(cfg["max_deviation_rad"])
            self.state_timeout_ns = int(float(cfg["state_timeout_s"]) * 1e9)
            self._measured: dict[str, tuple[int, np.ndarray]] = {}  # side → (receive ns, 6 joints)
            if self.max_dev > 0:
                for side in arms:
                    self.create_subscription(JointState, topics.joint_state_topic(side),
                                             lambda m, side=side: self._on_joint_state(side, m), qos.SENSOR)
            self.create_subscription(Float64MultiArray, cfg["command_topic"], self._on_command, qos.COMMAND)
            if cfg["follow_estop"]:
                self.create_subscription(Bool, topics.ESTOP, self._on_estop, qos.LATCHED)
            self._diag = self.create_publisher(DiagnosticArray, topics.DIAGNOSTICS, 10)
            self._DiagnosticArray, self._DiagnosticStatus, self._KeyValue = DiagnosticArray, DiagnosticStatus, KeyValue
            self.create_timer(float(cfg["diagnostics_period_s"]), self._publish_diagnostics)
            self.get_logger().info(f"{cfg['command_topic']} → {where} for arms {', '.join(arms)}")

        def _on_params(self, cfg: dict, changed: set[str]):
            """``ros2 param set`` (wam_common.params): ``state_timeout_s`` applies at once, ``reject_tolerance`` is
            read live."""
            def apply() -> None:
                self.state_timeout_ns = int(float(cfg["state_timeout_s"]) * 1e9)

            return apply

        def _on_estop(self, msg) -> None:
            if bool(msg.data) != self.estop:
                self.estop = bool(msg.data)
                if self.estop:  # (rclpy: one severity per logging call site)
                    self.get_logger().error("e-stop ENGAGED: commands dropped, arms hold")
                else:
                    self.get_logger().info("e-stop released")

        def _on_joint_state(self, side: str, msg) -> None:
            idx = {n: i for i, n in enumerate(msg.name)}
            try:
                q = np.array([msg.position[idx[j]] for j in topics.ARM_JOINTS], dtype=np.float64)
            except (KeyError, IndexError):
                return  # a partial joint state: the guard keeps the last full one (and its age)
            self._measured[side] = (time.monotonic_ns(), q)

        def _guard(self, cmds) -> None:
            now = time.monotonic_ns()
            for c in cmds:
                got = self._measured.get(c.side)
                if got is None:
                    raise CommandError(f"{c.side}: no joint state on {topics.joint_state_topic(c.side)} yet "
                                       "(max_deviation_rad needs it; 0 disables the guard)")
                if now - got[0] > self.state_timeout_ns:
                    raise CommandError(f"{c.side}: joint state on {topics.joint_state_topic(c.side)} is "
                                       f"{(now - got[0]) / 1e9:.2f} s old")
                check_deviation(c, got[1], self.max_dev)

        def _on_command(self, msg) -> None:
            if self.estop:
                self.dropped += 1
                return
            try:
                cmds = to_arm_commands(msg.data, self.arms, float(self.cfg["reject_tolerance"]))
                if self.max_dev > 0:
                    self._guard(cmds)
            except CommandError as exc:
                self.dropped += 1
                self.last_error = str(exc)
                now = time.monotonic()
                if now - self._last_warn >= 1.0:  # at most one warning a second (rclpy's throttle skips the first)
                    self._last_warn = now
                    self.get_logger().warning(f"command dropped, arms hold: {exc} ({self.dropped} dropped so far)")
                return
            for c in cmds:
                self._send(c)
            self.sent += 1
            self.last_error = ""  # diagnostics show the current state: commands flow again

        def _publish_diagnostics(self) -> None:
            DS = self._DiagnosticStatus
            level = DS.ERROR if self.estop else (DS.WARN if self.last_error else DS.OK)
            st = DS(level=level, name=f"{NAME}: arms", hardware_id=",".join(self.arms),
                    message="e-stop engaged" if self.estop else (self.last_error or "forwarding"))
            st.values = [self._KeyValue(key=k, value=str(v)) for k, v in
                         {"sent": self.sent, "dropped": self.dropped, "estop": self.estop}.items()]
            arr = self._DiagnosticArray(status=[st])
            arr.header.stamp = self.get_clock().now().to_msg()
            self._diag.publish(arr)

    return InterbotixAdapter()


def main(args: list[str] | None = None) -> int:
    from wam_common.node_main import run_node

    return run_node(make_node, NAME, args)


if __name__ == "__main__":
    sys.exit(main())
