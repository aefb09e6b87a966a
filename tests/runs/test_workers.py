"""Several workers on one experiment folder: claims, the barrier, take-over after a crash, the memory
cap of workers sharing a GPU (a study on Ray's slots: tests/runs/test_ray_executor.py)."""

import subprocess
import sys
import threading
import time

import pytest
import torch

from ftcompare.runs.workers import SHARED_GPU_MEMORY, Job, Worker, claimed, work_through


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
