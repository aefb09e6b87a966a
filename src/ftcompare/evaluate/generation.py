"""Batched generation with Hugging Face `generate`, and code extraction from what comes back.

Decoder-only models are left-padded so every prompt ends where generation starts. A completion is
cut at the end-of-sequence token and then at the first top-level line (the stop sequences of the
HumanEval harness, `\\ndef`, `\\nclass`, `\\nif`, `\\nprint`, `\\n#`, generalised to any line that
starts in column 0), since the prompt already opened the function whose body the model writes.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

_TOP_LEVEL_LINE = re.compile(r"\n(?=\S)")


@dataclass(frozen=True)
class Generation:
    text: str  # decoded new tokens, special tokens removed
    new_tokens: int  # tokens generated, up to and including EOS
    hit_budget: bool  # stopped by max_new_tokens, not by EOS: the answer may be truncated


@dataclass(frozen=True)
class SamplingSettings:
    n: int  # completions per prompt
    do_sample: bool
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 64
    batch_size: int = 64  # sequences per generate call
    seed: int = 0
    stop_strings: tuple[str, ...] = ()  # generation of a sequence ends once it has produced one of these
    cache: str = "dynamic"  # "dynamic" (HF default) or "static" (preallocated KV cache)
    compile: bool = False  # torch.compile the forward pass (HF does so with a static cache on a GPU)


def cache_kwargs(cache: str, compile: bool) -> dict:
    """`generate` arguments for a KV-cache layout; compilation is explicit so that what ran is what was asked.

    transformers compiles generate's forward only with a static cache on an accelerator, so compile=True
    is refused elsewhere rather than silently ignored (see `check_compile`)."""
    if cache not in ("dynamic", "static"):
        raise ValueError(f"cache must be 'dynamic' or 'static', got {cache!r}")
    if compile and cache != "static":
        raise ValueError("compile needs cache='static': transformers compiles generate only with a static cache")
    return ({"cache_implementation": "static"} if cache == "static" else {}) | {"disable_compile": not compile}


def extract_body(text: str) -> str:
    """The function body a completion-style model wrote: everything before the first top-level line."""
    match = _TOP_LEVEL_LINE.search(text)
    return text[: match.start() + 1] if match else text


def check_compile(compile: bool, device: torch.device) -> None:
    """Refuse a compiled generation that transformers would silently run uncompiled (it compiles on GPUs only)."""
    if compile and device.type != "cuda":
        raise ValueError(f"compiled generation needs a CUDA device; this one is {device.type}")


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: Sequence[str],
    settings: SamplingSettings,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[list[list[Generation]], float]:
    """`settings.n` completions for each prompt, and the wall time spent in `generate` (s).

    Returns generations[i][j]: the j-th completion of prompt i.
    """
    device = next(model.parameters()).device
    check_compile(settings.compile, device)
    tokenizer.padding_side = "left"
    eos_id = tokenizer.eos_token_id
    prompts_per_call = max(1, settings.batch_size // settings.n)
    results: list[list[Generation]] = []
    torch.manual_seed(settings.seed)
    wall_s = 0.0
    for start in range(0, len(prompts), prompts_per_call):
        chunk = list(prompts[start : start + prompts_per_call])
        encoded = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        started = time.perf_counter()
        output = model.generate(
            **encoded,
            do_sample=settings.do_sample,
            temperature=settings.temperature if settings.do_sample else None,
            top_p=settings.top_p if settings.do_sample else None,
            top_k=None,
            num_return_sequences=settings.n,
            max_new_tokens=settings.max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=eos_id,
            **({"stop_strings": list(settings.stop_strings), "tokenizer": tokenizer} if settings.stop_strings else {}),
            **cache_kwargs(settings.cache, settings.compile),
        )
        if device.type == "cuda":
            torch.cuda.synchronize()
        wall_s += time.perf_counter() - started
        new = output[:, encoded["input_ids"].shape[1] :].tolist()
        for i in range(len(chunk)):
            results.append([decode_new_tokens(tokenizer, new[i * settings.n + j], eos_id, settings.max_new_tokens,
                                              settings.stop_strings) for j in range(settings.n)])
        if on_batch:
            on_batch(len(chunk))
    return results, wall_s


def decode_new_tokens(tokenizer, ids: list[int], eos_id: int, budget: int, stop_strings: tuple[str, ...] = ()) -> Generation:
    """Decode one sequence's new tokens, up to EOS (padding after it dropped); a sequence that ended
    neither with EOS nor with a stop string within `budget` tokens is flagged as truncated."""
    if eos_id in ids:
        ids = ids[: ids.index(eos_id) + 1]
        return Generation(tokenizer.decode(ids, skip_special_tokens=True), len(ids), hit_budget=False)
    ids = [t for t in ids if t != tokenizer.pad_token_id] if tokenizer.pad_token_id != eos_id else ids
    text = tokenizer.decode(ids, skip_special_tokens=True)
    stopped = any(stop in text for stop in stop_strings)
    return Generation(text, len(ids), hit_budget=len(ids) >= budget and not stopped)


@torch.no_grad()
def generation_tokens_per_s(model, tokenizer, prompts: Sequence[str], *, new_tokens: int, repeats: int,
                            cache: str = "dynamic", compile: bool = False) -> float:
    """Decoding throughput: a batch of `prompts` generating exactly `new_tokens` each, greedy, KV cache on.

    The median over `repeats` timed runs after one warm-up run.
    """
    device = next(model.parameters()).device
    tokenizer.padding_side = "left"
    encoded = tokenizer(list(prompts), return_tensors="pt", padding=True, add_special_tokens=False).to(device)
    return timed_generate_tokens_per_s(model, encoded["input_ids"], encoded["attention_mask"], new_tokens=new_tokens,
                                       repeats=repeats, pad_token_id=tokenizer.pad_token_id, cache=cache, compile=compile)


@torch.no_grad()
def timed_generate_tokens_per_s(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, new_tokens: int,
                                repeats: int, pad_token_id: int, cache: str = "dynamic", compile: bool = False) -> float:
    """Tokens/s of greedy `generate` on a prepared batch (batch, prompt_len), forced to `new_tokens` tokens;
    the median of `repeats` timed runs after a warm-up run (which also absorbs compilation)."""
    device = input_ids.device
    check_compile(compile, device)
    timings = []
    for attempt in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        model.generate(input_ids=input_ids, attention_mask=attention_mask, do_sample=False, max_new_tokens=new_tokens,
                       min_new_tokens=new_tokens, pad_token_id=pad_token_id, **cache_kwargs(cache, compile))
        if device.type == "cuda":
            torch.cuda.synchronize()
        if attempt:  # the first run warms caches and kernels
            timings.append(time.perf_counter() - started)
    median_s = sorted(timings)[len(timings) // 2]
    return input_ids.shape[0] * new_tokens / median_s
