"""Several workers on one experiment folder: claims, the barrier, take-over after a crash, and a study
run by two worker processes."""

import json
import subprocess
import sys
import threading
import time

import pytest
import torch
import yaml
from typer.testing import CliRunner

from ftcompare.cli import app
from ftcompare.runs.workers import (
    ALLOCATOR_ENV,
    SHARED_GPU_MEMORY,
    WORKER_ENV,
    Job,
    Worker,
    _with_user_allocator,
    claimed,
    work_through,
    worker_environments,
)
from tests.conftest import TINY_BUILTIN


def test_a_claim_is_exclusive_until_released(tmp_path):
    lock = tmp_path / "run" / ".claim"
    with claimed(lock) as first:
        with claimed(lock) as second:
            assert (first, second) == (True, False)
    with claimed(lock) as again:
        assert again


def test_a_claim_lapses_when_its_holder_dies(tmp_path):
    lock = tmp_path / ".claim"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import fcntl, sys, time\n"
                f"handle = open({str(lock)!r}, 'a'); fcntl.flock(handle, fcntl.LOCK_EX)\n"
                "print('held', flush=True); time.sleep(60)"
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with claimed(lock) as mine:
            assert not mine
    finally:
        holder.kill()
        holder.wait()
    with claimed(lock) as mine:
        assert mine


def _jobs(tmp_path, count, log, pause_s=0.0):
    """`count` jobs that append their index to `log`; the returned set holds the finished ones."""
    finished = set()

    def job(index):
        def do():
            time.sleep(pause_s)
            log.append(index)
            finished.add(index)

        return Job(tmp_path / f"job{index}.claim", lambda: index in finished, do)

    return [job(index) for index in range(count)], finished


def test_two_workers_do_every_job_exactly_once_and_both_wait_for_all(tmp_path):
    log, returned_when = [], []
    jobs, _ = _jobs(tmp_path, 6, log, pause_s=0.02)

    def worker():
        work_through(jobs, poll_s=0.005)
        returned_when.append(len(log))

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(log) == list(range(6))
    assert returned_when == [6, 6]  # neither returned before every job was done


def test_a_job_held_elsewhere_is_waited_for_not_redone(tmp_path):
    log = []
    jobs, finished = _jobs(tmp_path, 2, log)
    other = claimed(jobs[0].lock)
    assert other.__enter__()

    def other_worker_finishes(_seconds):
        finished.add(0)
        other.__exit__(None, None, None)

    assert work_through(jobs, poll_s=0, sleep=other_worker_finishes) == 1
    assert log == [1]


def test_a_job_its_holder_let_go_unfinished_is_taken_over(tmp_path):
    log, sleeps = [], []
    jobs, _ = _jobs(tmp_path, 1, log)
    other = claimed(jobs[0].lock)
    assert other.__enter__()

    def holder_crashes(seconds):
        sleeps.append(seconds)
        other.__exit__(None, None, None)

    assert work_through(jobs, poll_s=0.5, sleep=holder_crashes) == 1
    assert log == [0] and sleeps == [0.5]


def test_workers_get_one_gpu_each_round_robin_or_a_share_of_the_cpu():
    on_gpus = worker_environments(3, gpus=2, cpu_threads=16)
    assert [e["CUDA_VISIBLE_DEVICES"] for e in on_gpus] == ["0", "1", "0"]
    assert [e[WORKER_ENV] for e in on_gpus] == ["0/3/2", "1/3/1", "2/3/2"]
    # only the workers that share GPU 0 get the allocator setting that suits a memory cap
    assert [e.get(ALLOCATOR_ENV) for e in on_gpus] == ["expandable_segments:True", None, "expandable_segments:True"]
    # each gets its share of the host's cores, for its CPU-side work
    assert [e["OMP_NUM_THREADS"] for e in on_gpus] == ["5", "5", "5"]
    on_cpu = worker_environments(2, gpus=0, cpu_threads=5)
    assert [(e["OMP_NUM_THREADS"], e[WORKER_ENV]) for e in on_cpu] == [("2", "0/2/2"), ("2", "1/2/2")]
    assert "CUDA_VISIBLE_DEVICES" not in on_cpu[0]


