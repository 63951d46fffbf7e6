"""Run evaluation jobs: one job = one graph (sim_bridge + perturbation_node + wam_policy_node
[+ recorder]) on its own ROS_DOMAIN_ID, running a contiguous run of seeds of one (policy,
configuration). Jobs run in worker processes on this machine, or as Ray tasks across machines;
since an episode's outcome depends only on its seed (docs/GRAPH_CONTRACT.md, "Seeds"), the
results table is the same whatever the parallelism.
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from wam_common.background_node import BackgroundNode
from wam_common.config import deep_merge
from wam_common.graph import load_graph
from wam_common.launcher import GraphRunner
from wam_apps.evaluation.results import ResultStore, episode_key

STOP_ORDER = ["wam_policy_node", "perturbation_node", "sim_bridge", "recorder"]


@dataclass
class Job:
    policy: str
    policy_overrides: dict
    configuration: str
    dimension: str
    level: int
    sim_overrides: dict  # node → overrides for this configuration
    task: str
    seeds: list[int]  # contiguous
    clock: str = "lockstep"
    bags: str = "keep"  # keep | none
    out_dir: str = "runs/eval"
    graph: str = "aloha_sim"
    timeout_per_episode_s: float = 900.0
    world: str = "nominal"  # sim_bridge's world (config/worlds): the sim, or the cousin standing in for a robot
    value: float | None = None  # what the configuration's level stands for (Latency: seconds)

    @property
    def job_id(self) -> str:
        return f"{self.policy}__{self.configuration}__{self.task}__{self.seeds[0]}-{self.seeds[-1]}"


@dataclass
class JobResult:
    job_id: str
    rows: list[dict] = field(default_factory=list)
    error: str | None = None


def contiguous_runs(seeds: list[int], max_len: int) -> list[list[int]]:
    """[3,4,5,9,10] → [[3,4,5],[9,10]] (each at most max_len long)."""
    out: list[list[int]] = []
    for s in sorted(seeds):
        if out and s == out[-1][-1] + 1 and len(out[-1]) < max_len:
            out[-1].append(s)
        else:
            out.append([s])
    return out


def graph_overrides(job: Job) -> dict:
    lockstep = job.clock == "lockstep"
    sim = {"task": job.task, "seed": job.seeds[0], "episodes": len(job.seeds), "clock": job.clock, "world": job.world}
    if lockstep:
        # lockstep is about determinism: a slow (loaded) machine must not become a "policy_timeout"
        # failure, so the sim waits long for each command; a dead policy still ends the job (dead node)
        sim["lockstep"] = {"give_up_s": 600.0}
    ov = {
        "sim_bridge": sim,
        "perturbation_node": {"lockstep": lockstep},
        "wam_policy_node": deep_merge({"lockstep": lockstep}, job.policy_overrides),
    }
    if lockstep:  # likewise the policy waits for a step's frames instead of holding
        ov["wam_policy_node"] = deep_merge({"sync": {"lockstep_wait_s": 300.0}}, ov["wam_policy_node"])
    ov = deep_merge(ov, job.sim_overrides)
    # the sim starts the first episode once these nodes are up: the eval's own observer (it tallies every step's
    # policy status, so it must hear the first one), and the recorder unless there is none (then the sim must not
    # wait start_wait_s for it)
    waits = ov["sim_bridge"].get("start_wait_nodes")
    if waits is None:
        waits = load_graph(job.graph).node("sim_bridge").parameters.get("start_wait_nodes", [""])
    waits = [n for n in waits if n.strip("/") and not (job.bags == "none" and n.strip("/") == "recorder")]
    ov["sim_bridge"]["start_wait_nodes"] = waits + [OBSERVER_NODE]
    if job.bags == "none":
        ov["recorder"] = {"enabled": False}
    else:
        bag_dir = Path(job.out_dir).resolve() / "bags" / job.policy / job.configuration
        name, attempt = f"{job.task}_seed{job.seeds[0]}", 1
        while (bag_dir / name).exists():  # an interrupted earlier attempt keeps its bag
            attempt += 1
            name = f"{job.task}_seed{job.seeds[0]}_try{attempt}"
        ov["recorder"] = {"output_dir": str(bag_dir), "bag_name": name}
    return ov


OBSERVER_NODE = "wam_policy_eval_observer"
STATUS_DEPTH = 5000  # statuses kept for the observer until its callback takes them (100 s of 50 Hz steps)


def _status_qos():
    """The contract's STATUS QoS with a deeper history."""
    import copy

    from wam_common import qos

    q = copy.copy(qos.STATUS)
    q.depth = STATUS_DEPTH
    return q


