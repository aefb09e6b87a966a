"""The run matrix on Ray (`ftcompare run CONFIG --executor ray [--address ADDR]`).

The driver (this module, in the `ftcompare run` process) starts `slots` Ray actors, each holding the
resources one run needs (a GPU or a share of one, CPUs, memory), and hands them the study's jobs by
name: first the base's evaluation and every learning-rate selection score (the barrier), then the runs.
An actor is a `StudySlot`: one process that loads the study's shared context once (the base, the data,
the static decoder's CUDA graphs) and does one job after another in it, each through the same claimed
`Job` as a sequential study (runs/workers.py), so a job is never done twice and a finished run is never
redone. A slot whose process dies is restarted by Ray and its job retried (`max_retries`); a job that
fails with an error is reported, the others go on, and running the command again resumes. Where the
slots run is recorded in each run's metrics (`worker`) and each session in `executor.json`.

The config file (each slot loads it, with the command's overrides) and the run store must be paths every node
sees; on one machine, a local Ray (started here) is the whole cluster. Ray is an optional extra (`pip install
'ftcompare[ray]'`): asked for without it, the command stops in one line.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from ftcompare.config import StudyConfig, load_config
from ftcompare.runs.store import begin_session, end_session, experiment_dir
from ftcompare.runs.workers import ALLOCATOR_ENV, Worker, work_through


class ExecutorError(RuntimeError):
    """The executor cannot run the study as asked (Ray missing, resources that no node has, failed jobs)."""


@dataclass(frozen=True)
class RaySettings:
    """How the study is laid out on the cluster: what `ftcompare run --executor ray` was given."""

    address: str | None = None  # None: a local Ray on this machine, started and stopped here
    gpus_per_run: float | None = None  # None: 1 where the study runs on a GPU and the cluster has one, else 0
    cpus_per_run: float | None = None  # None: the CPUs shared out over the slots (GPU runs), or 1 (CPU runs)
    memory_gb_per_run: float | None = None  # host memory Ray reserves for each slot (None: none reserved)
    slots: int | None = None  # runs at once (None: as many as the resources hold)
    max_retries: int = 2  # restarts of a slot whose process died, each retrying the job it held


@dataclass(frozen=True)
class SlotPlan:
    slots: int
    gpus_per_run: float
    cpus_per_run: float
    sharing: int  # slots on one device (GPU, or a node's CPUs): above one, timings are measured under contention


def plan_slots(settings: RaySettings, device: str, cluster_cpus: float, cluster_gpus: float, node_cpus: float) -> SlotPlan:
    """How many slots, each with what, from the cluster's totals (`node_cpus`: the largest node's CPUs, the
    most one slot can hold). Refuses a layout no node can hold, which Ray would otherwise wait on forever."""
    gpus = settings.gpus_per_run
    if gpus is None:
        gpus = 1.0 if device != "cpu" and cluster_gpus >= 1 else 0.0
    if gpus < 0 or gpus > 1:
        raise ExecutorError(f"--gpus-per-run: {gpus:g} is not in [0, 1] (a run is one process on one GPU or a share of one)")
    if gpus and cluster_gpus == 0:
        raise ExecutorError(f"--gpus-per-run {gpus:g}: the Ray cluster has no GPU")
    if device == "cuda" and not gpus:
        raise ExecutorError("device: cuda, but the runs get no GPU (the Ray cluster has none, or --gpus-per-run 0)")
    if gpus:
        slots = settings.slots or max(1, math.floor(cluster_gpus / gpus + 1e-9))
        cpus = settings.cpus_per_run or max(1, min(node_cpus, math.floor(cluster_cpus / slots)))
        sharing = max(1, math.floor(1 / gpus + 1e-9))
    else:
        cpus = settings.cpus_per_run or 1
        slots = settings.slots or max(1, math.floor(cluster_cpus / cpus))
        sharing = max(1, min(slots, math.floor(node_cpus / cpus)))
    if cpus > node_cpus:
        raise ExecutorError(f"--cpus-per-run {cpus:g}: no node of the Ray cluster has that many (the largest has {node_cpus:g})")
    return SlotPlan(slots=slots, gpus_per_run=gpus, cpus_per_run=cpus, sharing=sharing)


class StudySlot:
    """One Ray actor: a process that does the study's jobs it is handed, in the context it loads once."""

    def __init__(self, config_path: str, overrides: Sequence[str], output: str, index: int, count: int, sharing: int):
        import ray

        if sharing > 1:  # slots sharing a GPU each cap their allocator: expandable segments fragment less under a cap
            os.environ.setdefault(ALLOCATOR_ENV, "expandable_segments:True")
        self.config = load_config(Path(config_path), overrides)
        placement = {
            "executor": "ray",
            "node": ray.util.get_node_ip_address(),
            "gpu_ids": [str(gpu) for gpu in ray.get_gpu_ids()],
        }
        self.worker = Worker(index, count, sharing, placement)
        self.output = Path(output)
        self.context = None

    def _context(self):
        from ftcompare.study import open_study

        if self.context is None:
            self.context = open_study(self.config, self.output, self.worker)
        return self.context

    def do(self, name: str) -> dict:
        """Do the job `name` unless it is done (or held by another until it is); what happened."""
        from ftcompare.study import study_job

        started = time.perf_counter()
        did = work_through([study_job(name, self._context())])
        return {
            "job": name,
            "did": bool(did),
            "slot": self.worker.index,
            **self.worker.placement,
            "wall_s": time.perf_counter() - started,
        }

    def second_jobs(self) -> list[str]:
        from ftcompare.study import second_jobs

        return second_jobs(self._context())


