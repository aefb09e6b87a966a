"""GGUF files (llama.cpp's format) as transformers models: the model and tokenizer a file describes, dequantized,
and a summary read from its header alone."""

from __future__ import annotations

import copy
import math
import os
from collections import Counter
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
GGUF_SUFFIX = ".gguf"


def is_gguf(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(GGUF_SUFFIX) and Path(path).is_file()


def with_pad_token(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    if tokenizer.pad_token is None:  # many causal LMs ship without one (GGUF files often); padding is masked anyway
        tokenizer.pad_token = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.unk_token
    return tokenizer


def load_gguf_tokenizer(path: str | os.PathLike) -> PreTrainedTokenizerBase:
    """The tokenizer a GGUF file describes (vocabulary, merges, special tokens, chat template), with a pad token."""
    path = Path(path)
    return with_pad_token(AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name))


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
    return {
        "architecture": metadata.get("general.architecture"),
        "gguf_name": metadata.get("general.name"),
        "tensor_types": dict(types.most_common()),
        "file_quantization": max(quantized, key=quantized.get, default=None),
    }


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
            return bytes(blob[pos - length : pos]).decode("utf-8", "replace")

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
