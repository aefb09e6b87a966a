"""The training loop: one screen, top to bottom, shared by pre-training the built-in base and by every
fine-tuning method (the method only decides which parameters require gradients).

Batches are dicts of `input_ids`, `attention_mask` and `labels` (-100 where the loss is masked), as
Hugging Face causal LMs take them. Accelerate handles device placement and gradient scaling for one process;
under a distributed launch (`accelerate launch`, `torchrun`) the ranks train one model together, sharded by
FSDP2 or replicated by DDP (`ftcompare.train.distributed`), each on its own rows of every batch.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from accelerate import Accelerator
from transformers import get_scheduler

from ftcompare.data.problems import IGNORE_INDEX

if TYPE_CHECKING:
    from ftcompare.train.distributed import Ranks


@dataclass(frozen=True)
class TrainSettings:
    lr: float
    steps: int
    warmup_steps: int = 0
    schedule: str = "cosine"  # any transformers scheduler name: cosine, linear, constant_with_warmup...
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)  # AdamW's
    eps: float = 1e-8  # AdamW's
    grad_clip: float | None = 1.0
    log_every: int = 10
    seed: int = 0
    # the forward under torch.autocast in this dtype (bf16 with fp32 master weights: mixed precision)
    autocast_dtype: torch.dtype | None = None
    # steady-state throughput leaves out the first steps (at most half of them): they pay one-time costs
    # (allocator growth, kernel selection, compilation) that later steps do not
    throughput_skip_steps: int = 5
    # each step's batch cut into this many micro-batches, their gradients summed: the same step in less memory
    accumulation_steps: int = 1
    # recompute each layer's activations in the backward pass (transformers' gradient checkpointing)
    activation_checkpointing: bool = False

    def recipe(self) -> dict:
        """The optimizer and schedule as run, for the records."""
        return {
            "optimizer": "AdamW",
            "lr": self.lr,
            "betas": list(self.betas),
            "eps": self.eps,
            "weight_decay": self.weight_decay,
            "schedule": self.schedule,
            "warmup_steps": self.warmup_steps,
            "steps": self.steps,
            "grad_clip": self.grad_clip,
        }


def optimizer_steps(n_examples: int, epochs: float, batch_size: int, max_steps: int | None) -> int:
    """How many optimizer steps a run takes: ceil(epochs · examples / batch), capped at `max_steps` when set."""
    steps = math.ceil(epochs * n_examples / batch_size)
    return min(steps, max_steps) if max_steps else steps


@contextmanager
def trainable_parameters_in(model: torch.nn.Module, dtype: torch.dtype | None) -> Iterator[None]:
    """Hold `model`'s trainable parameters in `dtype` (None: leave them) and give each its own dtype back on
    exit: fp32 master weights for a low-precision model, so that small updates accumulate instead of being
    rounded away; frozen parameters keep the model's dtype. Parameters are held by weak reference: one that
    FSDP2 replaced by its shard is freed (the whole fp32 model must not stay on every rank) and skipped."""
    originals = [
        (weakref.ref(p), p.dtype) for p in model.parameters() if p.requires_grad and dtype is not None and p.dtype != dtype
    ]
    for reference, _ in originals:
        reference().data = reference().data.to(dtype)
    try:
        yield
    finally:
        for reference, original in originals:
            if (parameter := reference()) is not None:
                parameter.data = parameter.data.to(original)


@dataclass(frozen=True)
class TrainResult:
    steps: int
    tokens: int  # tokens processed (attention mask), the throughput numerator
    token_slots: int  # batch positions, padding included: tokens / token_slots is the useful share
    loss_tokens: int  # tokens that carried the loss
    wall_s: float
    tokens_per_s: float  # over every step
    steady_tokens_per_s: float  # over the steps after the first `steady_skipped_steps`
    steady_skipped_steps: int
    steady_tokens: int
    steady_wall_s: float
    warmup_s: float  # the first `steady_skipped_steps` steps (compilation, allocator warm-up), left out of steady_*
    peak_memory_mb: float
    memory_measure: str  # what peak_memory_mb measures on this device
    final_loss: float  # mean loss over the last logging window
    trainable_params: int
    recipe: dict  # TrainSettings.recipe(): optimizer and schedule as run


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def _rss_mb() -> float:
    """Resident memory of this process, read from /proc (Linux), 0 where unavailable."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return 0.0


