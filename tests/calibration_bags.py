"""Bags of sim episodes written without DDS, message for message what sim_bridge publishes and the
recorder stores (start/end events, both arms' joint states as the world's sensors report them,
one command per step labelled with the stamp it answers): input for calibration's unit tests."""
from __future__ import annotations

import json

import numpy as np

from wam_common import aloha, topics as T

T0 = 1_000_000_000
DT_NS = int(round(T.DT * 1e9))


def write_sim_bag(path, task: str, seeds, world: str = "cousin", steps: int = 60, policy: str = "expert",
                  labelled: bool = True, resend_every: int = 0, topics=None, physical: dict | None = None):
    """One bag of ``len(seeds)`` lockstep episodes of ``steps`` steps in ``world``. ``policy``: the
    scripted expert's plan, or ``hold`` (the start pose, nothing moves). ``resend_every`` > 0
    republishes every n-th step's joint states (a lockstep resend). ``topics``: the topics written
    (default all). Returns [(commands, true joint states, published joint states)] per episode."""
    from rclpy.serialization import serialize_message
    from sensor_msgs.msg import JointState
    from std_msgs.msg import Float64MultiArray, MultiArrayDimension, String

    from sim_bridge.env import SimEnv
    from sim_bridge.experts import make_expert
    from wam_common.bag.writer import BagWriter

    types = {T.EPISODE: "std_msgs/msg/String", T.COMMAND: "std_msgs/msg/Float64MultiArray",
             T.joint_state_topic("left"): "sensor_msgs/msg/JointState",
             T.joint_state_topic("right"): "sensor_msgs/msg/JointState"}
    topics = list(types) if topics is None else topics
    w = BagWriter(path)
    for t in topics:
        w.add_topic(t, types[t])
    env = SimEnv(task, render=False, world=world)
    expert = make_expert(task) if policy == "expert" else None
    t, log = T0, T0
    out = []

    def put(topic, msg):
        nonlocal log
        log += 1000
        if topic in topics:
            w.write(topic, log, serialize_message(msg))

    for i, seed in enumerate(seeds):
        env.reset(seed)
        start = t
        put(T.EPISODE, String(data=json.dumps({"event": "start", "episode": i, "task": task, "seed": seed,
                                                "stamp_ns": start, "physical": physical or {}, "world": world,
                                                "clock": "lockstep", "backend": "mujoco"})))
        if expert is not None:
            expert.reset(env.privileged(i, 0, start, start))
            cmds = expert.actions(0, steps)
        else:
            cmds = np.tile(env.qpos14(), (steps, 1))
        truth, published = [], []
        for k in range(steps):
            truth.append(env.qpos14())
            states = {arm: env.arm_joint_state(arm) for arm in T.ARMS}
            published.append(np.concatenate([aloha.arm_state_from_joint_state(aloha.JOINT_STATE_NAMES, states[a][0])
                                             for a in T.ARMS]))
            for _ in range(2 if resend_every and k % resend_every == 0 else 1):
                for arm in T.ARMS:
                    js = JointState()
                    js.header.stamp.sec, js.header.stamp.nanosec = divmod(t, 1_000_000_000)
                    js.name = list(aloha.JOINT_STATE_NAMES)
                    js.position, js.velocity, js.effort = states[arm]
                    put(T.joint_state_topic(arm), js)
            msg = Float64MultiArray(data=[float(x) for x in cmds[k]])
            msg.layout.dim = [MultiArrayDimension(label=aloha.command_label(t if labelled else None),
                                                  size=T.STATE_DIM, stride=T.STATE_DIM)]
            put(T.COMMAND, msg)
            env.step(cmds[k])
            t += DT_NS
        put(T.EPISODE, String(data=json.dumps({"event": "end", "episode": i, "task": task, "seed": seed,
                                              "stamp_ns": t, "steps": steps, "success": False,
                                              "reason": "timeout"})))
        out.append((np.asarray(cmds), np.stack(truth), np.stack(published)))
    w.close()
    env.close()
    return out
