"""The ROS 2 front door with the real tools: ``colcon build`` of a copy of the package, then ``ros2
launch``, ``ros2 param``, ``ros2 node`` as a user runs them (tests/ros2_tools.py says where the tools
come from). Every launch runs in its own process group on its own leased ROS_DOMAIN_ID."""
from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
import ros2_tools as rt

pytestmark = [pytest.mark.ros, pytest.mark.skipif(rt.missing() is not None, reason=str(rt.missing()))]

COMMAND = "/forward_position_controller/commands"
SIM_ARGS = "set:='sim_bridge.episodes=1;recorder.output_dir={out}'"  # the scripted expert: ~210 steps


@pytest.fixture(scope="module")
def ws(ros2_ws):
    """The run's colcon workspace (tests/conftest.py)."""
    return ros2_ws


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


@pytest.fixture
def launch(ws, tmp_path):
    """``launch(ARGS)``: ``ros2 launch wam_policy ARGS`` in its own process group, output in tmp_path;
    whatever a failed test leaves running is killed."""
    procs = []

    def start(args: str):
        procs.append(ws.start(f"ros2 launch wam_policy {args}", tmp_path / f"launch_{len(procs)}.log"))
        return procs[-1]

    yield start
    for p in procs:
        rt.kill_group(p)


def test_colcon_build_installs_the_cli_and_every_node(ws):
    assert "Summary: 1 package finished" in ws.build_log.stdout, ws.build_log.stdout[-2000:]
    exe = ws.run("ros2 pkg executables wam_policy").stdout.split()
    for name in ("sim_bridge", "perturbation_node", "wam_policy_node", "recorder", "realsense_cameras",
                 "interbotix_adapter", "wam-policy"):
        assert name in exe, exe
    # README / docs/ROBOT.md: after `source install/setup.bash`, wam-policy is a command
    out = ws.run("command -v wam-policy && wam-policy --help").stdout
    assert "install/wam_policy/bin/wam-policy" in out and "preflight" in out


def test_colcon_symlink_install_still_installs_everything(tmp_path):
    """README's `colcon build --symlink-install`. With setuptools >= 80 (the project venv pins 81.0.0)
    colcon finds no `setup.py develop --editable` and quietly installs a copy instead (docs/ROBOT.md:
    rebuild after edits); either way the install works: the nodes, `wam-policy`, the launch files."""
    from wam_common.launcher import DomainLease

    lease = DomainLease()
    try:
        ws = rt.Workspace(tmp_path / "ws", lease.domain_id, "--symlink-install")
        copied = "No '--editable' capability in setuptools, falling back to full install" in (
            tmp_path / "ws/log/latest_build/logger_all.log").read_text()
        # colcon's log says which it made: a copy runs the installed files, a symlink install the source
        module = ws.run("python3 -c 'import os, wam_common.node_main as m; print(os.path.realpath(m.__file__))'"
                        ).stdout.strip()
        assert module.startswith(str(tmp_path / "ws" / ("install" if copied else "src"))), (copied, module)
        exe = ws.run("ros2 pkg executables wam_policy").stdout.split()
        assert {"sim_bridge", "recorder", "wam_policy_node", "wam-policy"} <= set(exe), exe
        assert "preflight" in ws.run("wam-policy preflight --help").stdout
        assert "'profile':" in ws.run("ros2 launch wam_policy aloha.launch.py --show-args").stdout
    finally:
        lease.release()


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


def listen_commands(probe) -> None:
    from std_msgs.msg import Float64MultiArray

    probe.listen(COMMAND, Float64MultiArray)


def command_steps(probe) -> list[int]:
    """The observation stamps the commands the probe has received so far answer (one per lockstep step)."""
    from std_msgs.msg import Float64MultiArray

    from wam_common.aloha import command_answers

    return [command_answers(m.layout) for m in probe.decoded(COMMAND, Float64MultiArray)]


def assert_commands_kept(before: list[int], bag: Path) -> None:
    """Every command the probe had received before the first SIGINT is in the bag, from the first one the
    recorder took on: nothing is lost to the shutdown. (The first few can be missing when the episode
    started before the recorder had matched the policy's publisher: a start-up discovery race, seen on a
    loaded machine, that the shutdown cannot change.)"""
    from wam_common.aloha import command_answers

    kept = {command_answers(m.layout) for m in rt.bag_messages(bag)[COMMAND]}
    assert before and kept, (before, kept)
    missing = [s for s in before if s >= min(kept) and s not in kept]
    assert not missing, f"{len(missing)} of {len(before)} commands sent before the first SIGINT missing: {missing[:5]}"


def assert_stopped_keeping(p, code: int, out: Path, before: list[int]) -> None:
    """The launch exited 0 with every node stopped cleanly, and its one bag holds the commands ``before``."""
    log = rt.read_log(p)
    assert code == 0, log[-4000:]
    assert_clean_stop(log)
    (bag,) = [d for d in out.iterdir() if d.is_dir()]
    assert_commands_kept(before, bag)


@pytest.mark.parametrize("when", ["idle", "mid_episode"])
def test_sim_launch_runs_an_episode_and_stops_cleanly_on_ctrl_c(launch, ws_probe, tmp_path, when):
    """Ctrl-C in a terminal: SIGINT to ros2 launch, which passes it on to every node once. After the
    episode, and in the middle of one (sim_bridge's episode thread publishing as the signal lands)."""
    out = tmp_path / "bags"
    listen_commands(ws_probe)
    p = launch(f"aloha_sim.launch.py {SIM_ARGS.format(out=out)}")
    try:
        if when == "idle":
            assert rt.wait_log(p, "successes; idle", 300), rt.read_log(p)[-4000:]
            assert "done: 1/1 successes" in rt.read_log(p)
        else:
            assert ws_probe.wait_count(COMMAND, 30, timeout=240), rt.read_log(p)[-4000:]
        assert p.poll() is None
        before = command_steps(ws_probe)
    finally:
        p.send_signal(signal.SIGINT)  # ros2 launch alone (a terminal's Ctrl-C reaches the group: see below)
        code = rt.wait_exit(p, 60)
    assert_stopped_keeping(p, code, out, before)
    if when == "idle":
        assert len(before) >= 100, len(before)


