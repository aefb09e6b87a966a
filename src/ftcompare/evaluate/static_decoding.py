"""ftcompare's own decoder (`evaluation.backend: static`): a preallocated KV cache, CUDA graphs, and batches that
shrink as their sequences finish.

Hugging Face `generate` on a small model is bound by the host, not the GPU: every decoding step launches a few
hundred kernels from Python (SmolLM2-135M: 32 ms a step at batch 256, of which the GPU computes a fraction), and a
batch decodes until its longest answer ends. This decoder removes both costs, as vLLM does, on the model
transformers loaded:

- **One static KV cache per process** (per model architecture), sized by a token budget as vLLM sizes its KV
  blocks, not by batch × longest prompt: per layer one flat buffer of `tokens` positions, of which each bucket
  (rows, columns) views its first rows × columns as `[rows, kv_heads, columns, head_dim]`. A batch of long prompts
  gets fewer rows and more columns in the same buffer (`CacheBudget`: the rule and the batches it allows).
- **CUDA graphs:** on a GPU, one decoding step is captured per bucket once per process, then replayed: a step costs
  its kernels' GPU time only. Graphs read the decoder's own copy of the model, into which each run's weights are
  copied, so a study's runs reuse the same graphs (capture is not paid per run).
- **Shrinking batches:** every `round_tokens` steps the finished sequences (EOS, a stop string, the budget) leave:
  once the rest fit the next smaller bucket they are copied there (their cache rows included), so slots held by
  finished answers stop costing steps.
- **Grouped-query attention without copies:** a decoding step attends with the key/value heads shared by their
  query groups (`einsum` over [batch, kv_heads, group, …]) instead of repeating K/V to every query head, which was
  a third of the GPU time of `generate`'s steps.

Every sequence of a batch writes its new token to the same cache column; prompts are left-padded to the batch's
longest, each row with its own positions, and a boolean mask hides padding and unwritten columns. Greedy decoding
gives `generate`'s completions up to floating-point effects of the batch shape; sampling (temperature, top-p) draws
from a generator seeded by the settings. On a CPU the same loop runs without graphs.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from peft import PeftModel

from ftcompare.evaluate.generation import Generation, SamplingSettings, decode_new_tokens, length_batches

ATTENTION = "ftcompare_grouped"  # the attention implementation the decoder's module runs with
SMALLEST_BUCKET = 8  # finished rows move to smaller buckets down to this many rows (one captured graph each)
LENGTH_STEP = 256  # bucket columns are rounded up to a multiple of this, so that nearby lengths share one graph
TYPICAL_QUANTILE = 0.95  # the prompt length the budget gives a full batch: the rest decode in batches of fewer rows


def grouped_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Attention for a transformers model (`AttentionInterface`): decoding steps (one query token) attend per key/value
    head group without repeating K/V; prefill goes through transformers' SDPA."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if query.shape[2] != 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
    batch, heads, _, dim = query.shape
    kv_heads = key.shape[1]
    grouped = query.view(batch, kv_heads, heads // kv_heads, dim)
    scores = torch.einsum("bkgd,bkld->bkgl", grouped, key).float() * (scaling if scaling is not None else dim**-0.5)
    scores = scores.masked_fill(~attention_mask.view(batch, 1, 1, -1), float("-inf"))
    weights = torch.softmax(scores, dim=-1).to(value.dtype)
    output = torch.einsum("bkgl,bkld->bkgd", weights, value)
    return output.reshape(batch, 1, heads, dim), None


@dataclass(frozen=True)
class CacheBudget:
    """How many KV positions the static cache holds (`tokens`, per layer) and how batches share them: a batch whose
    longest prompt has length p decodes in `columns(p)` columns and at most `rows(columns)` rows, so that
    rows × (p + new_tokens) ≤ rows × columns ≤ tokens; bucket row counts are max_batch and its halves."""

    tokens: int
    max_batch: int
    new_tokens: int

    def columns(self, longest_prompt: int) -> int:
        """A batch's columns: the typical row's share of the budget (tokens / max_batch, in LENGTH_STEPs), or more
        for a longer batch (its longest prompt + new_tokens, rounded up), so that most batches share one shape."""
        return max(round_up(longest_prompt + self.new_tokens), self.tokens // self.max_batch // LENGTH_STEP * LENGTH_STEP)

    def rows(self, columns: int) -> int:
        """The most rows a batch of `columns` columns may hold: the largest of max_batch, its halves, …, 1 within the
        budget (1 at least: `cache_budget` makes the budget hold one row of the longest sequence)."""
        return next((rows for rows in row_ladder(self.max_batch) if rows * columns <= self.tokens), 1)

    def bucket_rows(self, rows: int, columns: int) -> int:
        """The bucket for `rows` live rows at `columns`: the smallest ladder size holding them, not below
        SMALLEST_BUCKET unless the budget allows fewer rows at these columns."""
        floor = min(SMALLEST_BUCKET, self.rows(columns))
        return min(size for size in row_ladder(self.max_batch) if size >= max(rows, floor))

    def batches(self, prompt_lengths: Sequence[int]) -> list[list[int]]:
        """Sequence indices in batches, longest first (`length_batches`), each within the budget."""
        return length_batches(
            prompt_lengths, self.max_batch, fill=False, rows_for=lambda longest: self.rows(self.columns(longest))
        )


def cache_budget(
    prompt_lengths: Sequence[int], sequences: int, max_batch: int, new_tokens: int, tokens: int | None = None
) -> CacheBudget:
    """A call's budget: `tokens` when set (`evaluation.static_cache_tokens`), else a full first bucket of typical
    sequences, the bucket for min(sequences, max_batch) rows × (the TYPICAL_QUANTILE prompt length + new_tokens,
    rounded up to LENGTH_STEP); in either case at least one row of the longest sequence, so every prompt decodes
    whole. One outlier prompt thus costs a batch of fewer rows, not batch_size rows of its length."""
    ordered = sorted(prompt_lengths)
    typical = ordered[math.ceil(TYPICAL_QUANTILE * len(ordered)) - 1]
    rows = max(min(sequences, max_batch), min(SMALLEST_BUCKET, max_batch))
    first = min(size for size in row_ladder(max_batch) if size >= rows)  # the bucket a first full batch takes
    tokens = tokens or first * round_up(typical + new_tokens)
    return CacheBudget(max(tokens, round_up(ordered[-1] + new_tokens)), max_batch, new_tokens)


def row_ladder(max_batch: int) -> list[int]:
    """Bucket row counts: max_batch, then its halves down to 1."""
    sizes = [max_batch]
    while sizes[-1] > 1:
        sizes.append(sizes[-1] // 2)
    return sizes


def round_up(length: int) -> int:
    return -(-length // LENGTH_STEP) * LENGTH_STEP


class ColumnCache:
    """The KV cache a transformers model writes to during one forward: a bucket's views of the decoder's buffers
    ([rows, kv_heads, columns, head_dim] per layer), new keys/values written at the columns in `columns` (one column
    for a decoding step, the prompt's for prefill); attention reads every column, the mask deciding which count."""

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor], columns: torch.Tensor):
        self.keys, self.values, self.columns = keys, values, columns

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        self.keys[layer_idx].index_copy_(2, self.columns, key_states)
        self.values[layer_idx].index_copy_(2, self.columns, value_states)
        return self.keys[layer_idx], self.values[layer_idx]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.keys[layer_idx].shape[2]


