"""What a fine-tuning method is, and the registry every list of method kinds is read from.

A method kind is one module: a config class (its YAML section under `methods:`, with `kind: Literal[...]`
and a `sweep()` that lists the runs it expands to) and a `Method` subclass registered with
`@register_method`, overriding only what differs from a PEFT adapter: how it builds its PEFT config, the
base it applies to (QLoRA's 4-bit base), its scaling rule, what it records, the weights the spectral
analysis compares it with, how it is saved and loaded (every kind merges through PEFT's merge_and_unload, 4-bit
bases included: `ftcompare.models.weights.merge_adapter`). The config's union of method sections, the
run spec's kinds and the report's labels all come from here, so adding VeRA or LoRA+ is one file.

This module and the kinds' modules import neither torch nor PEFT at import time (the config loads without
them); the hooks import what they use.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from ftcompare.schema import Registry, kind_of

if TYPE_CHECKING:
    import torch
    from peft import PeftConfig
    from transformers import PreTrainedModel

    from ftcompare.matrix import RunSpec
    from ftcompare.schema import Strict

ADAPTER_DTYPE_POLICY = "created and saved in the base dtype; trained in train.json's master_weights dtype"


class Method:
    """A fine-tuning method kind. The defaults are a PEFT adapter's; full fine-tuning overrides them.

    Class attributes: `kind` (the YAML `kind`), `label` (tables and figures), `settings` (the config class),
    `is_adapter`, `vllm_serves_adapter` (vLLM can serve the saved adapter on the base without merging),
    `quantized_base` (the quantization the base is trained under, e.g. "nf4": the evaluation also
    measures that base's forgetting, and the spectral analysis compares with it), `scaling_rule`, `init` and `saved_adapter` (recorded in train.json)."""

    kind: ClassVar[str]
    label: ClassVar[str]
    settings: ClassVar[type[Strict]]
    is_adapter: ClassVar[bool] = True
    quantized_base: ClassVar[str | None] = None
    scaling_rule: ClassVar[str] = "alpha/r"
    init: ClassVar[str] = "B = 0, A Kaiming-uniform (PEFT default)"
    saved_adapter: ClassVar[str] = "PEFT LoRA adapter"
    vllm_serves_adapter: ClassVar[bool] = False  # vLLM applies the saved adapter to the base (else: merged weights)

    def peft_config(self, run: RunSpec, model: torch.nn.Module, layers: list[int] | None) -> PeftConfig:
        """The PEFT config of the run's adapter (`layers`: only those decoder layers; None: all)."""
        raise NotImplementedError(f"method {self.kind!r} builds no PEFT config")

    def scaling(self, run: RunSpec) -> float | None:
        """The factor the low-rank update is multiplied by (None: no adapter)."""
        return run.alpha / run.rank

    def saved_rank(self, run: RunSpec) -> int | None:
        """The rank of the adapter `save` writes (what a server must accept); None: no adapter."""
        return run.rank

    def prepare_base(self, model: PreTrainedModel, run: RunSpec) -> PreTrainedModel:
        """The base the adapter applies to, made from `model` in place (QLoRA quantizes it)."""
        return model

    def build(self, model: PreTrainedModel, run: RunSpec, layers: list[int] | None = None) -> torch.nn.Module:
        """The model to train: the run's adapter (PEFT) around the prepared base."""
        from peft import get_peft_model

        model = self.prepare_base(model, run)
        return get_peft_model(model, self.peft_config(run, model, layers), autocast_adapter_dtype=False)

    def save(self, model: torch.nn.Module, directory: Path, run: RunSpec) -> None:
        """Save what the method trained (a PEFT adapter, or the whole model) to `directory`."""
        model.save_pretrained(directory)

    def load(
        self,
        base_model: PreTrainedModel,
        run: RunSpec,
        directory: Path,
        layers: list[int] | None = None,
        *,
        trainable: bool = False,
    ) -> torch.nn.Module:
        """The inverse of `save`: the fresh `base_model` with the saved adapter, unmerged. `layers`, when
        given, must match the layers the adapter was saved with."""
        from peft import PeftModel

        model = PeftModel.from_pretrained(
            self.prepare_base(base_model, run), directory, is_trainable=trainable, autocast_adapter_dtype=False
        )
        saved = model.peft_config["default"].layers_to_transform
        if layers is not None and sorted(layers) != sorted(saved or []):
            raise ValueError(f"{directory}: the adapter was saved for layers {saved}, not {sorted(layers)}")
        return model

    def reference_weights(self, model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
        """The base weights the run is compared with when they are not the base's own (QLoRA: the dequantized
        4-bit base it trained on); `model` is the tuned model before merging. None: the base."""
        return None

    def record(self, run: RunSpec, dtype: torch.dtype | None = None) -> dict:
        """What the method did, for train.json: adapter kind, init, scaling, dtypes, quantization."""
        return {
            "method": run.method,
            "library": "peft",
            "rank": run.rank,
            "alpha": run.alpha,
            "scaling": self.scaling(run),
            "scaling_rule": self.scaling_rule,
            "dora": False,
            "init": self.init,
            "adapter_dtype": ADAPTER_DTYPE_POLICY,
            "saved_adapter": self.saved_adapter,
            "quantization": None,
        }


METHODS: Registry[Method] = Registry("method")


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: make `cls` (a Method subclass) the method of its `kind`, and its `settings` a section
    the config accepts under `methods:`. A kind registered twice by different classes is an error."""
    if kind_of(cls.settings) != cls.kind:
        raise TypeError(f"{cls.settings.__qualname__}.kind must be {cls.kind!r} to be method {cls.kind!r}'s settings")
    METHODS.add(cls.kind, cls(), same=lambda a, b: type(a) is type(b))
    return cls


def method_for(kind: str) -> Method:
    """The registered method of `kind`; an unknown kind raises, naming the known ones."""
    return METHODS[kind]