class MemoryMeter:
    """Peak memory during a region: CUDA allocator peak on a GPU, sampled RSS peak on a CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.measure = "cuda max_memory_allocated" if self.cuda else "process RSS, sampled each step"
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(device)
        self.device = device
        self.peak_mb = _rss_mb() if not self.cuda else 0.0

    def sample(self) -> float:
        if self.cuda:
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self.peak_mb = max(self.peak_mb, _rss_mb())
        return self.peak_mb


def train(
    model: torch.nn.Module,
    batches: Iterator[dict[str, torch.Tensor]],
    settings: TrainSettings,
    *,
    accelerator: Accelerator | None = None,
    log_path: Path | None = None,
    on_step: Callable[[int, float], None] | None = None,
    on_log: Callable[[dict], None] | None = None,
    ranks: Ranks | None = None,
) -> TrainResult:
    """Train `model` in place for `settings.steps` steps over `batches` (an endless or long enough iterator).

    Writes one JSON line per logged step (step, loss, lr, grad norm, tokens/s, peak memory) to `log_path` and
    hands the same record to `on_log` (an experiment tracker). With `ranks` (a distributed launch), every rank
    calls this with the same model and batches; the model is sharded (FSDP2, in place) or replicated (DDP)
    over them, and the counts and losses recorded are the whole batch's.
    """
    accelerator = accelerator or Accelerator()
    seed_everything(settings.seed)
    if settings.activation_checkpointing:  # non-reentrant: frozen inputs (an adapter's base) need no grad hooks
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if ranks is None:
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer, scheduler = adamw_and_schedule(params, settings)
        model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    else:  # torch's own FSDP2 or DDP, not accelerate's prepare (see ftcompare.train.distributed)
        model = ranks.shard(model, accelerator.device, settings.autocast_dtype)
        params = [p for p in model.parameters() if p.requires_grad]  # FSDP2's: this rank's shards
        optimizer, scheduler = adamw_and_schedule(params, settings)
    model.train()
    meter = MemoryMeter(accelerator.device)
    log_file = open(log_path, "w") if log_path else None
    tokens = loss_tokens = token_slots = 0
    window_losses: list[float] = []
    window_norms: list[torch.Tensor] = []  # kept on the device until the log line: no extra synchronisation per step
    final_loss = math.nan
    skip = min(settings.throughput_skip_steps, settings.steps // 2)
    start = window_start = steady_start = time.perf_counter()
    window_tokens = steady_from_tokens = 0
    try:
        for step in range(1, settings.steps + 1):
            batch = next(batches)  # the whole batch, on every rank
            loss = forward_backward(model, batch, settings, accelerator, ranks)
            # the global norm before clipping; without clipping, a bound of inf measures it and scales by exactly 1
            bound = settings.grad_clip if settings.grad_clip is not None else math.inf
            grad_norm = accelerator.clip_grad_norm_(params, bound) if ranks is None else ranks.clip_grad_norm_(params, bound)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)

            step_tokens = int(batch["attention_mask"].sum())
            tokens += step_tokens
            token_slots += batch["attention_mask"].numel()
            window_tokens += step_tokens
            loss_tokens += int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
            window_losses.append(loss.item())
            if grad_norm is not None:  # DeepSpeed clips inside its engine and returns no norm
                window_norms.append(grad_norm.detach())
            if step % settings.log_every == 0 or step == settings.steps:
                now = time.perf_counter()
                final_loss = sum(window_losses) / len(window_losses)
                record = {
                    "step": step,
                    "loss": final_loss,
                    "lr": scheduler.get_last_lr()[0],
                    "grad_norm": torch.stack(window_norms).float().mean().item() if window_norms else None,
                    "tokens_per_s": window_tokens / max(now - window_start, 1e-9),
                    "peak_memory_mb": meter.sample(),
                    "elapsed_s": now - start,
                }
                if log_file:
                    log_file.write(json.dumps(record) + "\n")
                    log_file.flush()
                if on_log:
                    on_log(record)
                window_losses, window_norms, window_tokens, window_start = [], [], 0, now
            if on_step:
                on_step(step, loss.item())
            if step == skip:  # loss.item() above waited for the device, so the clock reads the step's end
                steady_start, steady_from_tokens = time.perf_counter(), tokens
    finally:
        if log_file:
            log_file.close()
    if accelerator.device.type == "cuda":
        torch.cuda.synchronize()
    end = time.perf_counter()
    wall_s = end - start
    steady_tokens = tokens - steady_from_tokens
    model.eval()
    return TrainResult(
        steps=settings.steps,
        tokens=tokens,
        token_slots=token_slots,
        loss_tokens=loss_tokens,
        wall_s=wall_s,
        tokens_per_s=tokens / max(wall_s, 1e-9),
        steady_tokens_per_s=steady_tokens / max(end - steady_start, 1e-9),
        steady_skipped_steps=skip,
        steady_tokens=steady_tokens,
        steady_wall_s=end - steady_start,
        warmup_s=steady_start - start,
        peak_memory_mb=meter.sample(),
        memory_measure=meter.measure,
        final_loss=final_loss,
        trainable_params=sum(p.numel() for p in params),
        recipe=settings.recipe(),
    )


def adamw_and_schedule(
    params: list[torch.nn.Parameter], settings: TrainSettings
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    optimizer = torch.optim.AdamW(
        params, lr=settings.lr, weight_decay=settings.weight_decay, betas=settings.betas, eps=settings.eps
    )
    scheduler = get_scheduler(
        settings.schedule, optimizer, num_warmup_steps=settings.warmup_steps, num_training_steps=settings.steps
    )
    return optimizer, scheduler


def forward_backward(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    settings: TrainSettings,
    accelerator: Accelerator,
    ranks: Ranks | None,
) -> torch.Tensor:
    """One step's gradients (accumulated into `.grad`, not applied) and its loss, the mean over the batch's loss
    tokens (a 0-d tensor).

    One process, one micro-batch: the model's own mean loss. Otherwise each rank takes its rows of the batch,
    cut into `settings.accumulation_steps` micro-batches, and each micro-batch's loss is the sum of its token
    losses over the batch's loss tokens per rank (transformers' `num_items_in_batch`): the gradients add up
    over the micro-batches, and their mean over the ranks (what DDP and FSDP reduce) is the whole batch's
    mean-loss gradient, as one process computes it."""
    autocast = partial(
        torch.autocast, accelerator.device.type, dtype=settings.autocast_dtype, enabled=settings.autocast_dtype is not None
    )
    if ranks is None and settings.accumulation_steps == 1:
        batch = {key: value.to(accelerator.device) for key, value in batch.items()}
        with autocast():
            loss = model(**batch).loss
        accelerator.backward(loss)
        return loss
    rank, count = (ranks.index, ranks.count) if ranks else (0, 1)
    # a Python number: FSDP casts floating tensors among the inputs to its compute dtype, and bf16 would round it
    tokens_per_rank = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum()) / count
    total = torch.zeros((), device=accelerator.device)
    for micro in micro_batches(batch, rank, count, settings.accumulation_steps):
        micro = {key: value.to(accelerator.device) for key, value in micro.items()}
        with autocast():
            loss = model(**micro, num_items_in_batch=tokens_per_rank).loss
        accelerator.backward(loss)
        total += loss.detach().float()
    return ranks.mean(total) if ranks else total


def micro_batches(batch: dict[str, torch.Tensor], rank: int, ranks: int, accumulation: int) -> list[dict[str, torch.Tensor]]:
    """Rank `rank`'s micro-batches of a batch (tensors of shape (rows, width)): its rows are the rank-th of
    `ranks` contiguous, near-equal parts, cut into `accumulation` parts; every part keeps the batch's width."""
    rows = batch["input_ids"].shape[0]
    if rows < ranks * accumulation:
        raise ValueError(f"a batch of {rows} examples cannot give {ranks} processes {accumulation} micro-batches each")
    parts = {key: value.tensor_split(ranks)[rank].tensor_split(accumulation) for key, value in batch.items()}
    return [{key: parts[key][index] for key in batch} for index in range(accumulation)]


