"""What every stage of a study shares: the device it runs on, the environment it records, and the frozen
`StudyContext` (resolved once by `ftcompare.study.prepare`, read by the stages, changed by none).

Writes no record itself; `environment()` is the part of `study.json` (and of `ftcompare eval`'s
`metrics.json`) that names the libraries and hardware a result was measured with.
"""

from __future__ import annotations

import platform
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import torch

from ftcompare import __version__
from ftcompare.analyze.spectral import SpectrumCache
from ftcompare.config import StudyConfig
from ftcompare.data.problems import Problem, TaskSplits
from ftcompare.models.base import BaseSource
from ftcompare.runs.workers import Worker

if TYPE_CHECKING:
    from ftcompare.analyze.stage import Probe
    from ftcompare.evaluate.vllm_engine import EnginePool
    from ftcompare.train.distributed import Ranks

T = TypeVar("T")


@dataclass(frozen=True, kw_only=True)
class StudyContext:
    """What every run of a study shares: resolved once, read by the stages."""

    config: StudyConfig
    device: torch.device
    base: BaseSource
    tokenizer: object
    task: TaskSplits  # every evaluation suite
    experiment: Path
    stages: tuple[tuple[str, TaskSplits], ...] = ()  # the tasks trained in order (one unless the study is a sequence)
    heldout: dict[str, torch.Tensor] = field(
        default_factory=dict
    )  # forgetting corpora by name, the headline one first (empty: no forgetting)
    base_weights: dict[str, torch.Tensor] = field(default_factory=dict)
    spectra: SpectrumCache | None = None
    probes: dict[str, Probe] = field(default_factory=dict)
    layer_scores: list[float] | None = None  # per decoder layer, the base's input-output CKA (layer-wise LoRA)
    worker: Worker | None = None  # which of several workers on this experiment folder this process is
    engines: EnginePool | None = None  # the vLLM engine (evaluation.backend: vllm), shared by every run of this process
    ranks: Ranks | None = None  # the processes of a distributed launch, which train each run together (None: this one alone)

    @property
    def writes(self) -> bool:
        """Whether this process writes the run store (and evaluates): rank 0 of a distributed launch, or the only one."""
        return self.ranks is None or self.ranks.main

    def on_rank_0(self, compute: Callable[[], T]) -> T:
        """`compute()`, run by rank 0 alone under a distributed launch, its result handed to every rank (the
        others wait for it); for a process alone, simply `compute()`."""
        if self.ranks is None:
            return compute()
        return self.ranks.agree(compute() if self.ranks.main else None)

    @property
    def primary_problems(self) -> tuple[Problem, ...]:
        return self.task.suites[self.config.primary_suite]

    @property
    def headline_heldout(self) -> torch.Tensor:
        """The first forgetting corpus: the one the tables' forgetting column and the causal test report."""
        return next(iter(self.heldout.values()))


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: cuda was asked for but torch sees no CUDA device")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def environment(worker: Worker | None = None, ranks: Ranks | None = None) -> dict:
    import peft
    import transformers

    return {
        "ftcompare": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "cpu_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        **({"workers": f"{worker.count} ({worker.sharing} on this device)"} if worker else {}),
        **({"distributed": f"{ranks.count} processes, {ranks.strategy}"} if ranks else {}),
    }
