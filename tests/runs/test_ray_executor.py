"""The Ray executor: how slots are laid out on a cluster, a study through a local Ray whose every run is
done exactly once, and a sweep whose driver is killed resuming where it stopped."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml
from typer.testing import CliRunner

from ftcompare.cli import app
from ftcompare.runs.ray_executor import ExecutorError, RaySettings, SlotPlan, plan_slots
from ftcompare.runs.store import EXECUTOR_FILE
from ftcompare.runs.workers import CLAIM_FILE, claimed
from tests.conftest import TINY_BUILTIN, TINY_EVALUATION

pytest.importorskip("ray", reason="the Ray executor's extra (pip install '.[ray]'; CI installs it)")

RUNS = ["full-x1-s0", "full-x10-s0", "lora-r2-x1-s0", "lora-r2-x10-s0"]


def test_gpu_runs_get_a_gpu_each_or_a_share_and_the_cpus_shared_out():
    assert plan_slots(RaySettings(), "auto", cluster_cpus=32, cluster_gpus=2, node_cpus=32) == SlotPlan(2, 1.0, 16, 1)
    # four runs on each GPU: eight slots, four CPUs each, timed under contention of four
    assert plan_slots(RaySettings(gpus_per_run=0.25), "cuda", 32, 2, 32) == SlotPlan(8, 0.25, 4, 4)
    assert plan_slots(RaySettings(gpus_per_run=0.25, slots=3, cpus_per_run=2), "cuda", 32, 2, 32) == SlotPlan(3, 0.25, 2, 4)


def test_cpu_runs_get_one_cpu_each_by_default():
    assert plan_slots(RaySettings(), "auto", cluster_cpus=2, cluster_gpus=0, node_cpus=2) == SlotPlan(2, 0.0, 1, 2)
    assert plan_slots(RaySettings(), "cpu", 16, 2, 16) == SlotPlan(16, 0.0, 1, 16)  # a CPU study leaves the GPUs alone
    assert plan_slots(RaySettings(cpus_per_run=4), "cpu", 16, 0, 8) == SlotPlan(4, 0.0, 4, 2)


@pytest.mark.parametrize(
    "settings, device, gpus, message",
    [
        (RaySettings(gpus_per_run=1.5), "cuda", 2, "not in [0, 1]"),
        (RaySettings(gpus_per_run=1), "auto", 0, "has no GPU"),
        (RaySettings(), "cuda", 0, "device: cuda"),
        (RaySettings(cpus_per_run=64), "cpu", 0, "the largest has 32"),
    ],
)
def test_a_layout_no_node_can_hold_is_refused(settings, device, gpus, message):
    with pytest.raises(ExecutorError, match=message.replace("[", r"\[").replace("]", r"\]")):
        plan_slots(settings, device, cluster_cpus=32, cluster_gpus=gpus, node_cpus=32)


def test_ray_options_without_the_ray_executor_are_refused(tmp_path):
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump(_study()))
    result = CliRunner().invoke(app, ["run", str(config), "--output", str(tmp_path), "--slots", "2"])
    assert result.exit_code == 2
    assert "--slots is a setting of --executor ray" in result.output


def _study() -> dict:
    return {
        "experiment": "shared",
        "base": {"model": "builtin:tiny-code", "builtin": TINY_BUILTIN},
        "task": {"kind": "generated", "n_train": 32, "n_test": 3, "n_ood": 3},
        "methods": [{"kind": "full", "lr": 1e-3}, {"kind": "lora", "rank": [2], "alpha_lr_product": 0.02}],
        "training": {"max_steps": 2, "batch_size": 8, "lr_multipliers": [1, 10], "select_lr_on": "ood"},
        "evaluation": TINY_EVALUATION,
        "analyses": {"spectral": {"k": 2, "epsilon": 0.5}},
    }


def _wait_for_claims_to_lapse(locks, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    for lock in locks:
        while True:
            with claimed(lock) as free:
                if free:
                    break
            assert time.monotonic() < deadline, f"{lock} is still held"
            time.sleep(0.2)


def _jobs_done(experiment) -> list[str]:
    """The jobs each session's slots did (not found done), over every session of executor.json (one cut short recorded none)."""
    sessions = json.loads((experiment / EXECUTOR_FILE).read_text())["sessions"]
    return [job["job"] for session in sessions for job in session.get("jobs", ()) if job["did"]]


