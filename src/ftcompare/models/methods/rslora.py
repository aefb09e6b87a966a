"""rsLoRA (Kalajdzievski 2023): LoRA scaled by alpha/√r instead of alpha/r, so the update's scale does not
shrink as the rank grows (PEFT `use_rslora`)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from ftcompare.models.methods.lora import LoraSettings, lora_peft_config
from ftcompare.models.methods.registry import Method, register_method

if TYPE_CHECKING:
    import torch
    from peft import LoraConfig

    from ftcompare.matrix import RunSpec


class RsLoraSettings(LoraSettings):
    """rsLoRA: LoRA's fields; the update is scaled by alpha/√r."""

    kind: Literal["rslora"] = Field(default="rslora", description="Selects this method: rsLoRA.")


@register_method
class RsLora(Method):
    kind = "rslora"
    label = "rsLoRA"
    settings = RsLoraSettings
    vllm_serves_adapter = True
    scaling_rule = "alpha/sqrt(r)"

    def scaling(self, run: RunSpec) -> float:
        return run.alpha / math.sqrt(run.rank)

    def peft_config(self, run: RunSpec, model: torch.nn.Module, layers: list[int] | None) -> LoraConfig:
        return lora_peft_config(run, model, layers, use_rslora=True)
