"""The recorder's default topic set: every topic of docs/GRAPH_CONTRACT.md, raw and ``/perturbed``."""
from __future__ import annotations

from wam_common import topics as T

#: topic → message type the contract says it carries (the recorder takes the type it discovers
#: on the wire; a mismatch with this table is logged).
def contract_types() -> dict[str, str]:
    cams = [T.camera_topic(c) for c in T.CAMERAS + T.OPTIONAL_CAMERAS]
    joints = [T.joint_state_topic(a) for a in T.ARMS]
    out: dict[str, str] = {T.CLOCK: "rosgraph_msgs/msg/Clock"}
    for t in cams:
        out[t] = out[T.perturbed(t)] = "sensor_msgs/msg/Image"
    for t in joints:
        out[t] = out[T.perturbed(t)] = "sensor_msgs/msg/JointState"
    out[T.INSTRUCTION] = out[T.perturbed(T.INSTRUCTION)] = "std_msgs/msg/String"
    out[T.COMMAND] = out[T.SHADOW_COMMAND] = "std_msgs/msg/Float64MultiArray"
    for t in (T.EPISODE, T.PRIVILEGED_STATE, T.ACTIVE_PERTURBATION, T.POLICY_STATUS):
        out[t] = "std_msgs/msg/String"
    out[T.DIAGNOSTICS] = "diagnostic_msgs/msg/DiagnosticArray"
    out[T.ESTOP] = "std_msgs/msg/Bool"
    return out


def default_topics() -> list[str]:
    return list(contract_types())


#: topics the contract publishes transient-local (latched)
LATCHED_TOPICS = (T.INSTRUCTION, T.perturbed(T.INSTRUCTION), T.ACTIVE_PERTURBATION, T.ESTOP, T.EPISODE)


def contract_qos(topic: str) -> tuple[bool, bool, int] | None:
    """(reliable, transient_local, depth) the recorder requests on ``topic`` before it has seen
    a publisher: what the contract's publisher offers; sensors are guessed lockstep (reliable:
    the sim's lockstep publishers match at once and no first step is lost; realtime best-effort
    publishers log one incompatible-QoS warning until the recorder switches to best effort on
    discovering them). None: not a contract topic."""
    types = contract_types()
    if topic not in types:
        return None
    if topic in LATCHED_TOPICS:
        return True, True, 50 if topic == T.EPISODE else 1
    if topic in (T.COMMAND, T.SHADOW_COMMAND):
        return True, False, 1
    if topic in (T.POLICY_STATUS,):
        return True, False, 50
    if topic in (T.CLOCK, T.DIAGNOSTICS, T.PRIVILEGED_STATE):
        return True, False, 10 if topic != T.PRIVILEGED_STATE else 2
    return True, False, 2  # cameras and joint states, raw and perturbed (qos.sensor(lockstep=True))
