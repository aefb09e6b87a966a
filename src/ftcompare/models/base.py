"""Base models: the built-in tiny model, a local directory, or a Hugging Face hub id."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from rich.console import Console
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from ftcompare.config import BaseModelConfig, fingerprint
from ftcompare.models.builtin import pretrain_builtin

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class BaseSource:
    """Where a base model's weights come from, resolved once per study."""

    name: str  # as the config gave it
    path: str  # a local directory or a hub id, what from_pretrained takes
    revision: str | None
    dtype: torch.dtype
    fingerprint: str  # identifies the weights: cache keys for the base's SVDs and losses
    provenance: dict = field(default_factory=dict)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return _DTYPES[name]


def resolve_base(config: BaseModelConfig, device: torch.device, console: Console) -> BaseSource:
    """Locate the base (pre-training the built-in one if it is not cached yet)."""
    dtype = resolve_dtype(config.dtype, device)
    if config.is_builtin:
        directory = pretrain_builtin(config.builtin, device, console)
        provenance = json.loads((directory / "provenance.json").read_text())
        return BaseSource(config.model, str(directory), None, dtype, fingerprint([directory.name, str(dtype)]), provenance)
    local = Path(config.model)
    if local.is_dir():
        config_file = local / "config.json"
        identity = config_file.read_text() if config_file.is_file() else str(local.resolve())
        return BaseSource(config.model, str(local), None, dtype, fingerprint([identity, str(local.resolve()), str(dtype)]),
                          {"name": config.model, "source": "local directory"})
    return BaseSource(config.model, config.model, config.revision, dtype, fingerprint([config.model, config.revision, str(dtype)]),
                      {"name": config.model, "source": "huggingface hub", "revision": config.revision})


def load_tokenizer(source: BaseSource) -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(source.path, revision=source.revision)
    if tokenizer.pad_token is None:  # many causal LMs ship without one; padding is masked anyway
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(source: BaseSource, device: torch.device) -> PreTrainedModel:
    model = AutoModelForCausalLM.from_pretrained(source.path, revision=source.revision, dtype=source.dtype)
    return model.to(device)
