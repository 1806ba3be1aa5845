"""Joining or starting a Ray cluster, and running a stage of resumable tasks on it.

`session(address)` joins the cluster at `address` (left running afterwards), or starts a local
one for the call (stopped in a `finally`, so no raylet outlives the command). A local cluster's
object store is capped (`DATACURE_RAY_OBJECT_STORE_MB`, default 1024 MB): workers pass file
paths and small arrays, not data, so a small store is enough and the machine keeps its memory.
When Ray is already initialised in this process (a notebook, a test fixture), that cluster is
used as it is.

`run_stage` runs one task per output file. A task writes its output and then its meta file
(`shards.write_meta`), both atomically; a task whose meta exists is not run again, which is
what makes an interrupted run resume shard by shard. Ray retries a task whose worker died
(`max_retries`); an exception raised by the task's code is not retried and fails the run.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...store.errors import MissingDependencyError
from .. import shards

OBJECT_STORE_MB = int(os.environ.get("DATACURE_RAY_OBJECT_STORE_MB", "1024"))
MAX_RETRIES = 3
FAULT_FILE = "fault"  # the test hook of `fault_point`, in the `.shards` folder


def require_ray():
    try:
        import ray
    except ImportError as exc:
        raise MissingDependencyError(
            "--engine ray needs Ray, which is not installed",
            'pip install "datacure[ray]" (or pip install "ray[data]")',
        ) from exc
    return ray


@dataclass
class ClusterInfo:
    address: str | None
    started: bool
    nodes: int = 1
    cpus: float = 1.0
    gpus: float = 0.0
    notes: list[str] = field(default_factory=list)


@contextlib.contextmanager
def session(
    address: str | None = None,
    num_cpus: int | None = None,
    object_store_memory: int | None = None,
) -> Iterator[ClusterInfo]:
    """A connected Ray cluster for the duration of the block."""
    ray = require_ray()
    started = False
    if not ray.is_initialized():
        os.environ.setdefault("RAY_DEDUP_LOGS", "0")
        kwargs: dict[str, Any] = {
            "include_dashboard": False,
            "log_to_driver": bool(os.environ.get("DATACURE_RAY_LOGS")),
            "configure_logging": False,
            # a task owns one CPU (task_threads): polars' pool, sized at import, follows
            "runtime_env": {"env_vars": {"POLARS_MAX_THREADS": "1"}},
        }
        if address:
            ray.init(address=address, **kwargs)
        else:
            ncpu = num_cpus or int(os.environ.get("DATACURE_RAY_NUM_CPUS", "0") or 0) or None
            store_mb = object_store_memory or OBJECT_STORE_MB * 2**20
            ray.init(num_cpus=ncpu, object_store_memory=int(store_mb), **kwargs)
        started = True
    try:
        res = ray.cluster_resources()
        nodes = len([n for n in ray.nodes() if n.get("Alive")])
        yield ClusterInfo(
            address=address,
            started=started and not address,
            nodes=nodes,
            cpus=float(res.get("CPU", 1.0)),
            gpus=float(res.get("GPU", 0.0)),
        )
    finally:
        if started:
            ray.shutdown()


def fault_point(stage: str, index: int, out: str | os.PathLike) -> None:
    """The test hook: a file `<db>.shards/fault` holding `STAGE:INDEX[:kill|raise]` makes task
    INDEX of STAGE kill its own worker process (the first time only: `fault.killed`, holding
    the killed process id, remembers it) or raise. A no-op without the file."""
    root = next((p for p in Path(out).parents if p.name.endswith(shards.SUFFIX)), None)
    spec_file = root / FAULT_FILE if root is not None else None
    if spec_file is None or not spec_file.exists():
        return
    parts = spec_file.read_text().strip().split(":")
    if len(parts) < 2 or parts[0] != stage or int(parts[1]) != index:
        return
    action = parts[2] if len(parts) > 2 else "kill"
    if action == "raise":
        raise RuntimeError(f"injected fault in {stage} task {index}")
    marker = spec_file.with_name(FAULT_FILE + ".killed")  # once per fault file
    if marker.exists():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(str(os.getpid()))
    os.kill(os.getpid(), signal.SIGKILL)


@dataclass
class StageReport:
    name: str
    tasks: int
    resumed: int
    seconds: float
    phases: dict = field(default_factory=dict)  # task seconds by phase, summed over tasks


def run_stage(
    name: str,
    fn: Callable,
    jobs: list[tuple[str, tuple]],
    progress: Callable[[str], None] | None = None,
    num_cpus: float = 1,
    memory: int | None = None,
    reports: list | None = None,
) -> list[dict]:
    """Run `fn(out, *args)` as a Ray task for each `(out, args)` whose meta file is missing;
    return every task's meta, in order. `fn` writes its output and meta itself."""
    ray = require_ray()
    t0 = time.perf_counter()
    metas: list[dict | None] = [shards.read_meta(out) for out, _ in jobs]
    pending = [i for i, m in enumerate(metas) if m is None]
    if pending:
        opts: dict[str, Any] = {"num_cpus": num_cpus, "max_retries": MAX_RETRIES}
        if memory:
            opts["memory"] = int(memory)
        remote = ray.remote(fn).options(**opts)
        refs = {remote.remote(jobs[i][0], *jobs[i][1]): i for i in pending}
        done = 0
        waiting = list(refs)
        try:
            while waiting:
                ready, waiting = ray.wait(waiting, num_returns=1)
                for r in ready:
                    metas[refs[r]] = get(r)
                    done += 1
                if progress and (done == len(pending) or done % max(1, len(pending) // 10) == 0):
                    progress(f"{name}: {done}/{len(pending)} tasks")
        except BaseException:
            # a failed task (or an interrupt) stops the stage: the others are cancelled and
            # waited for, so none writes after the caller has cleaned up
            for r in waiting:
                ray.cancel(r, force=True)
            if waiting:
                ray.wait(waiting, num_returns=len(waiting), timeout=60)
            raise
    if reports is not None:
        reports.append(
            StageReport(name, len(jobs), len(jobs) - len(pending), time.perf_counter() - t0)
        )
    return [m if m is not None else {} for m in metas]


def put(obj):
    """`ray.put`: an argument every task of a stage shares, stored once."""
    return require_ray().put(obj)


def get(ref):
    """`ray.get`, with a user's error (InputError and kin) raised as itself, not wrapped."""
    ray = require_ray()
    from ...store.errors import DatacureError

    try:
        return ray.get(ref)
    except ray.exceptions.OutOfDiskError as exc:
        raise DatacureError(
            "Ray refused to store a task's result: the disk holding its temporary folder is "
            f"over Ray's capacity threshold ({str(exc).splitlines()[0][:200]})",
            "free disk space (the run's work folder, `<db>.shards/work`, holds the vectors "
            "twice while the graph is built), start the cluster with a --temp-dir on a larger "
            "disk, or, where the disk is shared and what is free is enough, raise "
            "RAY_local_fs_capacity_threshold (0.95 of the disk's whole size by default)",
        ) from None
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, DatacureError):
            raise cause from None
        raise


def task_threads(n: int = 1) -> None:
    """A task owns `n` CPUs: FAISS, BLAS and datacure's kNN use that many threads."""
    os.environ["DATACURE_THREADS"] = str(n)
    with contextlib.suppress(Exception):
        from ...store.knn_exact import load_faiss

        load_faiss().omp_set_num_threads(n)
    with contextlib.suppress(Exception):
        from threadpoolctl import threadpool_limits

        threadpool_limits(n)
