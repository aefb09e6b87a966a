import json
import time

import pytest
import torch

from ftcompare.train.loop import IGNORE_INDEX, TrainSettings, epoch_batches, pad_batch, train, trainable_parameters_in
from tests.helpers import copy_examples, tiny_llama


def test_pad_batch_right_pads_and_masks():
    batch = pad_batch([([5, 6, 7], [IGNORE_INDEX, 6, 7]), ([8], [8])], pad_id=0, max_length=16)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 6, 7], [8, IGNORE_INDEX, IGNORE_INDEX]]
    assert pad_batch([([1, 2, 3, 4], [1, 2, 3, 4])], pad_id=0, max_length=2)["input_ids"].tolist() == [[1, 2]]


def test_a_batch_width_rounds_up_to_the_multiple_and_no_further_than_max_length():
    batch = pad_batch([([5, 6, 7], [5, 6, 7]), ([8], [8])], pad_id=0, max_length=16, multiple=8)
    assert batch["input_ids"].shape == (2, 8) and batch["attention_mask"].sum() == 4
    assert (batch["labels"][:, 3:] == IGNORE_INDEX).all()  # the rounding adds no target
    assert pad_batch([([1] * 15, [1] * 15)], pad_id=0, max_length=12, multiple=8)["input_ids"].shape == (1, 12)


def test_epoch_batches_are_seeded_and_full_size():
    examples = copy_examples(10)
    first = [
        b["input_ids"].tolist() for _, b in zip(range(6), epoch_batches(examples, batch_size=4, pad_id=0, max_length=8, seed=1))
    ]
    again = [
        b["input_ids"].tolist() for _, b in zip(range(6), epoch_batches(examples, batch_size=4, pad_id=0, max_length=8, seed=1))
    ]
    assert first == again
    assert all(len(b) == 4 for b in first)


def _ragged_examples(count: int, seed: int = 0) -> list[tuple[list[int], list[int]]]:
    import random

    rng = random.Random(seed)
    return [([i + 1] * length, [i + 1] * length) for i, length in enumerate(rng.randint(1, 60) for _ in range(count))]


