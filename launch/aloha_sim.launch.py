"""ros2 launch wam_policy aloha_sim.launch.py [config:=aloha_sim] [set:='wam_policy_node.backend.type=lerobot']

The sim graph (sim_bridge + perturbation_node + wam_policy_node + recorder) from
config/aloha_sim.yaml — the same description `wam-policy up aloha_sim` starts.
"""
from wam_common.launch_description import generate_for


def generate_launch_description():
    return generate_for("aloha_sim")
