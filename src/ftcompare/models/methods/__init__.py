"""Fine-tuning methods by kind: the registry (`registry.py`), one module per built-in kind, and the verbs the
stages use (`apply_method`, `save_tuned`, `load_tuned`, `method_record`), which dispatch on the run's kind.
Importing the package registers the built-in kinds; a method defined elsewhere registers itself with
`@register_method`. Nothing here imports torch or PEFT until a verb is called."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

# isort: off  (registration order is the order kinds are listed in)
from ftcompare.models.methods import dora, full, lora, pissa, qlora, rslora  # noqa: F401

# isort: on
from ftcompare.models.methods.registry import METHODS, Method, method_for, register_method

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

    from ftcompare.matrix import RunSpec

__all__ = ["METHODS", "Method", "apply_method", "load_tuned", "method_for", "method_record", "register_method", "save_tuned"]


def apply_method(model: PreTrainedModel, run: RunSpec, layers: list[int] | None = None) -> torch.nn.Module:
    """The model to train for `run`: its method's `build` (full FT: the base, every parameter trainable; an
    adapter: a PEFT wrapper around the base the method prepares)."""
    return method_for(run.method).build(model, run, layers)


def save_tuned(model: torch.nn.Module, directory: Path, run: RunSpec) -> None:
    """Save what `run`'s method trained (the whole model, or a standard PEFT adapter)."""
    method_for(run.method).save(model, directory, run)


def load_tuned(
    base_model: PreTrainedModel, run: RunSpec, directory: Path, layers: list[int] | None = None, *, trainable: bool = False
) -> torch.nn.Module:
    """The inverse of `save_tuned`: the tuned model on the fresh `base_model`, adapters unmerged."""
    return method_for(run.method).load(base_model, run, directory, layers, trainable=trainable)


def method_record(run: RunSpec, dtype: torch.dtype | None = None) -> dict:
    """What `run`'s method did, for train.json."""
    return method_for(run.method).record(run, dtype)