class _Observer(BackgroundNode):
    """Episode events, policy status and command timing on one job's domain.

    The sim starts the first episode once a node named :data:`OBSERVER_NODE` is up; the observer creates
    that node (beside its listening node) only once its subscriptions have matched the sim's clock and event
    publishers and the policy's status publisher. A node is listed before its endpoints are matched: waiting
    for the listening node's own name lost the first steps' statuses (25 in one run here) when discovery was
    slow — a late reader of a volatile topic gets nothing of what came before.

    Command times are read on the sim's ``/clock`` (the robot's time: a sim slowed by
    ``realtime.speed``, or one that cannot keep real time on a loaded machine, is not a policy
    stall); a stall is a gap of more than 1.5 control periods between commands.

    From the policy's statuses, per episode (the status's ``episode``): ``stall_steps``, the steps
    commanded without a fresh action (a hold: e.g. ``sync`` waiting for a chunk in flight), and
    ``seam_jump_max``, at chunk boundaries the largest arm-joint distance of the runtime's new action
    from the last command sent (rad; it includes any lag of the safety filter's velocity clamp), and what
    the safety layer did: ``holds`` (steps held, by reason: ``stall_steps`` counts them all),
    ``chunks_trimmed`` and ``chunks_rejected`` (by the whole-chunk check) of the chunks checked
    (``chunks_used`` + ``chunks_rejected``: ``chunks_used`` counts the chunks commands came from). In an episode without faults
    each of those is a false positive of the safety layer (docs/results/reliability.md)."""

    def __init__(self, domain_id: int, dt: float, count_stalls: bool):
        from rosgraph_msgs.msg import Clock
        from std_msgs.msg import Float64MultiArray, String

        from wam_common import qos, topics

        super().__init__(OBSERVER_NODE + "_listener", domain_id)
        self.dt = dt
        self.count_stalls = count_stalls  # command gaps mean something only in realtime
        self.lock = threading.Condition()
        self.events: list[dict] = []
        self.cur_infer: list[float] = []
        self.cur_cmd_t: list[float] = []
        self.clock_s: float | None = None
        self.per_episode: dict[int, dict] = {}
        self.tallies: dict[int, dict] = {}  # episode → stall_steps, seam_jump_max, steps whose status came
        # created before the command subscription: when both are ready, the clock is read first; statuses
        # with a deep history: a lockstep sim without cameras steps hundreds of times a second, faster than
        # this process's Python thread may take them when it is busy
        self._subs = [
            self.node.create_subscription(Clock, topics.CLOCK, self._on_clock, 10),
            self.node.create_subscription(String, topics.EPISODE, self._on_event, qos.EVENTS),
            self.node.create_subscription(String, topics.POLICY_STATUS, self._on_status, _status_qos()),
            self.node.create_subscription(Float64MultiArray, topics.COMMAND, self._on_command, qos.COMMAND),
        ]
        self.ready_node = None
        self._closing = threading.Event()
        self.start()
        self._announcer = threading.Thread(target=self._announce, daemon=True)
        self._announcer.start()

    def _announce(self) -> None:
        """Create the :data:`OBSERVER_NODE` the sim waits for once the clock, event and status subscriptions
        each have a matched publisher (this reader matched the writer; the writer's side of the same pairwise
        exchange follows within milliseconds, and the sim waits ``start_delay_s`` more)."""
        import rclpy

        while not self._closing.is_set():
            try:
                if all(sub.get_publisher_count() > 0 for sub in self._subs[:3]):
                    self.ready_node = rclpy.create_node(OBSERVER_NODE, context=self.ctx)
                    return
            except Exception:  # noqa: BLE001 - closed meanwhile
                return
            self._closing.wait(0.02)

    def close(self) -> None:
        self._closing.set()
        self._announcer.join(timeout=2)
        if self.ready_node is not None:
            self.ready_node.destroy_node()
        super().close()

    def _on_event(self, msg):
        try:
            ev = json.loads(msg.data)
        except ValueError:
            return
        with self.lock:
            if ev.get("event") == "start":
                self.cur_infer, self.cur_cmd_t = [], []
            elif ev.get("event") == "end":
                gaps = np.diff(self.cur_cmd_t) if len(self.cur_cmd_t) > 1 else np.zeros(0)
                self.per_episode[int(ev.get("episode", -1))] = {
                    "infer_ms_mean": float(np.mean(self.cur_infer)) if self.cur_infer else None,
                    "stalls": int(np.sum(gaps > 1.5 * self.dt)) if self.count_stalls else None,
                }
            self.events.append(ev)
            self.lock.notify_all()

    def _on_status(self, msg):
        try:
            st = json.loads(msg.data)
        except ValueError:
            return
        ms = st.get("infer_ms")
        with self.lock:
            if isinstance(ms, (int, float)) and ms > 0:
                self.cur_infer.append(float(ms))
            ep = st.get("episode")
            if isinstance(ep, int) and st.get("published", True):
                t = self.tallies.setdefault(ep, _empty_tally())
                t["stall_steps"] += bool(st.get("stall"))
                if st.get("hold"):
                    t["holds"][str(st["hold"])] = t["holds"].get(str(st["hold"]), 0) + 1
                check = st.get("chunk_check")
                if isinstance(check, dict) and check.get("result") in ("trimmed", "rejected"):
                    t[f"chunks_{check['result']}"] += 1
                if isinstance(st.get("seam_jump"), (int, float)):
                    t["seam_jump_max"] = max(t["seam_jump_max"], float(st["seam_jump"]))
                if isinstance(st.get("step"), int):
                    t["steps_seen"].add(st["step"])
                if st.get("chunk_id") is not None:
                    t["chunk_ids"].add(st["chunk_id"])
                self.lock.notify_all()

    def tally(self, episode: int, steps: int, timeout_s: float) -> dict:
        """The episode's status tallies once the status of its last step (``steps - 1``) came (lockstep: every
        step has one), at most ``timeout_s``; ``status_complete`` says whether the status of every step
        ``0 .. steps - 1`` came (statuses arrive in order: none can come after the last one)."""
        def last_came() -> bool:
            return steps <= 0 or steps - 1 in self.tallies.get(episode, {}).get("steps_seen", ())

        deadline = time.monotonic() + timeout_s
        with self.lock:
            while not last_came() and time.monotonic() < deadline:
                self.lock.wait(timeout=0.1)
            t = dict(self.tallies.get(episode) or {**_empty_tally(), "stall_steps": None, "seam_jump_max": None,
                                                   "holds": None, "chunks_trimmed": None, "chunks_rejected": None})
        missing = sorted(set(range(steps)) - t.pop("steps_seen"))
        t["chunks_used"] = len(t.pop("chunk_ids")) if t["stall_steps"] is not None else None
        t["status_complete"] = not missing
        t["status_missing_first"] = missing[0] if missing else None  # where to look when a tally is short
        return t

    def _on_clock(self, msg):
        with self.lock:
            self.clock_s = msg.clock.sec + msg.clock.nanosec * 1e-9

    def _on_command(self, _msg):
        with self.lock:
            if self.clock_s is not None:
                self.cur_cmd_t.append(self.clock_s)


