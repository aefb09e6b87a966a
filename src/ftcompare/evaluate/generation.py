"""Batched generation with Hugging Face `generate`, and code extraction from what comes back.

Decoder-only models are left-padded so every prompt ends where generation starts. A completion is
cut at the end-of-sequence token and then at the first top-level line (the stop sequences of the
HumanEval harness, `\\ndef`, `\\nclass`, `\\nif`, `\\nprint`, `\\n#`, generalised to any line that
starts in column 0), since the prompt already opened the function whose body the model writes.
"""

from __future__ import annotations

import re
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import torch

from ftcompare.config import decoding_conflict

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
    round_tokens: int | None = None  # decode in rounds of this many tokens, finished sequences leaving (None: one round)
    seed: int = 0
    stop_strings: tuple[str, ...] = ()  # generation of a sequence ends once it has produced one of these
    backend: str = "generate"  # "generate" (HF generate in batches), "continuous" (HF continuous batching), "static"
    cache: str = "dynamic"  # "dynamic" (HF default) or "static" (preallocated KV cache)
    compile: bool = False  # torch.compile the forward pass (HF does so with a static cache on a GPU)
    static_cache_tokens: int | None = None  # backend static: KV positions its cache holds (None: from the prompts)


def cache_kwargs(cache: str, compile: bool) -> dict:
    """`generate` arguments for a KV-cache layout; compilation is explicit so that what ran is what was asked.

    transformers compiles generate's forward only with a static cache on an accelerator, so compile=True
    is refused elsewhere rather than silently ignored (see `check_compile`)."""
    check_decoding("generate", cache, compile, None)
    return ({"cache_implementation": "static"} if cache == "static" else {}) | {"disable_compile": not compile}


def extract_body(text: str) -> str:
    """The function body a completion-style model wrote: everything before the first top-level line."""
    match = _TOP_LEVEL_LINE.search(text)
    return text[: match.start() + 1] if match else text


def check_decoding(backend: str, cache: str, compile: bool, round_tokens: int | None) -> None:
    """Raise ValueError for generation settings that do not go together (`ftcompare.config.decoding_conflict`)."""
    conflict = decoding_conflict(backend, cache, compile, round_tokens)
    if conflict:
        raise ValueError(conflict)


def check_compile(compile: bool, device: torch.device) -> None:
    """Refuse a compiled generation that transformers would silently run uncompiled (it compiles on GPUs only)."""
    if compile and device.type != "cuda":
        raise ValueError(f"compiled generation needs a CUDA device; this one is {device.type}")