def _epoch(examples, **kwargs) -> list[dict]:
    batches = epoch_batches(examples, batch_size=8, pad_id=0, max_length=64, seed=3, **kwargs)
    return [next(batches) for _ in range(len(examples) // 8)]


def test_length_grouping_keeps_each_epochs_examples_and_batch_sizes_and_cuts_padding():
    examples = _ragged_examples(800)
    plain, grouped = _epoch(examples), _epoch(examples, group_by_length=True)

    def who(batches):  # each example is its id repeated, so the first column names it
        return sorted(int(row[0]) for batch in batches for row in batch["input_ids"])

    def padded(batches):
        return 1 - sum(int(b["attention_mask"].sum()) for b in batches) / sum(b["attention_mask"].numel() for b in batches)

    assert who(grouped) == who(plain) == list(range(1, 801))
    assert {len(b["input_ids"]) for b in grouped} == {8}
    assert padded(plain) > 0.3 and padded(grouped) < 0.05
    # batches are shuffled after grouping: lengths do not rise or fall with the step
    widths = [b["input_ids"].shape[1] for b in grouped]
    assert widths != sorted(widths) and widths != sorted(widths, reverse=True)


def test_training_records_its_padding_and_warm_up(tmp_path):
    model = tiny_llama()
    batches = epoch_batches(copy_examples(), batch_size=8, pad_id=0, max_length=8, seed=0)
    result = train(model, batches, TrainSettings(lr=1e-2, steps=4, throughput_skip_steps=2))
    assert result.token_slots >= result.tokens > 0
    assert 0 < result.warmup_s <= result.wall_s and result.steady_skipped_steps == 2


def test_training_lowers_the_completion_loss_and_logs(tmp_path):
    model = tiny_llama()
    examples = copy_examples()
    batch = pad_batch(examples, pad_id=0, max_length=8)
    before = model(**batch).loss.item()
    settings = TrainSettings(lr=1e-2, steps=30, warmup_steps=3, log_every=10, seed=0)
    result = train(
        model, epoch_batches(examples, batch_size=8, pad_id=0, max_length=8, seed=0), settings, log_path=tmp_path / "log.jsonl"
    )
    after = model(**batch).loss.item()
    assert after < before * 0.5
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [10, 20, 30]
    assert all(r["tokens_per_s"] > 0 and r["peak_memory_mb"] > 0 for r in log)
    assert result.tokens == 30 * 8 * 5 and result.loss_tokens == 30 * 8 * 3
    assert result.trainable_params == sum(p.numel() for p in model.parameters())


def test_training_is_deterministic_for_a_seed():
    def run():
        model = tiny_llama()
        train(
            model,
            epoch_batches(copy_examples(), batch_size=8, pad_id=0, max_length=8, seed=0),
            TrainSettings(lr=1e-2, steps=5, seed=0),
        )
        return [p.detach().clone() for p in model.parameters()]

    assert all(torch.equal(a, b) for a, b in zip(run(), run()))


def test_frozen_parameters_stay_frozen():
    model = tiny_llama()
    model.model.embed_tokens.weight.requires_grad_(False)
    frozen = model.model.embed_tokens.weight.detach().clone()
    result = train(
        model, epoch_batches(copy_examples(), batch_size=8, pad_id=0, max_length=8, seed=0), TrainSettings(lr=1e-2, steps=3)
    )
    assert torch.equal(model.model.embed_tokens.weight, frozen)
    assert result.trainable_params == sum(p.numel() for p in model.parameters() if p.requires_grad)


def _bf16_weights_moved(master: torch.dtype | None) -> tuple[float, set]:
    """Train the bf16 tiny model 20 steps at lr 1e-5 (each Adam step ~1e-5, under half of bf16's spacing
    for most weights of ~0.02): the fraction of its weights that changed, and its dtypes afterwards."""
    model = tiny_llama(dtype=torch.bfloat16)
    before = [p.detach().clone() for p in model.parameters()]
    with trainable_parameters_in(model, master):
        train(
            model,
            epoch_batches(copy_examples(), batch_size=8, pad_id=0, max_length=8, seed=0),
            TrainSettings(
                lr=1e-5, steps=20, schedule="constant", grad_clip=None, autocast_dtype=torch.bfloat16 if master else None
            ),
        )
    changed = sum(int((a != b).sum()) for a, b in zip(before, model.parameters()))
    return changed / sum(p.numel() for p in before), {p.dtype for p in model.parameters()}


def test_fp32_master_weights_keep_the_small_updates_that_pure_bf16_rounds_away():
    pure, pure_dtypes = _bf16_weights_moved(None)
    master, master_dtypes = _bf16_weights_moved(torch.float32)
    assert pure < 0.3 and master > 0.7, (pure, master)
    assert pure_dtypes == master_dtypes == {torch.bfloat16}  # handed back in the model's dtype


def test_only_trainable_parameters_are_held_in_the_master_dtype():
    model = tiny_llama(dtype=torch.bfloat16)
    model.model.embed_tokens.weight.requires_grad_(False)
    with trainable_parameters_in(model, torch.float32):
        assert model.model.embed_tokens.weight.dtype == torch.bfloat16
        assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    with trainable_parameters_in(model, None):
        assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_steady_state_throughput_leaves_out_the_first_steps():
    model, slow_first = tiny_llama(), lambda step, loss: time.sleep(0.5) if step == 1 else None
    result = train(
        model,
        epoch_batches(copy_examples(), batch_size=8, pad_id=0, max_length=8, seed=0),
        TrainSettings(lr=1e-2, steps=8, throughput_skip_steps=2),
        on_step=slow_first,
    )
    assert result.steady_skipped_steps == 2 and result.steady_tokens == 6 * 8 * 5
    # the slow first step is in the warm-up, not in the steady window (no ratio of timings: CI may be loaded)
    assert result.warmup_s >= 0.5 and result.steady_wall_s <= result.wall_s - 0.5
    short = train(
        tiny_llama(),
        epoch_batches(copy_examples(), batch_size=8, pad_id=0, max_length=8, seed=0),
        TrainSettings(lr=1e-2, steps=3),
    )
    assert short.steady_skipped_steps == 1 and short.steady_tokens == 2 * 8 * 5  # never more than half the steps


def test_the_optimizer_settings_are_used_and_recorded():
    model = tiny_llama()
    settings = TrainSettings(lr=1e-2, steps=4, warmup_steps=1, schedule="linear", weight_decay=0.1, betas=(0.8, 0.99), eps=1e-6)
    created = []
    original = torch.optim.AdamW

    class Recording(original):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            created.append(self.defaults)

    torch.optim.AdamW = Recording
    try:
        result = train(model, epoch_batches(copy_examples(), batch_size=8, pad_id=0, max_length=8, seed=0), settings)
    finally:
        torch.optim.AdamW = original
    assert created[0]["betas"] == (0.8, 0.99) and created[0]["eps"] == 1e-6 and created[0]["weight_decay"] == 0.1
    assert result.recipe == {
        "optimizer": "AdamW",
        "lr": 1e-2,
        "betas": [0.8, 0.99],
        "eps": 1e-6,
        "weight_decay": 0.1,
        "schedule": "linear",
        "warmup_steps": 1,
        "steps": 4,
        "grad_clip": 1.0,
    }


class _TimedModel:
    """generate() does nothing; the clock is scripted: each call takes the next of `durations` seconds."""

    def __init__(self, durations):
        self.durations, self.now = list(durations), 0.0

    def clock(self):
        return self.now

    def generate(self, **kwargs):
        self.now += self.durations.pop(0)


# kept beside the training throughput: both are the speed numbers of a run (latency lives in evaluate/generation.py)
@pytest.mark.parametrize("timed, median_s", [([1.0, 3.0], 2.0), ([1.0, 3.0, 2.0], 2.0), ([5.0], 5.0)])
def test_latency_is_the_true_median_of_the_timed_runs(monkeypatch, timed, median_s):
    from ftcompare.evaluate import generation

    model = _TimedModel([100.0, *timed])  # the warm-up run is slow and left out
    monkeypatch.setattr(generation.time, "perf_counter", model.clock)
    ids = torch.ones((4, 3), dtype=torch.long)
    tokens_per_s = generation.timed_generate_tokens_per_s(
        model, ids, torch.ones_like(ids), new_tokens=8, repeats=len(timed), pad_token_id=0
    )
    assert tokens_per_s == pytest.approx(4 * 8 / median_s)