def pad_batch(
    sequences: Sequence[tuple[list[int], list[int]]], pad_id: int, max_length: int, multiple: int = 1
) -> dict[str, torch.Tensor]:
    """Right-pad (input_ids, labels) pairs into a batch, truncating to `max_length`; the width is rounded up to a
    `multiple` (so that batches repeat a few shapes, whose kernels and memory blocks a GPU then reuses)."""
    longest = max(len(ids) for ids, _ in sequences)
    length = min(-(-longest // multiple) * multiple, max_length)
    input_ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    labels = torch.full((len(sequences), length), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for row, (ids, target) in enumerate(sequences):
        ids, target = ids[:length], target[:length]
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(target)] = torch.tensor(target)
        attention_mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


GROUP_WINDOW_BATCHES = 50  # length grouping sorts windows of this many batches (Hugging Face's megabatch_mult)


def epoch_batches(
    examples: Sequence[tuple[list[int], list[int]]],
    *,
    batch_size: int,
    pad_id: int,
    max_length: int,
    seed: int,
    group_by_length: bool = False,
    pad_multiple: int = 1,
) -> Iterator[dict[str, torch.Tensor]]:
    """Endless batches over `examples`, reshuffled each epoch from `seed`; with `group_by_length`, examples of
    similar length share a batch (see `length_grouped`)."""
    rng = random.Random(seed)
    while True:
        order = list(range(len(examples)))
        rng.shuffle(order)
        chunks = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
        if len(chunks[-1]) < batch_size <= len(order):
            chunks.pop()  # drop the ragged tail: every step the same size, so tokens/s compares across steps
        if group_by_length:
            chunks = length_grouped(chunks, [min(len(ids), max_length) for ids, _ in examples], rng)
        for chunk in chunks:
            yield pad_batch([examples[i] for i in chunk], pad_id, max_length, pad_multiple)


def length_grouped(chunks: list[list[int]], lengths: Sequence[int], rng: random.Random) -> list[list[int]]:
    """The same examples regrouped so that a batch holds similar lengths: each window of GROUP_WINDOW_BATCHES
    shuffled batches is sorted by length and cut again into batches of the same sizes, and the batches of the
    epoch are then shuffled (so length does not follow the step). Batches keep their sizes and the epoch its
    examples; only who shares a batch changes."""
    grouped = []
    for start in range(0, len(chunks), GROUP_WINDOW_BATCHES):
        window = chunks[start : start + GROUP_WINDOW_BATCHES]
        by_length = sorted((i for chunk in window for i in chunk), key=lambda i: lengths[i])
        for chunk in window:
            grouped.append(by_length[: len(chunk)])
            by_length = by_length[len(chunk) :]
    rng.shuffle(grouped)
    return grouped