@dataclass
class _Sequence:
    """One completion being decoded: its prompt's index and ids, and the tokens generated so far."""

    prompt: int
    prompt_ids: list[int]
    new_ids: list[int] = field(default_factory=list)
    done: bool = False


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: Sequence[str],
    settings: SamplingSettings,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[list[list[Generation]], float]:
    """`settings.n` completions for each prompt, and the wall time spent in `generate` (s).

    Returns generations[i][j]: the j-th completion of prompt i. With `round_tokens`, each batch decodes in
    rounds of that many tokens; after each round the sequences that ended leave the batch (their rows
    are dropped from the KV cache too) and the rest go on from the cache. Without it a batch decodes
    until its longest answer ends while the slots of finished ones keep costing steps. Rounds change no
    completion: greedy answers equal one round's up to floating-point batch effects.
    """
    check_decoding(settings.backend, settings.cache, settings.compile, settings.round_tokens)
    if settings.backend == "vllm":
        raise ValueError("backend vllm generates from saved weights (ftcompare.evaluate.vllm_engine), not from a model in memory")
    if settings.backend == "continuous":
        return generate_continuous(model, tokenizer, prompts, settings, on_batch)
    if settings.backend == "static":
        from ftcompare.evaluate.static_decoding import generate_static  # it builds on this module

        return generate_static(model, tokenizer, prompts, settings, on_batch)
    device = next(model.parameters()).device
    check_compile(settings.compile, device)
    eos_id, pad_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    prompt_ids = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    sequences = [_Sequence(index, ids) for index, ids in enumerate(prompt_ids) for _ in range(settings.n)]
    unfinished = [settings.n] * len(prompts)  # sequences still decoding, per prompt (for progress)
    round_tokens = settings.round_tokens or settings.max_new_tokens
    torch.manual_seed(settings.seed)
    wall_s = 0.0
    for batch in length_batches([len(s.prompt_ids) for s in sequences], settings.batch_size, fill=settings.compile):
        live = list(dict.fromkeys(batch))  # sequences still decoding, by row; a filled batch's repeats are ignored
        input_ids, attention_mask = left_padded([sequences[k].prompt_ids for k in batch], pad_id, device)
        cache, generated = None, 0
        while live:
            steps = min(round_tokens, settings.max_new_tokens - generated)
            started = time.perf_counter()
            output = model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                past_key_values=cache,
                return_dict_in_generate=True,
                do_sample=settings.do_sample,
                temperature=settings.temperature if settings.do_sample else None,
                top_p=settings.top_p if settings.do_sample else None,
                top_k=None,
                max_new_tokens=steps,
                pad_token_id=pad_id,
                eos_token_id=eos_id,
                **({"stop_strings": list(settings.stop_strings), "tokenizer": tokenizer} if settings.stop_strings else {}),
                **cache_kwargs(settings.cache, settings.compile),
            )
            if device.type == "cuda":
                torch.cuda.synchronize()
            wall_s += time.perf_counter() - started
            new = output.sequences[:, input_ids.shape[1] :]
            completed = 0
            for row, index in enumerate(live):
                sequence = sequences[index]
                extend(sequence, new[row].tolist(), steps, tokenizer, settings)
                if sequence.done:
                    unfinished[sequence.prompt] -= 1
                    completed += unfinished[sequence.prompt] == 0
            if on_batch and completed:
                on_batch(completed)
            generated += steps
            keep = [row for row, index in enumerate(live) if not sequences[index].done]
            if not keep:
                break
            rows = torch.tensor(keep, device=device)
            cache = output.past_key_values
            cache.batch_select_indices(rows)
            input_ids = output.sequences[rows]  # every kept row generated all `steps` tokens: no padding among them
            attention_mask = torch.cat([attention_mask[rows], torch.ones_like(new[rows])], dim=1)
            live = [live[row] for row in keep]
    results = [[] for _ in prompts]
    for sequence in sequences:
        results[sequence.prompt].append(
            decode_new_tokens(tokenizer, sequence.new_ids, eos_id, settings.max_new_tokens, settings.stop_strings)
        )
    return results, wall_s


def extend(sequence: _Sequence, row: list[int], steps: int, tokenizer, settings: SamplingSettings) -> None:
    """Append one round's tokens to a sequence and mark it done at EOS, at a stop string (`generate` pads a
    sequence it stopped early) or at the token budget."""
    eos_id, pad_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    if eos_id in row:
        sequence.new_ids += row[: row.index(eos_id) + 1]
        sequence.done = True
        return
    tokens = [t for t in row if t != pad_id]
    sequence.new_ids += tokens
    stopped = len(tokens) < steps or (
        bool(settings.stop_strings)
        and any(stop in tokenizer.decode(sequence.new_ids, skip_special_tokens=True) for stop in settings.stop_strings)
    )
    sequence.done = stopped or len(sequence.new_ids) >= settings.max_new_tokens