def _empty_tally() -> dict:
    return {"stall_steps": 0, "seam_jump_max": 0.0, "holds": {}, "chunks_trimmed": 0, "chunks_rejected": 0,
            "steps_seen": set(), "chunk_ids": set()}


def run_job(job: Job, store_dir: str | None = None) -> JobResult:
    """Run one job to completion; each finished episode is appended to the store as it ends."""
    from wam_common import topics

    store = ResultStore(store_dir or job.out_dir)
    g = load_graph(job.graph, graph_overrides(job))
    log_dir = Path(job.out_dir).resolve() / "logs" / job.job_id
    runner = GraphRunner(g, log_dir=log_dir)
    res = JobResult(job.job_id)
    obs = None
    runner.start()
    try:
        obs = _Observer(runner.domain_id, topics.DT, count_stalls=job.clock == "realtime")
        deadline = time.monotonic() + 60 + job.timeout_per_episode_s * len(job.seeds)
        written: set[int] = set()
        while True:
            with obs.lock:
                obs.lock.wait(timeout=0.5)
                events = list(obs.events)
                extra = dict(obs.per_episode)
            for ev in events:
                if ev.get("event") != "end" or int(ev.get("episode", -1)) in written:
                    continue
                ep = int(ev["episode"])
                written.add(ep)
                lat = ev.get("latency_ms") or {}
                steps = int(ev.get("steps", 0))
                if job.clock == "lockstep":  # a status per step: wait for the last one
                    tally = obs.tally(ep, steps, 10.0)
                else:  # realtime statuses are per tick, not per sim step: what came so far
                    tally = {**obs.tally(ep, steps, 0.0), "status_complete": None, "status_missing_first": None}
                row = {
                    "policy": job.policy, "configuration": job.configuration, "dimension": job.dimension,
                    "level": job.level, "task": ev.get("task", job.task), "seed": int(ev["seed"]),
                    "success": bool(ev["success"]), "steps": steps,
                    "reason": ev.get("reason", ""), "clock": job.clock, "world": ev.get("world", job.world),
                    "latency_ms_mean": lat.get("mean"), **extra.get(ep, {"infer_ms_mean": None, "stalls": None}),
                    "value": job.value, **tally,
                    "time_to_success_s": round(steps * topics.DT, 4) if ev["success"] else None,
                    "bag": None if job.bags == "none" else str(Path(g.node("recorder").parameters["output_dir"])
                                                              / g.node("recorder").parameters["bag_name"]),
                }
                store.append(row)
                res.rows.append(row)
            if any(e.get("event") == "done" for e in events) or len(written) >= len(job.seeds):
                break
            dead = runner.dead()
            if dead:
                name, code = next(iter(dead.items()))
                tail = " | ".join(runner.log(name).strip().splitlines()[-3:])
                res.error = f"{job.job_id}: node '{name}' exited ({code}): {tail}"
                break
            if time.monotonic() > deadline:
                res.error = f"{job.job_id}: timed out after {len(written)}/{len(job.seeds)} episodes"
                break
        time.sleep(0.5)  # the recorder takes the last events
    finally:
        if obs is not None:
            obs.close()
        runner.stop(order=STOP_ORDER)
    return res