def test_workers_sharing_a_gpu_cap_their_memory_to_their_share(monkeypatch):
    caps = []
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda fraction, device: caps.append((fraction, device)))
    Worker(0, 3, 3).cap_gpu_memory(torch.device("cuda"))  # torch wants the device's index, not an indexless device
    Worker(1, 2, 1).cap_gpu_memory(torch.device("cuda"))  # alone on its GPU: no cap
    Worker(0, 2, 2).cap_gpu_memory(torch.device("cpu"))
    assert caps == [(pytest.approx(SHARED_GPU_MEMORY / 3), 0)]
    assert Worker(0, 3, 3).record(torch.device("cuda"))["gpu_memory_fraction"] == pytest.approx(SHARED_GPU_MEMORY / 3)
    assert Worker(1, 2, 1).record(torch.device("cuda"))["gpu_memory_fraction"] == 1.0
    assert "gpu_memory_fraction" not in Worker(0, 2, 2).record(torch.device("cpu"))


def test_a_users_allocator_setting_wins_over_the_workers_default(monkeypatch):
    environment = worker_environments(2, gpus=1, cpu_threads=4)[0]
    monkeypatch.delenv(ALLOCATOR_ENV, raising=False)
    assert _with_user_allocator(environment)[ALLOCATOR_ENV] == "expandable_segments:True"
    monkeypatch.setenv(ALLOCATOR_ENV, "max_split_size_mb:128")
    merged = _with_user_allocator(environment)
    assert merged[ALLOCATOR_ENV] == "max_split_size_mb:128" and merged["CUDA_VISIBLE_DEVICES"] == "0"


def test_a_worker_reads_its_identity_from_the_environment(monkeypatch):
    monkeypatch.delenv(WORKER_ENV, raising=False)
    assert Worker.from_environment() is None
    monkeypatch.setenv(WORKER_ENV, "1/3/2")
    worker = Worker.from_environment()
    assert worker == Worker(1, 3, 2) and worker.label == "worker 2/3"


@pytest.mark.slow
def test_two_worker_processes_share_a_study_with_learning_rate_selection(tmp_path, tiny_base, cache_dir):
    study = {
        "experiment": "shared",
        "base": {"model": "builtin:tiny-code", "builtin": TINY_BUILTIN},
        "task": {"kind": "generated", "n_train": 32, "n_test": 3, "n_ood": 3},
        "methods": [{"kind": "full", "lr": 1e-3}, {"kind": "lora", "rank": [2], "alpha_lr_product": 0.02}],
        "training": {"max_steps": 2, "batch_size": 8, "lr_multipliers": [1, 10], "select_lr_on": "ood"},
        "evaluation": {
            "n_samples": 0,
            "k": [1],
            "max_new_tokens": 6,
            "latency": None,
            "forgetting": {"n_chunks": 2, "chunk_tokens": 32},
        },
        "analyses": {"spectral": {"k": 2, "epsilon": 0.5}},
    }
    config_path = tmp_path / "study.yaml"
    config_path.write_text(yaml.safe_dump(study))
    result = CliRunner().invoke(
        app, ["run", str(config_path), "--output", str(tmp_path), "--workers", "2"], env={"FTCOMPARE_CACHE": str(cache_dir)}
    )
    assert result.exit_code == 0, result.output
    assert "2 workers share the CPU" in result.output
    experiment = tmp_path / "shared"
    runs = ["full-x1-s0", "full-x10-s0", "lora-r2-x1-s0", "lora-r2-x10-s0"]
    metrics = {run: json.loads((experiment / run / "metrics.json").read_text()) for run in runs}
    assert all((experiment / run / "done.json").is_file() for run in runs)
    selected = [run for run in runs if metrics[run]["selected"]]
    assert len(selected) == 2 and {metrics[run]["method"] for run in selected} == {"full", "lora"}
    assert all(metrics[run]["worker"]["count"] == 2 for run in selected)
    assert json.loads((experiment / "_base" / "metrics.json").read_text())["worker"]["count"] == 2
    assert (experiment / "report.md").is_file()
    environment = json.loads((experiment / "study.json").read_text())["environment"]
    assert environment["workers"] == "2 (2 on this device)"


def test_workers_on_cuda_without_a_gpu_fail_before_any_worker_starts(tmp_path):
    study = {
        "experiment": "nogpu",
        "device": "cuda",
        "base": {"model": "builtin:tiny-code", "builtin": TINY_BUILTIN},
        "task": {"kind": "generated", "n_train": 8, "n_test": 2, "n_ood": 2},
        "methods": [{"kind": "full", "lr": 1e-3}],
        "training": {"max_steps": 1},
    }
    config_path = tmp_path / "study.yaml"
    config_path.write_text(yaml.safe_dump(study))
    result = CliRunner().invoke(app, ["run", str(config_path), "--output", str(tmp_path), "--workers", "2"])
    assert result.exit_code == 2 and "device: cuda was asked for, but no GPU is visible" in result.output
    assert not (tmp_path / "nogpu" / "_base" / "eval.json").exists()
