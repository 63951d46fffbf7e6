"""The ROS 2 front door with the real tools: ``colcon build`` of a copy of the package, then ``ros2
launch``, ``ros2 param``, ``ros2 node`` as a user runs them (tests/ros2_tools.py says where the tools
come from). Every launch runs in its own process group on its own leased ROS_DOMAIN_ID."""
from __future__ import annotations

import signal
import time

import pytest
import ros2_tools as rt

pytestmark = [pytest.mark.ros, pytest.mark.skipif(rt.missing() is not None, reason=str(rt.missing()))]

COMMAND = "/forward_position_controller/commands"
SIM_ARGS = "set:='sim_bridge.episodes=1;recorder.output_dir={out}'"  # the scripted expert: ~210 steps


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    from wam_common.launcher import DomainLease

    lease = DomainLease()
    yield rt.Workspace(tmp_path_factory.mktemp("ws"), lease.domain_id)
    lease.release()


@pytest.fixture
def ws_probe(ws):
    """A probe node on the workspace's domain (what `ros2 topic echo` would see)."""
    import rclpy
    from rclpy.context import Context
    from rosutil import Probe

    ctx = Context()
    rclpy.init(context=ctx, domain_id=ws.domain_id)
    p = Probe(ctx)
    yield p
    p.close()
    ctx.try_shutdown()


def test_colcon_build_installs_the_cli_and_every_node(ws):
    assert "Summary: 1 package finished" in ws.build_log.stdout, ws.build_log.stdout[-2000:]
    exe = ws.run("ros2 pkg executables wam_policy").stdout.split()
    for name in ("sim_bridge", "perturbation_node", "wam_policy_node", "recorder", "realsense_cameras",
                 "interbotix_adapter", "wam-policy"):
        assert name in exe, exe
    # README / docs/ROBOT.md: after `source install/setup.bash`, wam-policy is a command
    out = ws.run("command -v wam-policy && wam-policy --help").stdout
    assert "install/wam_policy/bin/wam-policy" in out and "preflight" in out


def test_installed_package_finds_its_configs_and_checkpoint(ws):
    """From any working directory: the policy configs and the shipped checkpoint resolve from the
    package share (not the source tree, which the installed package never sees)."""
    code = ("from wam_common.policies import load_policy_config; from pathlib import Path; "
            "ov = load_policy_config('act_sim')[1]; p = Path(ov['backend']['lerobot']['path']); "
            "print(p); assert (p / 'model.safetensors').is_file(), p")
    out = ws.run(f"python3 -c \"{code}\"").stdout
    assert "/install/wam_policy/share/wam_policy/checkpoints/" in out, out


def test_show_args_lists_every_argument_with_its_help(ws):
    out = ws.run("ros2 launch wam_policy aloha.launch.py --show-args").stdout
    for arg in ("config", "set", "armed", "use_realsense_ros", "profile"):
        block = out.split(f"'{arg}':", 1)
        assert len(block) == 2, f"argument {arg} missing:\n{out}"
        assert block[1].strip().splitlines()[0].strip(), f"argument {arg} has no help"


def assert_clean_stop(log: str, nodes: int = 4) -> None:
    """Every node of the launch finished with status 0, and nothing went wrong on the way."""
    for bad in ("Traceback", "RCLError", "ERROR]", "exception", "Segmentation fault", "core dumped"):
        assert bad not in log, f"{bad!r} in the launch output:\n{log[-6000:]}"
    assert log.count("process has finished cleanly") == nodes, log[-3000:]


def wait_commands(probe, p, n: int = 30) -> int:
    """Wait until the policy's commands flow (an episode is running); how many the probe has seen."""
    from std_msgs.msg import Float64MultiArray

    probe.listen(COMMAND, Float64MultiArray)
    assert probe.wait_count(COMMAND, n, timeout=240), rt.read_log(p)[-4000:]
    return probe.count(COMMAND)


@pytest.mark.parametrize("when", ["idle", "mid_episode"])
def test_sim_launch_runs_an_episode_and_stops_cleanly_on_ctrl_c(ws, ws_probe, tmp_path, when):
    """Ctrl-C in a terminal: SIGINT to ros2 launch, which passes it on to every node once. After the
    episode, and in the middle of one (sim_bridge's episode thread publishing as the signal lands)."""
    out = tmp_path / "bags"
    p = ws.start(f"ros2 launch wam_policy aloha_sim.launch.py {SIM_ARGS.format(out=out)}", tmp_path / "launch.log")
    try:
        if when == "idle":
            assert rt.wait_log(p, "successes; idle", 300), rt.read_log(p)[-4000:]
            assert "done: 1/1 successes" in rt.read_log(p)
            sent_before = 100
        else:
            sent_before = wait_commands(ws_probe, p)
        assert p.poll() is None
    finally:
        p.send_signal(signal.SIGINT)  # ros2 launch alone (a terminal's Ctrl-C reaches the group: see below)
        code = rt.wait_exit(p, 60)
    log = rt.read_log(p)
    assert code == 0, log[-4000:]
    assert_clean_stop(log)
    (bag,) = [d for d in out.iterdir() if d.is_dir()]
    counts = rt.bag_counts(bag)
    assert counts.get(COMMAND, 0) >= sent_before, (counts, sent_before)


def test_double_sigint_to_the_process_group_closes_every_bag(ws, ws_probe, tmp_path):
    """What `ros2 launch` sends when its stdin is not a terminal and the group is signalled, or a person
    pressing Ctrl-C twice: SIGINT to the whole group, twice, 0.1-0.5 s apart, mid-episode. Every node
    still shuts down, the bag is complete (summary + footer, no repair) and holds every command the
    graph published before the first SIGINT."""
    out = tmp_path / "bags"
    sets = SIM_ARGS.format(out=out)
    p = ws.start(f"ros2 launch wam_policy aloha_sim.launch.py {sets}", tmp_path / "launch.log")
    sent_before = wait_commands(ws_probe, p)
    rt.signal_group(p)
    time.sleep(0.3)  # the point of the test: a second SIGINT 0.3 s into shutdown
    rt.signal_group(p)
    code = rt.wait_exit(p, 60)
    log = rt.read_log(p)
    assert code == 0, log[-4000:]
    assert_clean_stop(log)
    (bag,) = [d for d in out.iterdir() if d.is_dir()]
    counts = rt.bag_counts(bag)
    assert counts[COMMAND] >= sent_before, (counts, sent_before)