def import_ray():
    try:
        import ray
    except ImportError:
        raise ExecutorError("--executor ray: Ray is not installed (pip install 'ftcompare[ray]')") from None
    return ray


def run_on_ray(config_path: Path, overrides: Sequence[str], config: StudyConfig, output: Path, settings: RaySettings) -> Path:
    """Run the study's jobs on Ray's slots; the experiment folder once every job is done. Each session
    (slots, placement, which slot did which job) is added to the experiment's `executor.json`."""
    from ftcompare.study import first_jobs

    ray = import_ray()
    experiment = experiment_dir(output, config.experiment)
    local = settings.address is None
    ray.init(address=settings.address, include_dashboard=False if local else None, logging_level="WARNING")
    session = {
        "executor": "ray",
        "ray": ray.__version__,
        "address": settings.address or "local",
        "started_at": datetime.now(timezone.utc).isoformat(),
    }
    started = time.perf_counter()
    index = begin_session(experiment, session)
    try:
        resources = ray.cluster_resources()
        node_cpus = max(node["Resources"].get("CPU", 0) for node in ray.nodes() if node["Alive"])
        plan = plan_slots(settings, config.device, resources.get("CPU", 0), resources.get("GPU", 0), node_cpus)
        session.update(
            settings=asdict(settings),
            plan=asdict(plan),
            cluster={"cpus": resources.get("CPU", 0), "gpus": resources.get("GPU", 0)},
        )
        slot_class = ray.remote(StudySlot).options(
            num_cpus=plan.cpus_per_run,
            num_gpus=plan.gpus_per_run,
            memory=int(settings.memory_gb_per_run * 2**30) if settings.memory_gb_per_run else None,
            max_restarts=settings.max_retries,
            max_task_retries=settings.max_retries,
        )
        args = (str(Path(config_path).resolve()), list(overrides), str(Path(output).resolve()))

        def spawn(index: int):
            return slot_class.remote(*args, index, plan.slots, plan.sharing)

        slots = [spawn(index) for index in range(plan.slots)]
        session["jobs"], failed = dispatch(ray, slots, first_jobs(config), spawn)
        if not failed:  # the runs need the base's evaluation and the selection scores
            runs = ray.get(slots[0].second_jobs.remote())
            done, failed = dispatch(ray, slots, runs, spawn)
            session["jobs"] += done
        session["failed"] = failed
    finally:
        session["finished_at"] = datetime.now(timezone.utc).isoformat()
        session["wall_s"] = time.perf_counter() - started
        ray.shutdown()
        end_session(experiment, index, session)
    if failed:
        listed = "; ".join(f"{entry['job']}: {entry['error']}" for entry in failed)
        raise ExecutorError(
            f"{len(failed)} job(s) failed ({listed}); finished runs are kept, and running the same command again resumes"
        )
    return experiment


def dispatch(ray, slots: list, names: Sequence[str], spawn) -> tuple[list[dict], list[dict]]:
    """Hand each job to the next free slot until all are done; (what each did, the jobs that failed). A slot
    whose job failed is replaced by a fresh process (`spawn(index)`): the failure may leave memory held (an
    out-of-memory error's tensors stayed allocated and failed every later job of its slot, seen on an H200).
    A slot whose process died past its restarts is not handed another job."""
    pending, running, idle = list(names), {}, list(range(len(slots)))
    outcomes, failed = [], []
    while pending or running:
        while idle and pending:
            index, name = idle.pop(), pending.pop(0)
            running[slots[index].do.remote(name)] = (index, name)
        if not running:  # every slot died: what is left cannot run
            failed += [{"job": name, "error": "no slot left alive"} for name in pending]
            break
        [ready], _ = ray.wait(list(running), num_returns=1)
        index, name = running.pop(ready)
        try:
            outcomes.append(ray.get(ready))
            idle.append(index)
        except ray.exceptions.RayActorError as error:
            failed.append({"job": name, "error": f"its slot died: {error}".splitlines()[0]})
        except ray.exceptions.RayTaskError as error:
            failed.append({"job": name, "error": str(error.cause)[:500]})
            ray.kill(slots[index])
            slots[index] = spawn(index)
            idle.append(index)
    return outcomes, failed