def test_double_sigint_to_the_process_group_closes_every_bag(launch, ws_probe, tmp_path):
    """What `ros2 launch` sends when its stdin is not a terminal and the group is signalled, or a person
    pressing Ctrl-C twice: SIGINT to the whole group, twice, 0.1-0.5 s apart, mid-episode. Every node
    still shuts down, the bag is complete (summary + footer, no repair) and holds every command the
    graph published before the first SIGINT."""
    out = tmp_path / "bags"
    listen_commands(ws_probe)
    p = launch(f"aloha_sim.launch.py {SIM_ARGS.format(out=out)}")
    assert ws_probe.wait_count(COMMAND, 30, timeout=240), rt.read_log(p)[-4000:]
    before = command_steps(ws_probe)
    rt.signal_group(p)
    time.sleep(0.3)  # the point of the test: a second SIGINT 0.3 s into shutdown
    rt.signal_group(p)
    assert_stopped_keeping(p, rt.wait_exit(p, 60), out, before)


@pytest.mark.flaky(reruns=2, reason="the robot graph's bag can still be empty at Ctrl-C when the realtime graph was "
                                    "slow to publish (seen once in a module run on the loaded 2-core VM; passes alone)")
def test_real_graph_without_hardware_runs_the_rest(ws, launch):
    """`ros2 launch wam_policy aloha.launch.py` on a machine without the robot: the two hardware nodes
    stop at once, each with its one-line reason; perturbation_node, the policy (dry run) and the
    recorder run, and stop cleanly on Ctrl-C. The bag goes to config/aloha.yaml's runs/robot_bags
    under the folder ros2 launch runs in, and the recorder's first line says so with the absolute path."""
    p = launch("aloha.launch.py")
    hardware = {  # node (launch's name for it) → its one-line reason
        "realsense_cameras-1": "[realsense_cameras] config error: node 'realsense_cameras': parameter 'serials.cam_high' "
                               "is empty: set the camera's serial number (connected serials: none)",
        "interbotix_adapter-2": "[interbotix_adapter] config error: interbotix_xs_msgs is not importable",
    }
    ready = ["[recorder]: recording 23 topics to", "[perturbation_node]: profile 'clean' (realtime)",
             "[wam_policy_node]: backend=synthetic"] + [f"[ERROR] [{n}]: process has died" for n in hardware]
    try:
        for text in ready:
            assert rt.wait_log(p, text, 120), (text, rt.read_log(p)[-4000:])
        assert p.poll() is None
    finally:
        p.send_signal(signal.SIGINT)
        code = rt.wait_exit(p, 60)
    log = rt.read_log(p)
    assert code == 0, log[-4000:]
    lines = log.splitlines()
    for node, reason in hardware.items():
        # (a node whose libraries started a real-time thread says so first: wam_common.node_main.normal_scheduling)
        said = [line for line in lines if line.startswith(f"[{node}] ") and "real-time scheduling policy" not in line]
        assert len(said) == 1 and said[0].startswith(f"[{node}] {reason}"), said
        (died,) = [line for line in lines if line.startswith(f"[ERROR] [{node}]: process has died")]
        assert "exit code 2," in died, died
    assert log.count("process has died") == 2 and log.count("process has finished cleanly") == 3, log[-4000:]
    assert "Traceback" not in log, log[-4000:]
    bags = ws.root / "run" / "runs" / "robot_bags"  # Workspace runs every command from ws/run
    (line,) = [line for line in lines if "[recorder]: recording 23 topics to" in line]
    bag = line.split(" to ", 1)[1].split(" ", 1)[0]
    assert bag.startswith(f"{bags}/rosbag2_") and "(output_dir 'runs/robot_bags': relative paths start at the " \
                                                 "working directory)" in line, line
    assert rt.bag_counts(Path(bag)), bag


@pytest.mark.parametrize("args,error", [
    ("aloha_sim.launch.py set:=nosuch.x=1", "override for unknown node 'nosuch' (nodes: perturbation_node, recorder, "
                                            "sim_bridge, wam_policy_node)"),
    ("aloha_sim.launch.py set:=foo", "set:='foo': expected NODE.KEY=VALUE"),
    ("aloha_sim.launch.py config:=nosuch", "config: no such config 'nosuch'"),
    ("aloha.launch.py profile:=nosuch", "unknown perturbation profile 'nosuch' (known: background, camera, clean,"),
    ("aloha.launch.py armed:=ture", "launch argument 'armed' must be true or false, got 'ture'"),
])
def test_bad_input_is_one_error_line_and_a_nonzero_exit(ws, args, error):
    """Errors found while the launch description is generated: ros2 launch prints one line naming the
    problem (no traceback), starts no node and exits 1."""
    p = ws.run(f"ros2 launch wam_policy {args}", check=False, timeout=120)
    out = p.stdout + p.stderr
    assert p.returncode == 1, out
    errors = [line for line in out.splitlines() if "ERROR" in line or "rror:" in line]
    assert len(errors) == 1 and error in errors[0], out
    assert errors[0].startswith("[ERROR] [launch]: ") and "Traceback" not in out and "process started" not in out, out
