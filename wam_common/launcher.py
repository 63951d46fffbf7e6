"""Start a graph description as processes, without ros2cli/launch (the CLI's ``ros2 launch``).

Each node runs as ``python -m <module> --ros-args -r __node:=<name> --params-file <f>``, i.e.
exactly what ``ros2 run wam_policy <executable>`` runs, on its own ROS_DOMAIN_ID so parallel
graphs (tests, eval workers) never cross-talk.
"""
from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from .graph import Graph, NodeSpec

_LOCK_DIR = Path(tempfile.gettempdir()) / "wam_policy_domains"


class _NoAliasDumper(yaml.SafeDumper):
    """rcl refuses params files with YAML anchors/aliases ("Will not support aliasing"), which
    ``safe_dump`` writes when one list object appears under two parameters."""

    def ignore_aliases(self, data):  # noqa: ARG002
        return True


def params_yaml(node_name: str, params: dict) -> str:
    """A ``--params-file`` for one node (what ``ros2 launch`` writes for ``parameters=[{...}]``)."""
    return yaml.dump({f"/{node_name}": {"ros__parameters": params}}, Dumper=_NoAliasDumper, sort_keys=True)


class DomainLease:
    """An exclusive ROS_DOMAIN_ID on this machine (file lock held while the lease lives)."""

    def __init__(self, first: int = 20, last: int = 100):
        _LOCK_DIR.mkdir(parents=True, exist_ok=True)
        start = self._next_start(first, last)
        for k in range(last - first + 1):
            did = first + (start - first + k) % (last - first + 1)
            fh = open(_LOCK_DIR / f"{did}.lock", "w")
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                fh.close()
                continue
            self.domain_id, self._fh = did, fh
            return
        raise RuntimeError(f"no free ROS_DOMAIN_ID in {first}..{last}")

    @staticmethod
    def _next_start(first: int, last: int) -> int:
        """Round-robin over the range (a machine-wide counter): a domain just released is not handed
        out again at once, so processes of a graph that are still shutting down never meet the next
        graph (seen as stray latched messages between consecutive tests)."""
        n = last - first + 1
        with open(_LOCK_DIR / "next", "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            fh.seek(0)
            try:
                cur = int(fh.read().strip() or os.getpid()) % n
            except ValueError:
                cur = os.getpid() % n
            fh.seek(0)
            fh.truncate()
            fh.write(str((cur + 1) % n))
            fh.flush()
            fcntl.flock(fh, fcntl.LOCK_UN)
        return first + cur

    def release(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def node_command(spec: NodeSpec, params_file: Path) -> list[str]:
    cmd = [sys.executable, "-m", spec.module, "--ros-args", "-r", f"__node:={spec.name}",
           "--params-file", str(params_file)]
    for src, dst in spec.remappings.items():
        cmd += ["-r", f"{src}:={dst}"]
    return cmd


class GraphRunner:
    """Runs every node of a :class:`Graph` as a child process; ``stop()`` ends them all."""

    def __init__(self, graph: Graph, domain_id: int | None = None, log_dir: Path | None = None,
                 extra_env: dict[str, str] | None = None, quiet: bool = True):
        self.graph = graph
        self._lease = None
        if domain_id is None:
            self._lease = DomainLease()
            domain_id = self._lease.domain_id
        self.domain_id = domain_id
        self.log_dir = Path(log_dir) if log_dir else Path(tempfile.mkdtemp(prefix=f"wam_{graph.name}_"))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.extra_env = dict(extra_env or {})
        self.quiet = quiet
        self.procs: dict[str, subprocess.Popen] = {}

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.graph.env())
        env["ROS_DOMAIN_ID"] = str(self.domain_id)
        env["PYTHONUNBUFFERED"] = "1"
        env.update(self.extra_env)
        return env

    def start(self) -> "GraphRunner":
        env = self.env()
        for spec in self.graph.nodes:
            pfile = self.log_dir / f"{spec.name}.params.yaml"
            pfile.write_text(params_yaml(spec.name, spec.ros_parameters(self.graph.use_sim_time)))
            out = open(self.log_dir / f"{spec.name}.log", "wb") if self.quiet else None
            self.procs[spec.name] = subprocess.Popen(
                node_command(spec, pfile), env=env, stdout=out, stderr=subprocess.STDOUT if out else None,
                start_new_session=True,
            )
        return self

    def dead(self) -> dict[str, int]:
        """Nodes that have exited: name → return code."""
        return {n: p.returncode for n, p in self.procs.items() if p.poll() is not None}

    def log(self, name: str) -> str:
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self, timeout: float = 15.0, order: list[str] | None = None) -> dict[str, int]:
        """SIGINT every node (``order`` first, e.g. the policy before the recorder), then SIGKILL."""
        names = list(order or []) + [n for n in self.procs if n not in (order or [])]
        for name in names:
            p = self.procs.get(name)
            if p is not None and p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGINT)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + timeout
        for name in names:
            p = self.procs.get(name)
            if p is None:
                continue
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        if self._lease:
            self._lease.release()
            self._lease = None
        return {n: p.returncode for n, p in self.procs.items()}

    def __enter__(self) -> "GraphRunner":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
