"""DoRA (Liu et al. 2024): weight-decomposed LoRA, a learned magnitude per output row times the normalized
direction W + (alpha/r)·BA (PEFT `use_dora`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from ftcompare.models.methods.lora import LoraSettings, lora_peft_config
from ftcompare.models.methods.registry import Method, register_method

if TYPE_CHECKING:
    import torch
    from peft import LoraConfig

    from ftcompare.matrix import RunSpec


class DoraSettings(LoraSettings):
    """DoRA: LoRA's fields, plus a learned magnitude vector per adapted layer."""

    kind: Literal["dora"] = Field(default="dora", description="Selects this method: DoRA.")


@register_method
class Dora(Method):
    kind = "dora"
    label = "DoRA"
    settings = DoraSettings

    def peft_config(self, run: RunSpec, model: torch.nn.Module, layers: list[int] | None) -> LoraConfig:
        return lora_peft_config(run, model, layers, use_dora=True)

    def record(self, run: RunSpec, dtype: torch.dtype | None = None) -> dict:
        return {**super().record(run, dtype), "dora": True}
