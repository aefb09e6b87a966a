"""Several workers on one experiment folder (the Ray executor's slots, runs/ray_executor.py): each claims
a job (a run, the base evaluation) with a lock file before doing it, so no job is done twice, whoever
asks for it: another slot, another sweep started on the same folder, a retried task.

A claim is an exclusive `flock` on the job's lock file. The operating system drops it when its holder
exits, however it exits, so a job whose worker crashed is free for the next worker (or the next sweep).
`flock` is exact on one machine's file system; across machines it holds where the shared file system
honours it (NFSv4 and Lustre do), and Ray's scheduling gives each job to one slot in any case.
"""

from __future__ import annotations

import fcntl
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

CLAIM_FILE = ".claim"
ALLOCATOR_ENV = "PYTORCH_CUDA_ALLOC_CONF"
# Workers sharing a GPU each cap their allocator at this part of the memory over their count, the rest left
# for the CUDA contexts: uncapped, one worker's cache of freed blocks starves the others (seen: out of memory
# with four workers on one H200, one of them holding 50 GiB).
SHARED_GPU_MEMORY = 0.95


@contextmanager
def claimed(lock: Path) -> Iterator[bool]:
    """Try to claim `lock` without waiting: yields True while this holder has it, False when another has."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@dataclass(frozen=True)
class Job:
    """One unit of a study that exactly one worker does: `do` runs it, `done` says whether it has been."""

    lock: Path
    done: Callable[[], bool]
    do: Callable[[], None]


def work_through(jobs: Sequence[Job], poll_s: float = 2.0, sleep: Callable[[float], None] = time.sleep) -> int:
    """Do every job not done yet and not claimed by another worker; return once all are done, waiting for
    the ones others hold (a barrier). A job whose holder let go unfinished is taken over. Returns how many
    jobs this worker did."""
    did = 0
    pending = list(jobs)
    while pending:
        held_elsewhere = []
        for job in pending:
            if job.done():
                continue
            with claimed(job.lock) as mine:
                if not mine:
                    held_elsewhere.append(job)
                elif not job.done():  # another worker may have finished it between the check and the claim
                    job.do()
                    did += 1
        pending = [job for job in held_elsewhere if not job.done()]
        if pending:
            sleep(poll_s)
    return did


@dataclass(frozen=True)
class Worker:
    """Which of the study's workers this process is, and how many workers share its device (GPU or CPU):
    above one, its timings were measured under contention."""

    index: int
    count: int
    sharing: int
    placement: dict = field(default_factory=dict)  # where the executor put it (Ray: node, GPU ids)

    @property
    def label(self) -> str:
        return f"worker {self.index + 1}/{self.count}"

    @property
    def gpu_memory_fraction(self) -> float:
        return 1.0 if self.sharing == 1 else SHARED_GPU_MEMORY / self.sharing

    def record(self, device: torch.device) -> dict:
        return {
            "index": self.index,
            "count": self.count,
            "workers_on_this_device": self.sharing,
            **self.placement,
            **({"gpu_memory_fraction": self.gpu_memory_fraction} if device.type == "cuda" else {}),
        }

    def cap_gpu_memory(self, device: torch.device) -> None:
        """On a GPU shared with other workers, keep this process's allocator to its share of the memory."""
        if device.type == "cuda" and self.sharing > 1:
            torch.cuda.set_per_process_memory_fraction(self.gpu_memory_fraction, device.index or 0)
