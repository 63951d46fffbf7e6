"""QoS profiles that fit a policy graph.

- ``SENSOR``: cameras and joint states. Best effort, keep-last 1: the newest frame wins, a
  late frame is never queued behind a fresher one.
- ``COMMAND``: joint commands. Reliable, keep-last 1: the motors get every command that is
  still current, never a backlog.
- ``LATCHED``: state that late joiners must see (active perturbation, e-stop, episode info):
  reliable + transient-local.
- ``RECORD``: what the recorder uses to subscribe: reliable keep-last 100 (it matches best
  effort publishers too and absorbs bursts).
"""
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

SENSOR = QoSProfile(
    history=HistoryPolicy.KEEP_LAST, depth=1,
    reliability=ReliabilityPolicy.BEST_EFFORT, durability=DurabilityPolicy.VOLATILE,
)
# Lockstep simulation needs every message: the sim waits for the command of each step.
SENSOR_RELIABLE = QoSProfile(
    history=HistoryPolicy.KEEP_LAST, depth=2,
    reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE,
)
COMMAND = QoSProfile(
    history=HistoryPolicy.KEEP_LAST, depth=1,
    reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE,
)
LATCHED = QoSProfile(
    history=HistoryPolicy.KEEP_LAST, depth=1,
    reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL,
)
EVENTS = QoSProfile(  # episode boundaries, operator labels: every one, late joiners get the last few
    history=HistoryPolicy.KEEP_LAST, depth=50,
    reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL,
)
STATUS = QoSProfile(  # per-step status JSON: every one while you listen, no history for late joiners
    history=HistoryPolicy.KEEP_LAST, depth=50,
    reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE,
)
RECORD = QoSProfile(
    history=HistoryPolicy.KEEP_LAST, depth=100,
    reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE,
)


def sensor(lockstep: bool) -> QoSProfile:
    """Sensor QoS for the clock mode: lockstep must not lose the frame a step waits for."""
    return SENSOR_RELIABLE if lockstep else SENSOR