def left_padded(rows: Sequence[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) of token rows left-padded to the longest, as decoder-only generation needs."""
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        attention_mask[i, width - len(row) :] = 1
    return input_ids.to(device), attention_mask.to(device)


@torch.no_grad()
def generate_continuous(
    model, tokenizer, prompts: Sequence[str], settings: SamplingSettings, on_batch: Callable[[int], None] | None = None
) -> tuple[list[list[Generation]], float]:
    """`generate`'s result through transformers' continuous batching (`generate_batch`, paged KV cache).

    A sequence that ends frees its slot for a waiting one at once, so one long answer no longer holds a
    whole batch of finished ones, which is where batched `generate` spends most of its steps. Stop strings
    are applied to the decoded text (continuous batching stops at EOS and the token budget only): the text
    is cut after the first stop string, as `generate` would have stopped there.
    """
    from transformers import GenerationConfig
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    check_decoding("continuous", settings.cache, settings.compile, settings.round_tokens)
    eos_id = tokenizer.eos_token_id
    requests = [ids for ids in tokenizer(list(prompts), add_special_tokens=False)["input_ids"] for _ in range(settings.n)]
    config = GenerationConfig(
        max_new_tokens=settings.max_new_tokens,
        do_sample=settings.do_sample,
        temperature=settings.temperature if settings.do_sample else None,
        top_p=settings.top_p if settings.do_sample else None,
        top_k=None,
        eos_token_id=eos_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(settings.seed)
    device = next(model.parameters()).device
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    # a paged cache of what these requests can hold at once: left unset, transformers sizes it to 90% of the free
    # memory (19 GB of a 24 GB CPU machine for a 1M-parameter model)
    pages = ContinuousBatchingConfig()
    needed = sum(len(request) + settings.max_new_tokens for request in requests)
    pages.num_blocks = -(-needed // pages.page_size) + 1
    outputs = model.generate_batch(requests, generation_config=config, continuous_batching_config=pages, progress_bar=False)
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall_s = time.perf_counter() - started
    ordered = sorted(outputs.values(), key=lambda output: int(str(output.request_id).rsplit("_", 1)[-1]))
    if len(ordered) != len(requests) or any(list(o.prompt_ids) != r for o, r in zip(ordered, requests)):
        raise RuntimeError("continuous batching returned results that do not match the requests one to one")
    failed = [o for o in ordered if getattr(o, "error", None)]
    if failed:
        raise RuntimeError(f"continuous batching failed on {len(failed)} request(s): {failed[0].error}")
    generations = [
        cut_at_stop(
            decode_new_tokens(tokenizer, list(o.generated_tokens), eos_id, settings.max_new_tokens, settings.stop_strings),
            settings.stop_strings,
        )
        for o in ordered
    ]
    if on_batch:
        on_batch(len(prompts))
    return [generations[i * settings.n : (i + 1) * settings.n] for i in range(len(prompts))], wall_s


def cut_at_stop(generation: Generation, stop_strings: tuple[str, ...]) -> Generation:
    """The text up to and including its first stop string (the whole text when none occurs)."""
    ends = [generation.text.index(stop) + len(stop) for stop in stop_strings if stop in generation.text]
    return replace(generation, text=generation.text[: min(ends)]) if ends else generation


def length_batches(
    lengths: Sequence[int], size: int, fill: bool, rows_for: Callable[[int], int] | None = None
) -> list[list[int]]:
    """Indices in batches of `size`, longest first.

    Similar lengths in a batch mean little left padding (decoding cost grows with the padded length).
    Longest-first also lets one static KV cache, allocated for the first batch, serve every later one;
    with `fill`, the last batch is padded to full size with its own last index, so that compiled decoding
    sees one batch shape and compiles once. With `rows_for`, a batch whose longest length is L holds at most
    rows_for(L) indices (≥ 1): the static decoder's token budget, which gives long prompts fewer rows.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches, start = [], 0
    while start < len(order):
        rows = max(1, min(size, rows_for(lengths[order[start]]))) if rows_for else size
        batches.append(order[start : start + rows])
        start += rows
    if fill and batches and len(batches[-1]) < size:
        batches[-1] = batches[-1] + [batches[-1][-1]] * (size - len(batches[-1]))
    return batches


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
def generation_tokens_per_s(
    model, tokenizer, prompts: Sequence[str], *, new_tokens: int, repeats: int, cache: str = "dynamic", compile: bool = False
) -> float:
    """Decoding throughput: a batch of `prompts` generating exactly `new_tokens` each, greedy, KV cache on.

    The median over `repeats` timed runs after one warm-up run.
    """
    device = next(model.parameters()).device
    tokenizer.padding_side = "left"
    encoded = tokenizer(list(prompts), return_tensors="pt", padding=True, add_special_tokens=False).to(device)
    return timed_generate_tokens_per_s(
        model,
        encoded["input_ids"],
        encoded["attention_mask"],
        new_tokens=new_tokens,
        repeats=repeats,
        pad_token_id=tokenizer.pad_token_id,
        cache=cache,
        compile=compile,
    )


@torch.no_grad()
def timed_generate_tokens_per_s(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    new_tokens: int,
    repeats: int,
    pad_token_id: int,
    cache: str = "dynamic",
    compile: bool = False,
) -> float:
    """Tokens/s of greedy `generate` on a prepared batch (batch, prompt_len), forced to `new_tokens` tokens;
    the median of `repeats` timed runs after a warm-up run (which also absorbs compilation)."""
    device = input_ids.device
    check_compile(compile, device)
    timings = []
    for attempt in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            do_sample=False,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            pad_token_id=pad_token_id,
            **cache_kwargs(cache, compile),
        )
        if device.type == "cuda":
            torch.cuda.synchronize()
        if attempt:  # the first run warms caches and kernels
            timings.append(time.perf_counter() - started)
    return input_ids.shape[0] * new_tokens / statistics.median(timings)  # of two runs, their mean
