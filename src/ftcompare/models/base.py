"""Base models: the built-in tiny model, a registered model (see `ftcompare.models.registry`), a local
GGUF file, a local directory, or a Hugging Face hub id."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from rich.console import Console
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from ftcompare.config import BaseModelConfig, fingerprint
from ftcompare.models import registry
from ftcompare.models.builtin import cache_root, pretrain_builtin
from ftcompare.models.gguf import DTYPES, GGUF_SUFFIX, gguf_summary, is_gguf, load_gguf_model, load_gguf_tokenizer, with_pad_token


@dataclass(frozen=True)
class BaseSource:
    """Where a base model's weights come from, resolved once per study."""

    name: str  # as the config gave it
    path: str  # a local directory, a hub id, or a local .gguf file: what the loaders below take
    revision: str | None
    dtype: torch.dtype
    fingerprint: str  # identifies the weights: cache keys for the base's SVDs and losses
    provenance: dict = field(default_factory=dict)

    @property
    def gguf_file(self) -> str | None:
        """The file name when `path` is a GGUF file (loaded as `from_pretrained(parent, gguf_file=name)`).

        Derived from `path` rather than stored, so that `replace(source, path=other_directory)` (how a
        fully fine-tuned model is reloaded) never carries a stale GGUF file name along."""
        return Path(self.path).name if is_gguf(self.path) else None


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return DTYPES[name]


def resolve_base(config: BaseModelConfig, device: torch.device, console: Console) -> BaseSource:
    """Locate the base (pre-training the built-in one if it is not cached yet).

    Raises `registry.NotCachedError` for a registered model that has not been pulled, and
    `FileNotFoundError` for a `.gguf` path that does not exist."""
    dtype = resolve_dtype(config.dtype, device)
    if config.is_builtin:
        directory = pretrain_builtin(config.builtin, device, console)
        provenance = json.loads((directory / "provenance.json").read_text())
        return BaseSource(config.model, str(directory), None, dtype, fingerprint([directory.name, str(dtype)]), provenance)
    if config.model in registry.REGISTRY:
        directory = registry.cached_model_dir(config.model)  # raises NotCachedError with the pull command
        provenance = json.loads((directory / "provenance.json").read_text())
        identity = ["registry", config.model, provenance.get("sha256"), provenance.get("dtype"), str(dtype)]
        return BaseSource(config.model, str(directory), None, dtype, fingerprint(identity), provenance)
    if config.model.lower().endswith(GGUF_SUFFIX):
        gguf_path = Path(config.model).expanduser()
        if not gguf_path.is_file():
            raise FileNotFoundError(f"GGUF file not found: {config.model}")
        digest = gguf_sha256(gguf_path, console)
        summary = gguf_summary(gguf_path)
        provenance = {
            "name": config.model,
            "source": "local GGUF file",
            "path": str(gguf_path.resolve()),
            "sha256": digest,
            "size_bytes": gguf_path.stat().st_size,
            **summary,
            "quantization": f"{summary['file_quantization']} GGUF, dequantized to {str(dtype).removeprefix('torch.')}",
        }
        return BaseSource(config.model, str(gguf_path), None, dtype, fingerprint(["gguf", digest, str(dtype)]), provenance)
    local = Path(config.model)
    if local.is_dir():
        config_file = local / "config.json"
        identity = config_file.read_text() if config_file.is_file() else str(local.resolve())
        return BaseSource(
            config.model,
            str(local),
            None,
            dtype,
            fingerprint([identity, str(local.resolve()), str(dtype)]),
            {"name": config.model, "source": "local directory"},
        )
    return BaseSource(
        config.model,
        config.model,
        config.revision,
        dtype,
        fingerprint([config.model, config.revision, str(dtype)]),
        {"name": config.model, "source": "huggingface hub", "revision": config.revision},
    )


def load_tokenizer(source: BaseSource) -> PreTrainedTokenizerBase:
    if source.gguf_file is not None:
        return load_gguf_tokenizer(source.path)
    return with_pad_token(AutoTokenizer.from_pretrained(source.path, revision=source.revision))


def load_model(source: BaseSource, device: torch.device) -> PreTrainedModel:
    if source.gguf_file is not None:
        return load_gguf_model(source.path, source.dtype).to(device)
    model = AutoModelForCausalLM.from_pretrained(source.path, revision=source.revision, dtype=source.dtype)
    return model.to(device)


def gguf_sha256(path: Path, console: Console | None = None) -> str:
    """The file's sha256, hashed once per (path, size, mtime) and remembered in the user cache.

    A content hash makes the fingerprint survive copies and renames; hashing several GB on every study
    would cost seconds, so the digest is memoised and recomputed only when the file changes."""
    stat = path.stat()
    key = str(path.resolve())
    memo_file = cache_root() / "gguf-sha256.json"
    try:
        memo = json.loads(memo_file.read_text())
    except (OSError, ValueError):
        memo = {}
    entry = memo.get(key)
    if entry and entry.get("size") == stat.st_size and entry.get("mtime_ns") == stat.st_mtime_ns:
        return entry["sha256"]
    if console is not None and stat.st_size > 1 << 30:
        console.print(f"hashing {path} ({stat.st_size / 1e9:.1f} GB) once to identify its weights")
    digest = registry.sha256_file(path)
    memo[key] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest}
    try:
        memo_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo_file.with_name(f".{memo_file.name}.{os.getpid()}")
        tmp.write_text(json.dumps(memo, indent=1))
        os.replace(tmp, memo_file)
    except OSError:  # a read-only cache only costs the re-hash next time
        pass
    return digest
