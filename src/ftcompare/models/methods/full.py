"""Full fine-tuning: every parameter of the base is trained, and the whole model is saved."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, field_validator

from ftcompare.models.methods.registry import Method, register_method
from ftcompare.schema import Strict, check_data_fractions

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

    from ftcompare.matrix import RunSpec


class FullSettings(Strict):
    """Full fine-tuning: every parameter trained."""

    kind: Literal["full"] = Field(default="full", description="Selects this method: full fine-tuning.")
    name: str | None = Field(default=None, description="Prefix of this method's run ids (default: the kind).")
    lr: float = Field(default=1e-4, gt=0, description="Learning rate.")
    data_fraction: float | list[float] | None = Field(
        default=None,
        description="Fine-tune on this fraction of the train split (a list: one run each). None: training.data_fraction.",
    )

    _data_fractions = field_validator("data_fraction")(check_data_fractions)

    def sweep(self) -> list[tuple[str, dict]]:
        return [("", {"lr": self.lr})]


@register_method
class Full(Method):
    kind = "full"
    label = "full FT"
    settings = FullSettings
    is_adapter = False

    def scaling(self, run: RunSpec) -> None:
        return None

    def saved_rank(self, run: RunSpec) -> None:
        return None

    def build(self, model: PreTrainedModel, run: RunSpec, layers: list[int] | None = None) -> torch.nn.Module:
        if layers is not None:
            raise ValueError("layers: full fine-tuning trains every layer")
        for parameter in model.parameters():
            parameter.requires_grad_(True)
        return model

    def load(
        self,
        base_model: PreTrainedModel,
        run: RunSpec,
        directory: Path,
        layers: list[int] | None = None,
        *,
        trainable: bool = False,
    ) -> torch.nn.Module:
        """The saved model, in the base's dtype and on its device."""
        from transformers import AutoModelForCausalLM

        device = next(base_model.parameters()).device
        return AutoModelForCausalLM.from_pretrained(directory, dtype=base_model.dtype).to(device).requires_grad_(trainable)

    def record(self, run: RunSpec, dtype: torch.dtype | None = None) -> dict:
        return {"method": "full", "trainable": "every parameter", "dtype": str(dtype).removeprefix("torch.") if dtype else None}
