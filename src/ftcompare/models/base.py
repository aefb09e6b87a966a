"""Base models: the built-in tiny model, a registered model (see `ftcompare.models.registry`), a local
GGUF file, a local directory, or a Hugging Face hub id."""

from __future__ import annotations

import copy
import json
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from rich.console import Console
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from ftcompare.config import BaseModelConfig, fingerprint
from ftcompare.models import registry
from ftcompare.models.builtin import cache_root, pretrain_builtin

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
GGUF_SUFFIX = ".gguf"


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


def is_gguf(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(GGUF_SUFFIX) and Path(path).is_file()


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return _DTYPES[name]


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
        provenance = {"name": config.model, "source": "local GGUF file", "path": str(gguf_path.resolve()), "sha256": digest,
                      "size_bytes": gguf_path.stat().st_size, **summary,
                      "quantization": f"{summary['file_quantization']} GGUF, dequantized to {str(dtype).removeprefix('torch.')}"}
        return BaseSource(config.model, str(gguf_path), None, dtype, fingerprint(["gguf", digest, str(dtype)]), provenance)
    local = Path(config.model)
    if local.is_dir():
        config_file = local / "config.json"
        identity = config_file.read_text() if config_file.is_file() else str(local.resolve())
        return BaseSource(config.model, str(local), None, dtype, fingerprint([identity, str(local.resolve()), str(dtype)]),
                          {"name": config.model, "source": "local directory"})
    return BaseSource(config.model, config.model, config.revision, dtype, fingerprint([config.model, config.revision, str(dtype)]),
                      {"name": config.model, "source": "huggingface hub", "revision": config.revision})


def load_tokenizer(source: BaseSource) -> PreTrainedTokenizerBase:
    if source.gguf_file is not None:
        return load_gguf_tokenizer(source.path)
    return _with_pad_token(AutoTokenizer.from_pretrained(source.path, revision=source.revision))


def load_model(source: BaseSource, device: torch.device) -> PreTrainedModel:
    if source.gguf_file is not None:
        return load_gguf_model(source.path, source.dtype).to(device)
    model = AutoModelForCausalLM.from_pretrained(source.path, revision=source.revision, dtype=source.dtype)
    return model.to(device)


def _with_pad_token(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    if tokenizer.pad_token is None:  # many causal LMs ship without one (GGUF files often); padding is masked anyway
        tokenizer.pad_token = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.unk_token
    return tokenizer


# --- GGUF ------------------------------------------------------------------------------------------


def load_gguf_tokenizer(path: str | os.PathLike) -> PreTrainedTokenizerBase:
    """The tokenizer a GGUF file describes (vocabulary, merges, special tokens, chat template), with a pad token."""
    path = Path(path)
    return _with_pad_token(AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name))


def load_gguf_model(path: str | os.PathLike, dtype: torch.dtype) -> PreTrainedModel:
    """A GGUF file's model, dequantized into a plain transformers model of `dtype`.

    Plain: no quantizer attached and no `quantization_config`, so it trains and `save_pretrained` works
    (transformers refuses to save a model it still considers GGUF-quantized)."""
    path = Path(path)
    kwargs = {}
    try:  # transformers >= 5 can keep GGUF blocks packed (untrainable); ask for dense weights outright
        from transformers import GgufConfig

        kwargs["quantization_config"] = GgufConfig(dequantize=True)
    except ImportError:  # older transformers always dequantizes
        pass
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype, **kwargs)
    if getattr(model, "hf_quantizer", None) is not None or "quantization_config" in model.config.to_dict():
        model = plain_copy(model)
    return model


def plain_copy(model: PreTrainedModel) -> PreTrainedModel:
    """The same weights in a model built from the config without its quantization entry (tied weights stay tied)."""
    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    dtype = next(model.parameters()).dtype
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=dtype)
    plain.load_state_dict(model.state_dict(), strict=True, assign=True)
    plain.tie_weights()
    # non-persistent buffers (rotary inverse frequencies) are not in the state dict: take them from the source
    sources = dict(model.named_buffers())
    for name, buffer in list(plain.named_buffers()):
        if buffer.device.type == "meta":
            module_name, _, buffer_name = name.rpartition(".")
            plain.get_submodule(module_name).register_buffer(buffer_name, sources[name].clone(), persistent=False)
    plain.generation_config = copy.deepcopy(model.generation_config)
    return plain.train(model.training)


def gguf_summary(path: str | os.PathLike) -> dict:
    """Architecture, name and tensor types of a GGUF file, read from its header alone.

    `gguf.GGUFReader` builds Python objects for every vocabulary entry (seconds for a 49k vocabulary);
    this walks the header with `struct` and skips what it does not need."""
    from gguf import GGMLQuantizationType

    metadata, tensors = _read_gguf_header(Path(path))
    types: Counter = Counter()
    elements: Counter = Counter()
    for ggml_type, count in tensors:
        name = GGMLQuantizationType(ggml_type).name
        types[name] += 1
        elements[name] += count
    # the type holding the most weights among the quantized ones (e.g. Q4_1), else the float type
    quantized = {name: n for name, n in elements.items() if name not in ("F32", "F16", "BF16", "F64")} or dict(elements)
    return {"architecture": metadata.get("general.architecture"), "gguf_name": metadata.get("general.name"),
            "tensor_types": dict(types.most_common()), "file_quantization": max(quantized, key=quantized.get, default=None)}


_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def _read_gguf_header(path: Path) -> tuple[dict, list[tuple[int, int]]]:
    """(scalar and string metadata, [(ggml type, element count) per tensor]) of a GGUF v2/v3 file."""
    import mmap
    import struct

    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as blob:
        if blob[:4] != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file")
        version, tensor_count, kv_count = struct.unpack_from("<IQQ", blob, 4)
        if version < 2:
            raise ValueError(f"{path}: GGUF version {version} is too old")
        pos = 24

        def string() -> str:
            nonlocal pos
            (length,) = struct.unpack_from("<Q", blob, pos)
            pos += 8 + length
            return bytes(blob[pos - length:pos]).decode("utf-8", "replace")

        def value(kind: int):
            nonlocal pos
            if kind == 8:
                return string()
            if kind == 9:
                item_kind, count = struct.unpack_from("<IQ", blob, pos)
                pos += 12
                if item_kind in _GGUF_SCALARS:  # skipped: arrays are vocabularies and the like
                    pos += struct.calcsize(_GGUF_SCALARS[item_kind]) * count
                else:
                    for _ in range(count):
                        value(item_kind)
                return None
            fmt = _GGUF_SCALARS[kind]
            (result,) = struct.unpack_from(fmt, blob, pos)
            pos += struct.calcsize(fmt)
            return result

        metadata = {}
        for _ in range(kv_count):
            key = string()
            (kind,) = struct.unpack_from("<I", blob, pos)
            pos += 4
            found = value(kind)
            if found is not None:
                metadata[key] = found
        tensors = []
        for _ in range(tensor_count):
            string()
            (n_dims,) = struct.unpack_from("<I", blob, pos)
            dims = struct.unpack_from(f"<{n_dims}Q", blob, pos + 4)
            pos += 4 + 8 * n_dims
            ggml_type, _offset = struct.unpack_from("<IQ", blob, pos)
            pos += 12
            tensors.append((ggml_type, math.prod(dims)))
    return metadata, tensors


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