@pytest.mark.slow
def test_a_study_on_a_local_ray_does_every_job_exactly_once(tmp_path, tiny_base, cache_dir):
    study = _study()
    study["methods"][1]["rank"] = [3]  # the slots must load the config with the command's override (rank 2)
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump(study))
    command = ["run", str(config), "methods.1.rank=[2]", "--output", str(tmp_path), "--executor", "ray", "--slots", "2"]
    command += ["--cpus-per-run", "1"]
    result = CliRunner().invoke(app, command, env={"FTCOMPARE_CACHE": str(cache_dir)})
    assert result.exit_code == 0, result.output
    experiment = tmp_path / "shared"
    # the base, four selection trainings and the two selected runs, each by one slot
    jobs = _jobs_done(experiment)
    assert sorted(jobs) == sorted(["_base", *(f"select:{run}" for run in RUNS), *jobs[5:]]) and len(jobs) == 7
    metrics = {run: json.loads((experiment / run / "metrics.json").read_text()) for run in RUNS}
    selected = [run for run in RUNS if metrics[run]["selected"]]
    assert sorted(jobs[5:]) == sorted(selected) and {metrics[run]["method"] for run in selected} == {"full", "lora"}
    for run in selected:  # where each ran is recorded with it
        assert metrics[run]["worker"]["executor"] == "ray" and metrics[run]["worker"]["count"] == 2
    session = json.loads((experiment / EXECUTOR_FILE).read_text())["sessions"][0]
    assert session["plan"] == {"slots": 2, "gpus_per_run": 0.0, "cpus_per_run": 1.0, "sharing": 2} and session["failed"] == []
    assert {job["slot"] for job in session["jobs"]} == {0, 1}  # both slots worked
    assert (experiment / "report.md").is_file()
    # a second sweep finds everything done: no job is redone
    again = CliRunner().invoke(app, command, env={"FTCOMPARE_CACHE": str(cache_dir)})
    assert again.exit_code == 0, again.output
    assert len(_jobs_done(experiment)) == 7


@pytest.mark.slow
def test_a_sweep_whose_driver_is_killed_resumes_and_redoes_no_finished_run(tmp_path, tiny_base, cache_dir):
    study = _study()
    study["training"].pop("select_lr_on")  # four runs straight after the base
    # data files named relative to the config, the config relative to the working directory (the driver loads it
    # so, its slots by the resolved path): the runs the first session bound must be the resumed session's runs
    study["task"] = {"kind": "jsonl", "train": "data/train.jsonl", "test": "data/test.jsonl"}
    (tmp_path / "data").mkdir()
    for name, count in (("train", 32), ("test", 3)):
        problems = [
            {
                "task_id": f"{name}{i}",
                "prompt": "def f(x):\n",
                "completion": f"    return x + {i}\n",
                "tests": [f"assert f(0) == {i}"],
            }
            for i in range(count)
        ]
        (tmp_path / "data" / f"{name}.jsonl").write_text("".join(json.dumps(problem) + "\n" for problem in problems))
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study))
    command = [sys.executable, "-m", "ftcompare.cli", "run", "study.yaml", "--output", ".", "--executor", "ray"]
    command += ["--slots", "1"]
    environment = {**os.environ, "FTCOMPARE_CACHE": str(cache_dir)}
    experiment = tmp_path / "shared"
    # the driver and the local Ray it started, killed together (as when the driver's machine goes down)
    driver = subprocess.Popen(
        command, env=environment, cwd=tmp_path, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 300
    while not any((experiment / run / "done.json").is_file() for run in RUNS):
        assert driver.poll() is None and time.monotonic() < deadline, "the driver ended before any run finished"
        time.sleep(0.2)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    _wait_for_claims_to_lapse([experiment / run / CLAIM_FILE for run in RUNS])  # its slots die with their raylet
    finished = {run: (experiment / run / "done.json").read_text() for run in RUNS if (experiment / run / "done.json").is_file()}
    assert 0 < len(finished) < len(RUNS)
    (killed,) = json.loads((experiment / EXECUTOR_FILE).read_text())["sessions"]  # its start, and no end
    assert killed["executor"] == "ray" and killed["started_at"] and "wall_s" not in killed
    resumed = subprocess.run(command, env=environment, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    did = _jobs_done(experiment)
    assert sorted(did) == sorted(run for run in RUNS if run not in finished)  # the rest, each once
    assert all((experiment / run / "done.json").read_text() == record for run, record in finished.items())
    assert all((experiment / run / "metrics.json").is_file() for run in RUNS)
    sessions = json.loads((experiment / EXECUTOR_FILE).read_text())["sessions"]
    assert [session.get("wall_s") is None for session in sessions] == [True, False]  # the resumed one ended
    assert f"cut short, {len(finished)} run(s) finished in it" in (experiment / "report.md").read_text()


class _Slot:
    """A stand-in for StudySlot: fails the job named "bad", else says which process did the job."""

    def do(self, name: str) -> dict:
        if name == "bad":
            raise RuntimeError("CUDA out of memory (a stand-in)")
        return {"job": name, "pid": os.getpid()}

    def pid(self) -> int:
        return os.getpid()


def test_a_slot_whose_job_failed_is_replaced_by_a_fresh_process_and_the_other_jobs_go_on():
    import ray

    from ftcompare.runs.ray_executor import dispatch

    ray.init(num_cpus=1, include_dashboard=False, logging_level="WARNING")
    try:
        slot_class = ray.remote(_Slot).options(num_cpus=1)
        slots = [slot_class.remote()]
        first_pid = ray.get(slots[0].pid.remote())
        outcomes, failed = dispatch(ray, slots, ["bad", "a", "b"], lambda index: slot_class.remote())
    finally:
        ray.shutdown()
    assert [entry["job"] for entry in failed] == ["bad"] and "out of memory" in failed[0]["error"]
    assert [outcome["job"] for outcome in outcomes] == ["a", "b"]
    assert {outcome["pid"] for outcome in outcomes} != {first_pid}  # the later jobs ran in the new process