def _run_job_dict(job_dict: dict, store_dir: str) -> dict:
    r = run_job(Job(**job_dict), store_dir)
    return asdict(r)


def run_jobs(jobs: list[Job], store_dir: str, workers: int = 1, ray_address: str | None = None,
             on_result=None) -> list[JobResult]:
    """Run jobs with ``workers`` local processes, or on Ray (``ray_address``: "local", "auto" or host:port).

    Local workers append to ``store_dir`` themselves. A Ray task may run on another machine: it
    writes under its job's ``out_dir`` there (which is ``store_dir`` when the CLI plans the jobs)
    and returns its rows, which the driver appends to ``store_dir`` unless already present. So the
    table is complete with or without a filesystem shared with the workers; bags and logs stay on
    the machine that ran the episode. ``on_result(JobResult)`` is called in the parent as each job
    finishes (progress, ETA)."""
    results: list[JobResult] = []
    if ray_address:
        import ray

        if not ray.is_initialized():
            if ray_address == "local":
                ray.init(num_cpus=max(1, workers), include_dashboard=False, log_to_driver=False)
            else:
                ray.init(address=ray_address, log_to_driver=False)
        remote = ray.remote(num_cpus=1)(_run_job_dict)
        # a task writes its rows, bags and logs under the job's out_dir on the machine it runs on;
        # the driver's table is built from ITS store, so it appends the rows each task returns
        # (skipping episodes already there: with a shared filesystem the task wrote them itself)
        store = ResultStore(store_dir)
        # absolute: a task's working directory is not the driver's
        jobs = [replace(j, out_dir=str(Path(j.out_dir).absolute())) for j in jobs]
        pending = {remote.remote(asdict(j), j.out_dir): j for j in jobs}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                pending.pop(ref)
                r = JobResult(**ray.get(ref))
                have = store.done()
                for row in r.rows:
                    if episode_key(row) not in have:
                        store.append(row)
                results.append(r)
                if on_result:
                    on_result(r)
        return results
    if workers <= 1:
        for j in jobs:
            r = run_job(j, store_dir)
            results.append(r)
            if on_result:
                on_result(r)
        return results
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
        futs = [pool.submit(_run_job_dict, asdict(j), store_dir) for j in jobs]
        for f in as_completed(futs):
            r = JobResult(**f.result())
            results.append(r)
            if on_result:
                on_result(r)
    return results
