"""``wam-policy calibrate BAG…``: fit the sim's arm dynamics (and camera) to recorded episodes.

Replays each recorded episode's commands open loop in the MuJoCo ALOHA (from the episode's seed)
and fits, per joint (both arms alike), the actuator gain, joint damping and friction loss of a
world config (sim_bridge/calibration.py says how); the joint sensors' latency and noise are
estimated from the recording. Where the bags hold cam_high images, cam_high's pose offset, yaw /
pitch, FOV scale, colour response, latency and image noise are fitted too (sim_bridge/
calibration_camera.py; ``--no-camera`` skips it, ``--no-dynamics`` fits the camera alone on
``--base``'s dynamics). The object's mass and friction come from ``--base``. Writes to
``--out``: ``world.yaml`` (a ``config/worlds`` config: ``wam-policy eval --world OUT/world.yaml``),
``calibration.json`` and ``calibration.md`` (the fit per parameter with its standard error, which
parameters the recording identified, the replay error per joint before and after; the camera's
fit, and its reprojection error against ``--reference``). A fit that does not converge or does not reduce the error, or
a fitted joint that never moves, exits 3 and writes nothing; unusable bags exit 2.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from wam_common.config import ConfigError


def add_arguments(p) -> None:
    p.epilog = ("Replays each episode's commands open loop from its seed and fits actuator_gain, joint_damping and "
                "frictionloss per joint (both arms alike) plus the joint sensors' latency and noise; where the bags "
                "hold cam_high images, also cam_high's pose, FOV, colour response, latency and image noise. Writes "
                "world.yaml, calibration.json and calibration.md under --out. Exit 2: unusable bags (named); exit 3: "
                "the fit failed (no convergence, no significant gain, a bound, a joint that never moves) and nothing "
                "was written. docs/sim_bridge.md → Calibration from bags.")
    p.add_argument("bags", nargs="+", help="recorded bags (rosbag2 directories or .mcap): clean episodes with "
                   "episode events, commands and both arms' joint states")
    p.add_argument("--base", default="nominal", help="the world calibrated from, and where the parts a joint "
                   "trajectory cannot tell come from (default nominal)")
    p.add_argument("--out", default=None, help="output folder (default runs/calibration/<name>)")
    p.add_argument("--name", default="calibrated", help="the calibrated world's name (default calibrated)")
    p.add_argument("--joints", default=None, help="comma-separated joints to fit (default all: waist, shoulder, "
                   "elbow, forearm_roll, wrist_angle, wrist_rotate, gripper); the others keep --base's values")
    p.add_argument("--max-steps", type=int, default=0, help="use only each episode's first N steps (0: all)")
    p.add_argument("--max-iter", type=int, default=40, help="Levenberg-Marquardt iterations at most (default 40)")
    p.add_argument("--max-latency", type=int, default=5, help="joint-sensor latencies tried, 0..N steps (default 5)")
    p.add_argument("--min-excitation", type=float, default=0.05,
                   help="a fitted joint's commands must span at least this much (rad; default 0.05)")
    p.add_argument("--holdout", nargs="+", default=[], metavar="BAG",
                   help="bags of other episodes (same task), not fitted: their replay error with the base, the "
                        "calibrated (and the reference) world goes into the report, a check that the fit generalises")
    p.add_argument("--no-camera", action="store_true", help="do not fit the camera even where the bags hold "
                   "cam_high images (default: fit it when they do)")
    p.add_argument("--camera", action="store_true", help="fit the camera and fail (exit 2) where a bag holds no "
                   "cam_high images")
    p.add_argument("--no-dynamics", action="store_true", help="keep --base's dynamics and joint sensors (replay "
                   "with them) and fit the camera only, e.g. --base a world calibrated before")
    p.add_argument("--camera-frames", type=int, default=12, help="cam_high frames the camera fit renders, spread "
                   "over the episodes before the objects move (default 12)")
    p.add_argument("--camera-max-iter", type=int, default=30, help="camera Levenberg-Marquardt iterations per "
                   "level at most (default 30)")
    p.add_argument("--render-quality", default="gym_aloha", help="the render quality the bags were recorded at "
                   "(sim_bridge render.quality; default gym_aloha)")
    p.add_argument("--reference", default=None, help="a world whose dynamics the bags are known to have (e.g. "
                   "cousin, for a check): its values and replay error go into the report")


def _params_table(res, base, ref) -> list[str]:
    from sim_bridge.calibration import KINDS
    from sim_bridge.world import JOINTS_PER_ARM

    head = "| parameter | joint | base | calibrated ± local SE | identified |" + (" reference |" if ref else "")
    lines = [head, "|---|---|---|---|---|" + ("---|" if ref else "")]
    for k in KINDS:
        for j, name in enumerate(JOINTS_PER_ARM):
            fit, se = res.params[k][j], res.stderr[k][j]
            fitted = name in res.fitted
            cell = f"{fit:.3f} ± {se:.3f}" if fitted else f"{fit:.3f} (not fitted)"
            row = f"| {k} | {name} | {getattr(base, k)[j]:.3f} | {cell} | {'yes' if res.identified[k][j] else 'no'} |"
            if ref:
                row += f" {getattr(ref, k)[j]:.3f} |"
            lines.append(row)
    return lines


def markdown(rep: dict, res, base, ref) -> str:
    names = list(rep["replay_error"]["base"])
    cols = ["base", "calibrated"] + (["reference"] if ref else [])
    lines = [f"# Calibration: world '{rep['world']['world']['name']}' from {rep['episodes']} episodes", "",
             f"Command: `{rep['command']}`", "",
             f"Bags: {', '.join(rep['bags'])}; {rep['steps']} steps in all; base world `{rep['base']}`"
             + (f"; reference `{rep['reference']}`" if ref else "") + ".", "",
             f"Fit: {res.message}; {res.rollouts} replays in {rep['fit_s']:.1f} s; replay error (Σ squared, noise "
             f"units) {res.cost_before:.4g} → {res.cost_after:.4g}; χ²/dof {res.chi2_dof:.3f} (≈ 1: the calibrated "
             f"sim explains the recording down to its sensor noise). Joint sensors: latency {res.latency_steps} "
             f"steps, noise σ {res.noise_std:.4f} rad (estimated from the recording).", "",
             "SE: the fit's local (linearised) standard error — optimistic where a trajectory depends on the "
             "parameter non-linearly (dry friction, contacts) or two parameters trade off (gain against damping "
             "on a joint that moves little); `bench/calibration_spread.py` measures the real spread of "
             "one-episode fits. A parameter is *identified* when its SE is under half the weak prior's (gain 0.5, "
             "damping 2, friction 1). An unidentified one stays near the base value — e.g. a friction loss that "
             "never saturates in the recorded motion changes no trajectory.", "",
             "## Parameters", ""] + _params_table(res, base, ref) + [
             "", "## Open-loop replay error per joint (RMS; rad, gripper in normalised 0..1 units)", "",
             "| joint | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for n in names:
        lines.append(f"| {n} | " + " | ".join(f"{rep['replay_error'][c][n]:.4f}" for c in cols) + " |")
    lines.append("| **mean of the 12 arm joints** | " + " | ".join(f"**{rep['replay_error_mean_rad'][c]:.4f}**"
                                                                 for c in cols) + " |")
    if "holdout" in rep:
        h = rep["holdout"]
        lines += ["", f"## Held-out episodes ({h['episodes']}, {h['steps']} steps; not fitted)", "",
                  "| joint | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
        for n in names:
            lines.append(f"| {n} | " + " | ".join(f"{h['replay_error'][c][n]:.4f}" for c in cols) + " |")
        lines.append("| **mean of the 12 arm joints** | " + " | ".join(f"**{h['replay_error_mean_rad'][c]:.4f}**"
                                                                     for c in cols) + " |")
    return "\n".join(lines) + "\n"


def camera_markdown(cam: dict, ref) -> str:
    """The camera fit's section of calibration.md."""
    from sim_bridge.calibration_camera import PARAMS

    lines = ["", f"## Camera (cam_high): {cam['message']}", "",
             f"{len(cam['frames'])} frames from before the replayed objects move, {cam['renders']} renders in "
             f"{cam['fit_s']:.1f} s; residual RMS (pixel values 0..255, unsaturated pixels) {cam['rms_before']:.2f} "
             f"with the base camera and colour → {cam['rms_after']:.2f}. Camera latency {cam['camera_latency_steps']} "
             f"steps (error per latency 0..N: {', '.join(f'{c:.4g}' for c in cam['latency_costs'])}); image noise σ "
             f"{cam['image_noise_std']:.2f}. SE: local, from the final Jacobian; *identified*: SE under a tenth of a "
             f"plausible error (2 cm, 2°, 0.05 FOV, 0.1 gain / gamma, 5 offset).", "",
             "| parameter | base | calibrated ± local SE | identified |" + (" reference |" if ref else ""),
             "|---|---|---|---|" + ("---|" if ref else "")]
    for p in PARAMS:
        se = cam["stderr"][p]
        cell = (f"{cam['params'][p]:.4f} ± {se:.4f}" if se is not None else
                f"{cam['params'][p]:.4f} (held: only yaw + roll shows, cam_high looks straight down)")
        row = f"| {p} | {cam['base'][p]:.4g} | {cell} | {'yes' if cam['identified'][p] else 'no'} |"
        if ref:
            row += f" {cam['reference'][p]:.4g} |"
        lines.append(row)
    if "reprojection_px" in cam:
        rp = cam["reprojection_px"]
        lines[3] += (f" Reprojection against the reference camera ({rp['calibrated_vs_reference']['points']} points on "
                     f"the table and 0.25 m above it): base {rp['base_vs_reference']['mean_px']:.2f} px mean / "
                     f"{rp['base_vs_reference']['max_px']:.2f} px max → calibrated "
                     f"{rp['calibrated_vs_reference']['mean_px']:.2f} / {rp['calibrated_vs_reference']['max_px']:.2f} px.")
    if ref:
        lines.append(f"| camera_latency_steps | – | {cam['camera_latency_steps']} | – | {ref.camera_latency_steps} |")
        lines.append(f"| image_noise_std | – | {cam['image_noise_std']:.2f} | – | {ref.image_noise_std:g} |")
    return "\n".join(lines) + "\n"


