"""Fine-tuning methods as builders: each takes the base model and a run spec and returns the model to
train. Adding a method touches this file and one config class.

LoRA goes through PEFT and is saved as a standard PEFT adapter. Adapters are kept in the base's dtype
(`autocast_adapter_dtype=False`): PEFT upcasts them to fp32 by default, which on a GPU trains ~30%
slower with ~13% more memory than full fine-tuning. The choice is recorded with every run.
"""

from __future__ import annotations

from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import PreTrainedModel

from ftcompare.config import ALL_LINEAR, RunSpec

ADAPTER_DTYPE_POLICY = "base dtype (PEFT autocast_adapter_dtype=False)"


def apply_method(model: PreTrainedModel, run: RunSpec) -> torch.nn.Module:
    """The model to train for `run`: the base itself (full FT) or a PEFT LoRA wrapper around it."""
    if run.method == "full":
        for parameter in model.parameters():
            parameter.requires_grad_(True)
        return model
    config = LoraConfig(
        r=run.rank,
        lora_alpha=run.alpha,
        lora_dropout=run.dropout,
        target_modules=run.target_modules,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config, autocast_adapter_dtype=False)


def save_tuned(model: torch.nn.Module, directory: Path) -> None:
    """Save what the method trained: a PEFT adapter for LoRA, the whole model for full FT."""
    model.save_pretrained(directory)


def merge_adapter(model: torch.nn.Module) -> PreTrainedModel:
    """A plain model with any LoRA update folded into its weights (in place: the wrapper is consumed)."""
    return model.merge_and_unload() if isinstance(model, PeftModel) else model


def adapted_weight_names(model: PreTrainedModel, target_modules: list[str] | str | None) -> list[str]:
    """Names of the weight matrices a method changes, for the spectral analysis.

    For LoRA these are the targeted linear layers; full FT is compared over the same set as
    "all-linear" LoRA (every linear layer but the output head), so counts line up across methods.
    """
    output_head = model.get_output_embeddings()
    names = []
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or module is output_head:
            continue
        leaf = name.rsplit(".", 1)[-1]
        if target_modules in (None, ALL_LINEAR) or leaf in target_modules:
            names.append(f"{name}.weight")
    return names