@dataclass
class _Bucket:
    """A (rows, columns) shape's view of the buffers, its decoding step's inputs and, on a GPU, the captured step."""

    size: int  # rows
    columns: int
    cache: ColumnCache
    tokens: torch.Tensor  # [size, 1]: the token each row feeds next
    positions: torch.Tensor  # [size, 1]: its position (prompt length + tokens generated before it)
    mask: torch.Tensor  # [size, 1, 1, columns]: the columns each row attends to
    graph: torch.cuda.CUDAGraph | None = None
    logits: torch.Tensor | None = None  # the captured step's output


class StaticDecoder:
    """Decodes with its own copy of a model (`bind` copies a run's weights into it); see the module docstring."""

    def __init__(self, model, tokens: int):
        self.module = copy.deepcopy(model).eval()
        self.module.requires_grad_(False)
        register_attention()
        self.module.set_attn_implementation(ATTENTION)
        self.device = next(self.module.parameters()).device
        self.tokens = tokens  # KV positions per layer (the buffers hold tokens × kv_heads × head_dim each)
        self.graphs = self.device.type == "cuda"
        parameters = inspect.signature(self.module.forward).parameters
        self.cache_argument = "cache" if "cache" in parameters else "past_key_values"
        config = self.module.config.get_text_config()
        heads = config.num_attention_heads
        self.kv_heads = getattr(config, "num_key_value_heads", None) or heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        dtype = next(self.module.parameters()).dtype
        # zeros, not empty: a bucket reads masked columns too (weight 0), which must hold finite values
        flat = (tokens * self.kv_heads * self.head_dim,)
        self.keys = [torch.zeros(flat, dtype=dtype, device=self.device) for _ in range(config.num_hidden_layers)]
        self.values = [torch.zeros(flat, dtype=dtype, device=self.device) for _ in range(config.num_hidden_layers)]
        self.column = torch.zeros(1, dtype=torch.long, device=self.device)
        self.buckets: dict[tuple[int, int], _Bucket] = {}
        self.pool = torch.cuda.graph_pool_handle() if self.graphs else None

    def bind(self, model) -> None:
        """Copy a plain model's weights into the decoder's module (in place: captured graphs stay valid)."""
        self.module.load_state_dict(model.state_dict(), strict=True)

    @property
    def bytes(self) -> int:
        """The cache's size in bytes (keys and values of every layer)."""
        return sum(buffer.numel() * buffer.element_size() for buffer in self.keys + self.values)

    def bucket(self, size: int, columns: int) -> _Bucket:
        """The bucket of `size` rows and `columns` columns, built (and its step captured) at first use."""
        if size * columns > self.tokens:
            raise ValueError(f"a bucket of {size} rows × {columns} columns exceeds the cache's {self.tokens} tokens")
        if (size, columns) not in self.buckets:
            self.buckets[size, columns] = self._build(size, columns)
        return self.buckets[size, columns]

    def views(self, size: int, columns: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Keys and values of a (size, columns) bucket: per layer the buffer's first size × columns positions as
        [size, kv_heads, columns, head_dim]; buckets of equal columns share rows (row i is row i of the larger)."""
        shape = (size, self.kv_heads, columns, self.head_dim)
        used = size * self.kv_heads * columns * self.head_dim
        return [k[:used].view(shape) for k in self.keys], [v[:used].view(shape) for v in self.values]

    def _build(self, size: int, columns: int) -> _Bucket:
        bucket = _Bucket(
            size=size,
            columns=columns,
            cache=ColumnCache(*self.views(size, columns), self.column),
            tokens=torch.zeros((size, 1), dtype=torch.long, device=self.device),
            positions=torch.zeros((size, 1), dtype=torch.long, device=self.device),
            mask=torch.ones((size, 1, 1, columns), dtype=torch.bool, device=self.device),
        )
        self.warm_up(bucket)
        if self.graphs:
            bucket.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(bucket.graph, pool=self.pool):
                bucket.logits = self._forward(bucket)
        return bucket

    def warm_up(self, bucket: _Bucket) -> None:
        """Two steps of a new bucket before its capture, as CUDA graphs require (on a side stream); on a CPU too, so
        that the CPU's tests run the GPU's path. They write to the bucket's last column, which no sequence writes
        (a batch's columns hold its longest prompt and every new token but the last) and no mask opens: rows that
        are live meanwhile (a compaction builds its target while the source's rows decode) keep their cache, and
        the column an earlier batch of more columns left is never used as an index past this bucket's end."""
        column = self.column.clone()
        self.column.fill_(bucket.columns - 1)
        stream = torch.cuda.Stream() if self.graphs else None
        if stream is not None:
            stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
            for _ in range(2):
                self._forward(bucket)
        if stream is not None:
            torch.cuda.current_stream().wait_stream(stream)
        self.column.copy_(column)

    def _forward(self, bucket: _Bucket) -> torch.Tensor:
        output = self.module(
            input_ids=bucket.tokens,
            position_ids=bucket.positions,
            attention_mask=bucket.mask,
            use_cache=True,
            logits_to_keep=1,
            **{self.cache_argument: bucket.cache},
        )
        return output.logits[:, -1, :]

    def step(self, bucket: _Bucket) -> torch.Tensor:
        """One decoding step of a bucket: next-token logits [size, vocab] (valid until the next step)."""
        if bucket.graph is None:
            return self._forward(bucket)
        bucket.graph.replay()
        return bucket.logits

    def prefill(self, bucket: _Bucket, rows: list[list[int]], pad_id: int) -> torch.Tensor:
        """Write left-padded prompts into columns [0, width) of a bucket's rows (rows beyond `rows` repeat its last
        prompt); set the bucket's mask and positions for the first decoding step; next-token logits per row."""
        rows = rows + [rows[-1]] * (bucket.size - len(rows))
        width = max(len(row) for row in rows)
        pads = torch.tensor([width - len(row) for row in rows], device=self.device)
        input_ids = torch.full((bucket.size, width), pad_id, dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        columns = torch.arange(width, device=self.device)
        real = columns[None, :] >= pads[:, None]  # [size, width]: not padding
        causal = columns[None, :, None] >= columns[None, None, :]  # [1, query, key]
        # a padding query attends to itself only, so that no row of the softmax is empty (NaN)
        itself = torch.eye(width, dtype=torch.bool, device=self.device)[None]
        mask = torch.zeros((bucket.size, 1, width, bucket.columns), dtype=torch.bool, device=self.device)
        mask[:, 0, :, :width] = (causal & real[:, None, :]) | itself
        output = self.module(
            input_ids=input_ids.to(self.device),
            position_ids=(columns[None, :] - pads[:, None]).clamp(min=0),
            attention_mask=mask,
            use_cache=True,
            logits_to_keep=1,
            **{self.cache_argument: ColumnCache(bucket.cache.keys, bucket.cache.values, columns)},
        )
        bucket.mask.zero_()
        bucket.mask[:, 0, 0, :width] = real
        bucket.positions.copy_((width - pads)[:, None])
        self.column.fill_(width)
        return output.logits[:, -1, :]

    def compact(self, source: _Bucket, keep: list[int], size: int) -> tuple[_Bucket, torch.Tensor]:
        """Move rows `keep` of a bucket into the bucket of `size` rows and the same columns (their cache rows included;
        the rows beyond repeat the last); the new bucket and the source rows it holds, in order."""
        target = self.bucket(size, source.columns)
        index = torch.tensor(keep + [keep[-1]] * (target.size - len(keep)), device=self.device)
        for sources, targets in ((source.cache.keys, target.cache.keys), (source.cache.values, target.cache.values)):
            for layer, into in zip(sources, targets, strict=True):
                into.copy_(layer[index])  # indexing copies first, so rows that overlap in the buffer are safe
        target.tokens.copy_(source.tokens[index])
        target.positions.copy_(source.positions[index])
        target.mask.copy_(source.mask[index])
        return target, index


_DECODERS: dict[tuple, StaticDecoder] = {}


def decoder_for(model, tokens: int) -> StaticDecoder:
    """The process's decoder for this architecture, device and dtype, holding at least `tokens` KV positions per layer
    (rebuilt larger when a call's budget needs more, never smaller), with `model`'s weights bound."""
    key = decoder_key(model)
    plain = plain_model(model)
    if key not in _DECODERS or _DECODERS[key].tokens < tokens:
        _DECODERS.pop(key, None)  # no reference is left, so its buffers and graphs are freed before the new ones
        _DECODERS[key] = StaticDecoder(plain, tokens)
    decoder = _DECODERS[key]
    decoder.bind(plain)
    return decoder


def decoder_key(model) -> tuple:
    parameter = next(model.parameters())
    return (type(unwrapped(model)).__name__, unwrapped(model).config.to_json_string(), parameter.device, parameter.dtype)


def cache_record(model) -> dict:
    """What the static cache this process holds for `model`'s architecture is: its KV positions per layer and bytes
    (empty when the static decoder has not run for it), for the evaluation's record."""
    decoder = _DECODERS.get(decoder_key(model))
    return {"tokens": decoder.tokens, "bytes": decoder.bytes} if decoder else {}


def unwrapped(model):
    return model.get_base_model() if isinstance(model, PeftModel) else model


def plain_model(model):
    """`model` as a plain transformers model: an adapter merged and 4-bit layers dequantized, into a copy."""
    if isinstance(model, PeftModel) or any(p.dtype == torch.uint8 for p in model.parameters()):
        from ftcompare.models.weights import merge_adapter

        return merge_adapter(copy.deepcopy(model))
    return model


def register_attention() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION, grouped_attention)


@dataclass
class _Row:
    sequence: int  # index into the call's sequences
    slot: int  # its row in the current bucket
    new_ids: list[int]
    done: bool = False


@torch.no_grad()
def generate_static(
    model, tokenizer, prompts: Sequence[str], settings: SamplingSettings, on_batch: Callable[[int], None] | None = None
) -> tuple[list[list[Generation]], float]:
    """`settings.n` completions per prompt through the static decoder, and the wall time (s), capture included."""
    if not prompts:
        return [], 0.0
    eos_id, pad_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    prompt_ids = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    sequences = [(index, ids) for index, ids in enumerate(prompt_ids) for _ in range(settings.n)]
    budget = cache_budget(
        [len(ids) for ids in prompt_ids],
        len(sequences),
        settings.batch_size,
        settings.max_new_tokens,
        settings.static_cache_tokens,
    )
    device = next(model.parameters()).device
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    synchronize()
    started = time.perf_counter()
    decoder = decoder_for(model, budget.tokens)
    generator = torch.Generator(device=decoder.device).manual_seed(settings.seed)
    round_tokens = settings.round_tokens or 32
    new_ids: list[list[int]] = [[] for _ in sequences]
    unfinished = [settings.n] * len(prompts)
    for batch in budget.batches([len(ids) for _, ids in sequences]):
        columns = budget.columns(len(sequences[batch[0]][1]))  # longest first: the batch's first is its longest
        bucket = decoder.bucket(budget.bucket_rows(len(batch), columns), columns)
        logits = decoder.prefill(bucket, [sequences[k][1] for k in batch], pad_id)
        rows = [_Row(k, slot, new_ids[k]) for slot, k in enumerate(batch)]
        generated = 0
        while rows:
            steps = min(round_tokens, settings.max_new_tokens - generated)
            chosen = torch.empty((bucket.size, steps), dtype=torch.long, device=decoder.device)
            for step in range(steps):
                tokens = next_tokens(logits, settings, generator)
                chosen[:, step] = tokens
                if generated + step + 1 < settings.max_new_tokens:  # the budget's last token is not fed back
                    bucket.tokens.copy_(tokens[:, None])
                    bucket.mask[:, 0, 0].index_fill_(1, decoder.column, True)
                    logits = decoder.step(bucket)
                    bucket.positions.add_(1)
                    decoder.column.add_(1)
            generated += steps
            chosen_rows = chosen.tolist()
            completed = 0
            for row in rows:
                finish(row, chosen_rows[row.slot], eos_id, generated >= settings.max_new_tokens, settings.stop_strings, tokenizer)
                if row.done:
                    unfinished[sequences[row.sequence][0]] -= 1
                    completed += unfinished[sequences[row.sequence][0]] == 0
            if on_batch and completed:
                on_batch(completed)
            rows = [row for row in rows if not row.done]
            if rows and (size := budget.bucket_rows(len(rows), bucket.columns)) < bucket.size:
                slots = [row.slot for row in rows]
                bucket, index = decoder.compact(bucket, slots, size)
                logits = logits[index]
                for slot, row in enumerate(rows):
                    row.slot = slot
    synchronize()
    wall_s = time.perf_counter() - started
    results: list[list[Generation]] = [[] for _ in prompts]
    for (prompt, _), ids in zip(sequences, new_ids, strict=True):
        results[prompt].append(decode_new_tokens(tokenizer, ids, eos_id, settings.max_new_tokens, settings.stop_strings))
    return results, wall_s


def next_tokens(logits: torch.Tensor, settings: SamplingSettings, generator: torch.Generator) -> torch.Tensor:
    """The next token per row: the argmax, or a draw at the temperature from the top-p nucleus (as transformers'
    TemperatureLogitsWarper then TopPLogitsWarper)."""
    if not settings.do_sample:
        return logits.argmax(dim=-1)
    scores = logits.float() / settings.temperature
    if settings.top_p < 1.0:
        ordered, order = torch.sort(scores, descending=False, dim=-1)
        cumulative = ordered.softmax(dim=-1).cumsum(dim=-1)
        drop = cumulative <= 1 - settings.top_p
        drop[:, -1] = False  # the most likely token always stays
        scores = scores.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    return torch.multinomial(scores.softmax(dim=-1), 1, generator=generator)[:, 0]


def finish(row: _Row, tokens: list[int], eos_id: int, budget_spent: bool, stop_strings: tuple[str, ...], tokenizer) -> None:
    """Append a round's tokens to a row, ending it at EOS, at the first token that completes a stop string (what
    `generate` keeps), or at the budget."""
    if eos_id in tokens:
        row.new_ids += tokens[: tokens.index(eos_id) + 1]
        row.done = True
        return
    start = len(row.new_ids)
    row.new_ids += tokens
    if stop_strings:
        # no stop string had ended before this round, so one that ends in it starts at most its length in characters,
        # hence tokens, earlier: decoding that tail is enough
        tail = max(0, start - max(len(stop) for stop in stop_strings))

        def stopped(end: int) -> bool:
            return any(stop in tokenizer.decode(row.new_ids[tail:end], skip_special_tokens=True) for stop in stop_strings)

        if stopped(len(row.new_ids)):
            end = next(end for end in range(start + 1, len(row.new_ids) + 1) if stopped(end))
            del row.new_ids[end:]
            row.done = True
    row.done = row.done or budget_spent
