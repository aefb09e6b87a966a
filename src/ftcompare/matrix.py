"""The run matrix: a study config expanded into its runs, each a method at one point of its sweep with one
data fraction, learning-rate multiplier and seed, and the run ids that name them."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Literal

from pydantic import field_validator

from ftcompare.models.methods import method_for
from ftcompare.schema import Strict, as_list

if TYPE_CHECKING:
    from ftcompare.config import StudyConfig


class RunSpec(Strict):
    """One cell of the run matrix: a method at one rank, alpha, layer fraction, data fraction and seed,
    with its resolved learning rate."""

    run_id: str
    method: str  # a registered method kind (ftcompare.models.methods)
    seed: int
    lr: float
    rank: int | None = None
    alpha: float | None = None
    target_modules: list[str] | Literal["all-linear"] | None = None
    dropout: float = 0.0
    layer_fraction: float | None = None  # None: every layer
    data_fraction: float = 1.0
    lr_multiplier: float = 1.0  # lr is the method's rate times this

    @field_validator("method")
    @classmethod
    def _registered(cls, value: str) -> str:
        method_for(value)  # raises for an unknown kind, listing the known ones
        return value

    @property
    def is_adapter(self) -> bool:
        return method_for(self.method).is_adapter

    @property
    def scaling(self) -> float | None:
        """The factor the low-rank update is multiplied by: alpha/r, or alpha/√r for rsLoRA (None: no adapter)."""
        return method_for(self.method).scaling(self)

    @property
    def label(self) -> str:
        label = method_for(self.method).label + (f" r={self.rank}" if self.rank is not None else "")
        if self.alpha is not None and self.rank is not None and self.alpha != 2 * self.rank:
            label += f" α={self.alpha:g}"
        if self.layer_fraction is not None:
            label += f" {self.layer_fraction:.0%} layers"
        if self.data_fraction != 1:
            label += f" {self.data_fraction:.0%} data"
        if self.lr_multiplier != 1:
            label += f" lr×{self.lr_multiplier:g}"
        return label


# the run-id tag of each sweep axis, as `expand` writes it
RUN_ID_TAGS = {
    "rank": r"-r\d+(?=-|$)",
    "alpha": r"-a[0-9.e+]+(?=-|$)",
    "layer_fraction": r"-l[0-9.]+(?=-|$)",
    "data_fraction": r"-d[0-9.e+]+(?=-|$)",
    "lr_multiplier": r"-x[0-9.e+]+(?=-|$)",
}


def run_id_without(run_id: str, *axes: str) -> str:
    """The run id without its seed and without the tags of `axes`: the runs it names differ only along them
    (`lora-r4-a16-x10-s0` without rank → `lora-a16-x10`)."""
    group = re.sub(r"-s\d+$", "", run_id)
    for axis in axes:
        group = re.sub(RUN_ID_TAGS[axis], "", group, count=1)
    return group


def selection_group(run_id: str) -> str:
    """The runs a learning rate is chosen among: those that differ only in the lr multiplier and the seed."""
    return run_id_without(run_id, "lr_multiplier")


def best_multipliers(scores: Iterable[tuple[str, float, float]]) -> dict[str, float]:
    """Learning-rate selection's rule, from (run id, lr multiplier, selection pass@1) triples: per selection
    group, the multiplier with the best mean score over seeds (ties: the smaller rate)."""
    by_group: dict[str, dict[float, list[float]]] = {}
    for run_id, multiplier, score in scores:
        by_group.setdefault(selection_group(run_id), {}).setdefault(multiplier, []).append(score)
    return {group: max(sorted(by_lr), key=lambda m: sum(by_lr[m]) / len(by_lr[m])) for group, by_lr in by_group.items()}


def expand(config: StudyConfig) -> list[RunSpec]:
    """The run matrix: methods × data fractions × lr multipliers × seeds × each method's own sweep (LoRA:
    ranks × alphas × layer fractions), in config order.

    Run ids name only the axes that vary: `full-s0`, `lora-r4-s0`, `lora-r4-a16-s0` (an alpha sweep),
    `lora-r4-l50-s0` (half the layers), `lora-r4-d0.25-s0` (a quarter of the data), `lora-r4-x10-s0`
    (ten times the learning rate)."""
    multipliers = config.training.lr_multipliers
    runs: list[RunSpec] = []
    for method in config.methods:
        name = method.name or method.kind
        fractions = as_list(method.data_fraction) if method.data_fraction is not None else config.training.data_fractions
        data_axis = fractions != [1.0]
        for data_fraction, multiplier, seed in itertools.product(fractions, multipliers, config.seeds):
            tags = (f"-d{data_fraction:g}" if data_axis else "") + (f"-x{multiplier:g}" if multipliers != [1.0] else "")
            for tag, point in method.sweep():
                runs.append(
                    RunSpec(
                        run_id=f"{name}{tag}{tags}-s{seed}",
                        method=method.kind,
                        seed=seed,
                        data_fraction=data_fraction,
                        lr_multiplier=multiplier,
                        **{**point, "lr": point["lr"] * multiplier},
                    )
                )
    return runs