def run(args) -> int:
    import dataclasses

    import numpy as np
    import yaml

    from sim_bridge.calibration import CalibrationFailed, calibrate, replay_error
    from sim_bridge.calibration_camera import CAMERA, PARAMS, calibrate_camera, reprojection_px, world_values
    from sim_bridge.env import RENDER_QUALITY
    from sim_bridge.world import JOINTS_PER_ARM, load_world
    from wam_apps.analysis.calibrate import has_camera, recordings_from_bag
    from wam_common.bag.reader import BagReadError

    if args.max_steps < 0 or args.max_iter < 1 or args.max_latency < 0 or not args.min_excitation > 0:
        raise ConfigError("--max-steps must be ≥ 0, --max-iter ≥ 1, --max-latency ≥ 0, --min-excitation > 0")
    if args.camera_frames < 3 or args.camera_max_iter < 1:
        raise ConfigError("--camera-frames must be ≥ 3, --camera-max-iter ≥ 1")
    if args.render_quality not in RENDER_QUALITY:
        raise ConfigError(f"--render-quality: unknown '{args.render_quality}' (known: {', '.join(RENDER_QUALITY)})")
    if args.camera and args.no_camera:
        raise ConfigError("--camera and --no-camera contradict each other")
    if args.no_dynamics and args.no_camera:
        raise ConfigError("--no-dynamics with --no-camera leaves nothing to fit")
    joints = None
    if args.joints:
        joints = [j.strip() for j in args.joints.split(",") if j.strip()]
        bad = [j for j in joints if j not in JOINTS_PER_ARM]
        if bad or not joints:
            raise ConfigError(f"--joints: unknown joint '{bad[0] if bad else args.joints}' "
                              f"(joints: {', '.join(JOINTS_PER_ARM)})")
    base = load_world(args.base)
    ref = load_world(args.reference) if args.reference else None

    def read(bags: list[str], camera: bool) -> list:
        out = []
        for b in bags:
            if not Path(b).exists():
                raise ConfigError(f"bag '{b}' does not exist")
            try:
                out += recordings_from_bag(b, args.max_steps, camera=CAMERA if camera else None)
            except (ValueError, BagReadError) as exc:
                raise ConfigError(str(exc)) from None
        return out

    for b in args.bags:
        if not Path(b).exists():
            raise ConfigError(f"bag '{b}' does not exist")
    if args.no_camera:
        fit_camera = False
    elif args.camera or args.no_dynamics:
        fit_camera = True  # read() names a bag without images
    else:
        try:
            fit_camera = all(has_camera(b, CAMERA) for b in args.bags)
        except BagReadError as exc:
            raise ConfigError(str(exc)) from None
    recs, held = read(args.bags, fit_camera), read(args.holdout, False)
    tasks: dict[str, list[str]] = {}
    for r in recs + held:
        tasks.setdefault(r.task, []).append(r.name)
    if len(tasks) > 1:
        raise ConfigError("the bags mix tasks (" + "; ".join(f"{t}: {', '.join(n[:3])}{' …' if len(n) > 3 else ''}"
                                                            for t, n in tasks.items())
                          + "): calibrate from one task's episodes")
    fitted = ([] if args.no_dynamics else ["dynamics"]) + (["camera"] if fit_camera else [])
    print(f"calibrating {' and '.join(fitted)} from {len(recs)} episodes ({sum(r.steps for r in recs)} steps) of "
          f"{next(iter(tasks))}, base world '{base.name}'", file=sys.stderr)
    desc = f"calibrated by wam-policy calibrate from {len(recs)} episodes of {', '.join(Path(b).name for b in args.bags)}"
    log = lambda s: print(s, file=sys.stderr)  # noqa: E731
    t0 = time.monotonic()
    res = None
    try:
        if not args.no_dynamics:
            res = calibrate(recs, base, joints=joints, max_iter=args.max_iter, max_latency=args.max_latency,
                            min_excitation=args.min_excitation, name=args.name, description=desc, log=log)
            world = res.world
        else:
            world = dataclasses.replace(base, name=args.name, description=desc)
        fit_s = time.monotonic() - t0
        cres = None
        if fit_camera:
            t1 = time.monotonic()
            try:
                cres = calibrate_camera(recs, world, max_frames=args.camera_frames, max_iter=args.camera_max_iter,
                                        quality=args.render_quality, log=log)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
            cam_s = time.monotonic() - t1
            world = cres.world
    except CalibrationFailed as exc:
        print(f"wam-policy calibrate: calibration failed: {exc}; nothing written", file=sys.stderr)
        return 3
    names = [f"{a}_{j}" for a in ("left", "right") for j in JOINTS_PER_ARM]
    cmd = " ".join(["wam-policy", "calibrate"] + sys.argv[2:]) if sys.argv[1:2] == ["calibrate"] else None
    rep = {"command": cmd, "bags": [str(b) for b in args.bags], "episodes": len(recs),
           "steps": int(sum(r.steps for r in recs)), "task": next(iter(tasks)), "base": args.base,
           "reference": args.reference, "fitted": fitted}
    if res is not None:
        errs = {"base": res.rms_before, "calibrated": res.rms_after}
        if ref:
            errs["reference"] = replay_error(recs, ref, latency=res.latency_steps)
        rep.update({"fit_s": round(fit_s, 2), **res.summary(),
                    "replay_error": {k: dict(zip(names, map(float, v))) for k, v in errs.items()},
                    "replay_error_mean_rad": {k: float(np.mean(np.r_[v[0:6], v[7:13]])) for k, v in errs.items()}})
        if held:
            he = {"base": replay_error(held, base, latency=res.latency_steps),
                  "calibrated": replay_error(held, res.world)}
            if ref:
                he["reference"] = replay_error(held, ref, latency=res.latency_steps)
            rep["holdout"] = {"bags": [str(b) for b in args.holdout], "episodes": len(held),
                              "steps": int(sum(r.steps for r in held)),
                              "replay_error": {k: dict(zip(names, map(float, v))) for k, v in he.items()},
                              "replay_error_mean_rad": {k: float(np.mean(np.r_[v[0:6], v[7:13]]))
                                                        for k, v in he.items()}}
        if ref:
            rep["reference_params"] = {k: [float(x) for x in getattr(ref, k)] for k in res.params}
    if cres is not None:
        rep["camera"] = {"fit_s": round(cam_s, 2), **cres.summary()}
        if ref:
            rep["camera"]["reference"] = dict(zip(PARAMS, map(float, world_values(ref))))
            rep["camera"]["reference_sensors"] = {"camera_latency_steps": ref.camera_latency_steps,
                                                  "image_noise_std": ref.image_noise_std}
            # where the fitted / the base camera put points the reference camera puts elsewhere (pixels)
            rep["camera"]["reprojection_px"] = {
                "calibrated_vs_reference": reprojection_px(world, ref, cres.nominal_pose, cres.shape),
                "base_vs_reference": reprojection_px(base, ref, cres.nominal_pose, cres.shape)}
    rep["world"] = world.to_dict()
    out = Path(args.out) if args.out else Path("runs/calibration") / args.name
    out.mkdir(parents=True, exist_ok=True)
    parts = []
    if res is not None:
        parts.append("Dynamics (actuator_gain, joint_damping, frictionloss) and sensors.joint_latency_steps / "
                     "joint_noise_std are fitted")
    else:
        parts.append(f"Dynamics and joint sensors are the base world's ('{base.name}')")
    if cres is not None:
        parts.append("camera, colour and sensors.image_noise_std / camera_latency_steps are fitted to cam_high frames")
    header = (f"# World '{args.name}': {desc}.\n# " + ";\n# ".join(parts) + ";\n# the rest comes from the base "
              f"world '{base.name}'. Report: calibration.md next to this file.\n")
    (out / "world.yaml").write_text(header + yaml.safe_dump(world.to_dict(), sort_keys=False, allow_unicode=True,
                                                            default_flow_style=None))
    (out / "calibration.json").write_text(json.dumps(rep, indent=1) + "\n")
    if res is not None:
        md = markdown(rep, res, base, ref)
    else:
        md = (f"# Calibration: world '{args.name}' from {rep['episodes']} episodes\n\nCommand: `{rep['command']}`\n\n"
              f"Bags: {', '.join(rep['bags'])}; {rep['steps']} steps in all; base world `{rep['base']}` (its "
              f"dynamics replay the episodes and are kept)" + (f"; reference `{rep['reference']}`" if ref else "")
              + ".\n")
    if cres is not None:
        md += camera_markdown(rep["camera"], ref)
    (out / "calibration.md").write_text(md)
    print(md)
    print(f"world: {out / 'world.yaml'} (report: calibration.md, calibration.json)")
    return 0
