"""LoRA (Hu et al. 2021) through PEFT: W + (alpha/r)·BA, B = 0 and A Kaiming-uniform at the start (PEFT's
default). Its settings are the LoRA family's: rsLoRA, DoRA, PiSSA and QLoRA take the same fields and differ
in the flags `lora_peft_config` passes to PEFT's `LoraConfig`."""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Literal

from pydantic import Field, field_validator, model_validator

from ftcompare.models.methods.registry import Method, register_method
from ftcompare.schema import Strict, as_list, check_data_fractions

if TYPE_CHECKING:
    import torch
    from peft import LoraConfig

    from ftcompare.matrix import RunSpec

ALL_LINEAR = "all-linear"  # PEFT's name for every linear layer but the output head
DEFAULT_LORA_LR = 1e-3


class LoraSettings(Strict):
    """LoRA through PEFT. `rank`, `alpha` and `layer_fraction` may be lists: one run per combination (a sweep).

    alpha defaults to 2·rank (the Illusion-of-Equivalence setup). With `alpha_lr_product` set, each run's
    learning rate is alpha_lr_product / alpha, so alpha·lr stays fixed across a sweep. `layer_fraction` adapts
    only that fraction of the decoder layers: those whose output is least similar (linear CKA) to their input on
    the base model (see `ftcompare.analyze.intervene.select_layers`)."""

    kind: Literal["lora"] = Field(default="lora", description="Selects this method: LoRA.")
    name: str | None = Field(default=None, description="Prefix of this method's run ids (default: the kind).")
    rank: int | list[int] = Field(default=8, description="LoRA rank r; a list sweeps it (one run per rank).")
    alpha: float | list[float] | None = Field(
        default=None, description="LoRA alpha (the update is scaled by alpha/r); a list sweeps it. Default 2·rank."
    )
    lr: float | None = Field(
        default=None, gt=0, description=f"Learning rate. Default {DEFAULT_LORA_LR:g}, unless alpha_lr_product is given."
    )
    alpha_lr_product: float | None = Field(
        default=None,
        gt=0,
        description="Each run's learning rate is this divided by its alpha, so alpha·lr is fixed "
        "across a sweep (give either this or lr).",
    )
    target_modules: list[str] | Literal["all-linear"] = Field(
        default=ALL_LINEAR,
        description="Modules to adapt, matched as PEFT matches them (a name or a dotted suffix); "
        "all-linear: every linear layer but the output head.",
    )
    dropout: float = Field(default=0.0, ge=0, lt=1, description="Dropout on the adapter's input (PEFT lora_dropout).")
    layer_fraction: float | list[float] | None = Field(
        default=None,
        description="Adapt only this fraction of the decoder layers, those least similar (CKA) between "
        "input and output on the base; a list sweeps it. None: every layer.",
    )
    data_fraction: float | list[float] | None = Field(
        default=None,
        description="Fine-tune on this fraction of the train split (a list: one run each). None: training.data_fraction.",
    )

    _data_fractions = field_validator("data_fraction")(check_data_fractions)

    @field_validator("rank")
    @classmethod
    def _positive_ranks(cls, value: int | list[int]) -> int | list[int]:
        if not as_list(value):
            raise ValueError("rank: give at least one rank")
        for rank in as_list(value):
            if rank < 1:
                raise ValueError(f"rank must be a positive integer, got {rank}")
        return value

    @field_validator("alpha")
    @classmethod
    def _positive_alphas(cls, value: float | list[float] | None) -> float | list[float] | None:
        if value is not None:
            if not as_list(value):
                raise ValueError("give at least one alpha")
            for alpha in as_list(value):
                if alpha <= 0:
                    raise ValueError(f"alpha must be positive, got {alpha}")
        return value

    @field_validator("layer_fraction")
    @classmethod
    def _fractions(cls, value: float | list[float] | None) -> float | list[float] | None:
        if value is not None:
            if not as_list(value):
                raise ValueError("give at least one fraction")
            for fraction in as_list(value):
                if not 0 < fraction <= 1:
                    raise ValueError(f"a fraction of the layers must be in (0, 1], got {fraction}")
        return value

    @model_validator(mode="after")
    def _one_learning_rate(self) -> LoraSettings:
        if self.lr is not None and self.alpha_lr_product is not None:
            raise ValueError("give either lr or alpha_lr_product, not both")
        return self

    @property
    def ranks(self) -> list[int]:
        return as_list(self.rank)

    def sweep(self) -> list[tuple[str, dict]]:
        """(run-id tag, run fields) per rank × alpha × layer fraction, with the learning rate each gets."""
        alphas = as_list(self.alpha) if self.alpha is not None else [None]
        layer_fractions = as_list(self.layer_fraction) if self.layer_fraction is not None else [None]
        points = []
        for rank, given_alpha, layer_fraction in itertools.product(self.ranks, alphas, layer_fractions):
            alpha = given_alpha if given_alpha is not None else 2.0 * rank
            if self.alpha_lr_product is not None:
                lr = self.alpha_lr_product / alpha
            else:
                lr = self.lr if self.lr is not None else DEFAULT_LORA_LR
            alpha_tag = f"-a{alpha:g}" if isinstance(self.alpha, list) else ""
            layer_tag = f"-l{layer_fraction * 100:g}" if layer_fraction is not None else ""
            points.append(
                (
                    f"-r{rank}{alpha_tag}{layer_tag}",
                    {
                        "lr": lr,
                        "rank": rank,
                        "alpha": alpha,
                        "target_modules": self.target_modules,
                        "dropout": self.dropout,
                        "layer_fraction": layer_fraction,
                    },
                )
            )
        return points


def lora_peft_config(run: RunSpec, model: torch.nn.Module, layers: list[int] | None = None, **flags) -> LoraConfig:
    """The PEFT `LoraConfig` every LoRA-family kind is built from; the kinds differ only in `flags`
    (`use_rslora`, `use_dora`, `init_lora_weights`).

    `layers` restricts the adapters to those decoder layers (layer-wise LoRA). PEFT refuses
    `layers_to_transform` with the string "all-linear", so with `layers` the targets are spelled out
    as the leaf names of `model`'s linear layers (all but the output head, what "all-linear" means).
    No `layers_pattern` is needed for Llama-style models: PEFT then reads a module's layer index from
    the first numbered segment of its name (`model.layers.<i>.…`).
    """
    from peft import LoraConfig

    from ftcompare.models.weights import adapted_weight_names, stores_transposed

    targets = run.target_modules
    if layers is not None and targets == ALL_LINEAR:
        targets = sorted({name.removesuffix(".weight").rsplit(".", 1)[-1] for name in adapted_weight_names(model, ALL_LINEAR)})
    return LoraConfig(
        r=run.rank,
        lora_alpha=run.alpha,
        lora_dropout=run.dropout,
        target_modules=targets,
        fan_in_fan_out=stores_transposed(model, targets),  # GPT-2's Conv1D; PEFT would flip it with a warning
        layers_to_transform=sorted(layers) if layers is not None else None,
        task_type="CAUSAL_LM",
        **flags,
    )


@register_method
class Lora(Method):
    kind = "lora"
    label = "LoRA"
    settings = LoraSettings
    vllm_serves_adapter = True

    def peft_config(self, run: RunSpec, model: torch.nn.Module, layers: list[int] | None) -> LoraConfig:
        return lora_peft_config(run, model, layers)
