"""The training stage of a run: the method applied to the base, trained on each task in order (one task
unless the study is a sequence), or the weights an earlier session saved reloaded.

Records: `<run>/train.json`, `<run>/train_log.jsonl` and `<run>/weights/`; in a sequence, each stage but
the last leaves `<run>/stage<i>-<task>/` with its weights, training log, `stage.json` (its training record
and its scores on every task) and `samples.jsonl`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path

import torch
from accelerate import Accelerator

from ftcompare.analyze.intervene import select_layers
from ftcompare.console import console, step_progress
from ftcompare.context import StudyContext
from ftcompare.data.problems import Problem
from ftcompare.data.tasks import finetune_examples, training_subset
from ftcompare.evaluate.forgetting import forgetting_matrix, mean_token_loss
from ftcompare.evaluate.stage import evaluate_suite, generation_backend
from ftcompare.matrix import RunSpec
from ftcompare.models.base import load_model
from ftcompare.models.methods import apply_method, load_tuned, method_record, save_tuned
from ftcompare.runs.store import BASE_DIR, RunDir, read_json, write_json, write_jsonl
from ftcompare.runs.tracking import RunTracker
from ftcompare.train.loop import TrainSettings, epoch_batches, optimizer_steps, seed_everything, train, trainable_parameters_in

# a run's records measured on its trained model: discarded when the model is trained again
RECORDS_OF_TRAINED_MODEL = (
    "eval.json",
    "samples.jsonl",
    "spectral.json",
    "representations.json",
    "intervene.json",
    "metrics.json",
)


def train_stage(
    run: RunSpec, run_dir: RunDir, context: StudyContext, tracker: RunTracker | None = None
) -> torch.nn.Module | None:
    """Train the run on each task in order (one task unless the study is a sequence) and return the model,
    unmerged; or reload what an earlier session trained. Each training log record also goes to `tracker`, at
    its step counted from the sequence's start (what is reloaded is not logged again).

    In a sequence the same model (the same adapter, for LoRA) keeps training on the next task. After each
    stage but the last, every task's test suite is scored greedily and the held-out loss measured (the
    last stage's scores are the run's own evaluation); each stage leaves its folder with a record, so an
    interrupted sequence resumes at its first unrecorded stage.

    Under a distributed launch every rank calls this: they train together, rank 0 alone writes the records and
    gets the whole model; the other ranks get None."""
    if context.on_rank_0(lambda: run_dir.has_trained_weights):
        if not context.writes:
            return None
        console.print("  train: finished earlier, reloading the saved weights")
        return load_trained(run, run_dir.file("weights"), context)
    # trained before but its weights are gone (a results folder moved without them): train again, and say so,
    # since the model evaluated is then a retrained one (same seed and data), not the one first recorded
    retrained = run_dir.has("train.json")
    if retrained and context.writes:  # what was measured on the lost model does not describe the retrained one
        for name in RECORDS_OF_TRAINED_MODEL:
            run_dir.file(name).unlink(missing_ok=True)
    layers = adapted_layers(run, context)
    sequence = len(context.stages) > 1
    records = []
    for index, (name, _) in enumerate(context.stages[:-1]):
        record_file = stage_dir(run_dir, index, name) / "stage.json"
        if not record_file.is_file():
            break
        records.append(read_json(record_file))
    if records:
        console.print(f"  train: resuming the sequence after {records[-1]['task']}")
        model = load_trained(run, stage_dir(run_dir, len(records) - 1, records[-1]["task"]) / "weights", context, trainable=True)
    else:
        seed_everything(run.seed)
        model = apply_method(load_model(context.base, context.device), run, layers)
    for index, (name, splits) in enumerate(context.stages):
        if index < len(records):
            continue
        last = index == len(context.stages) - 1
        folder = stage_dir(run_dir, index, name) if sequence and not last else run_dir.path
        log_name = f"train_log.{name}.jsonl" if sequence and last else "train_log.jsonl"
        if sequence:
            console.print(f"  stage {index + 1}/{len(context.stages)}: {name}")
        offset = sum(record["steps"] for record in records)  # the steps of the stages before this one
        on_log = (lambda record, offset=offset: tracker.log_training(record, offset)) if tracker else None
        result, model = fit(model, splits.train, run, context, Path(folder) / log_name, on_log)
        if context.ranks:  # (a sequence is refused under a launch: this is its only stage)
            model = context.ranks.gather(model, lambda: apply_method(load_model(context.base, context.device), run, layers))
            if model is None:
                return None
        save_tuned(model, Path(folder) / "weights", run)
        if not run.is_adapter:  # a whole model: with its tokenizer it is a folder any server loads (vLLM)
            context.tokenizer.save_pretrained(Path(folder) / "weights")
        record = {"task": name, **result}
        if not last:
            record["evaluation"] = stage_evaluation(model, run, context, Path(folder))
            write_json(Path(folder) / "stage.json", record)
        records.append(record)
    total = sum(p.numel() for p in model.parameters())
    write_json(
        run_dir.file("train.json"),
        {
            **training_totals(records),
            "lr": run.lr,
            "total_params": total,
            "trainable_fraction": records[-1]["trainable_params"] / total,
            "layers": layers,
            "method": method_record(run, context.base.dtype),
            "dtype": str(context.base.dtype),
            "device": str(context.device),
            **({"retrained_without_saved_weights": True} if retrained else {}),
            **({"stages": [{k: v for k, v in r.items() if k != "evaluation"} for r in records]} if sequence else {}),
        },
    )
    return model


def adapted_layers(run: RunSpec, context: StudyContext) -> list[int] | None:
    """Layer-wise LoRA: the decoder layers this run adapts (None: all of them)."""
    if run.layer_fraction is None:
        return None
    return select_layers(context.layer_scores, run.layer_fraction)


def load_trained(run: RunSpec, weights: Path, context: StudyContext, trainable: bool = False) -> torch.nn.Module:
    """What a training stage saved: the whole model (full FT), or the base with its PEFT adapter (unmerged)."""
    if not run.is_adapter:  # the saved folder is a whole model, loaded as the base is (its dtype and device)
        model = load_model(replace(context.base, path=str(weights), revision=None), context.device)
        model.requires_grad_(trainable)
        return model
    return load_tuned(load_model(context.base, context.device), run, weights, trainable=trainable)


def stage_dir(run_dir: RunDir, index: int, name: str) -> Path:
    """Where a sequence's stage `index` (0-based) keeps its weights, training log, evaluation and record."""
    return run_dir.file(f"stage{index + 1}-{name}")


def fit(
    model: torch.nn.Module,
    problems: Sequence[Problem],
    run: RunSpec,
    context: StudyContext,
    log_path: Path,
    on_log: Callable[[dict], None] | None = None,
) -> tuple[dict, torch.nn.Module]:
    """Fine-tune `model` in place on the run's fraction of `problems`; the training record and the model.
    `on_log` hears every training log record as it is written."""
    training = context.config.training
    ranks = context.ranks
    examples = finetune_examples(training_subset(problems, run.data_fraction), context.tokenizer, training.max_length)
    steps = optimizer_steps(len(examples), training.epochs, training.batch_size, training.max_steps)
    # fp32 master weights for a bf16 base (the config refuses them for fp16, which would need loss scaling)
    mixed = training.master_weights == "float32" and context.base.dtype == torch.bfloat16
    settings = TrainSettings(
        lr=run.lr,
        steps=steps,
        warmup_steps=round(steps * training.warmup_ratio),
        schedule=training.schedule if training.schedule != "constant" else "constant_with_warmup",
        weight_decay=training.weight_decay,
        betas=training.adam_betas,
        eps=training.adam_eps,
        grad_clip=training.grad_clip,
        log_every=training.log_every,
        seed=run.seed,
        autocast_dtype=torch.bfloat16 if mixed else None,
        accumulation_steps=training.gradient_accumulation_steps,
        activation_checkpointing=training.activation_checkpointing,
    )
    batches = epoch_batches(
        examples,
        batch_size=training.batch_size,
        pad_id=context.tokenizer.pad_token_id,
        max_length=training.max_length,
        seed=run.seed,
        group_by_length=training.batching == "length_grouped",
        pad_multiple=training.pad_to_multiple_of,
    )
    accelerator = Accelerator(cpu=context.device.type == "cpu")
    if context.writes:
        log_path.parent.mkdir(parents=True, exist_ok=True)
    with trainable_parameters_in(model, torch.float32 if mixed else None), step_progress(console, "  train", steps) as advance:
        result = train(
            model,
            batches,
            settings,
            accelerator=accelerator,
            log_path=log_path if context.writes else None,
            on_step=lambda step, loss: advance(step, loss),
            on_log=on_log,
            ranks=ranks,
        )
    console.print(
        f"  train: {steps} steps, final loss {result.final_loss:.3f}, {result.steady_tokens_per_s:,.0f} tokens/s "
        f"after the first {result.steady_skipped_steps} steps ({result.tokens_per_s:,.0f} over all), "
        f"peak {result.peak_memory_mb:,.0f} MB, {1 - result.tokens / result.token_slots:.0%} of token slots padding"
    )
    record = {
        **asdict(result),
        "recipe": {**result.recipe, "warmup_ratio": training.warmup_ratio},
        "batching": training.batching,
        "padded_fraction": 1 - result.tokens / result.token_slots,
        "examples": len(examples),
        "epochs": steps * training.batch_size / len(examples),
        "master_weights": "float32" if mixed else str(context.base.dtype).removeprefix("torch."),
        "autocast": "bfloat16" if mixed else None,
        **({"gradient_accumulation_steps": settings.accumulation_steps} if settings.accumulation_steps > 1 else {}),
        **({"activation_checkpointing": True} if settings.activation_checkpointing else {}),
    }
    if ranks:  # the counts and losses are the whole batch's; peak memory is rank 0's
        record["distributed"] = {
            "strategy": ranks.strategy,
            "processes": ranks.count,
            "examples_per_process_per_step": training.batch_size // ranks.count,
            "peak_memory": "rank 0's",
        }
    return record, accelerator.unwrap_model(model)


def training_totals(records: Sequence[dict]) -> dict:
    """One training record from a sequence's stages (a single stage's record is itself): sums of steps,
    tokens and time, throughput over the whole, the highest peak memory, the last stage's final loss."""
    if len(records) == 1:
        return dict(records[0])
    tokens, wall_s = sum(r["tokens"] for r in records), sum(r["wall_s"] for r in records)
    slots = sum(r.get("token_slots", 0) for r in records)
    steady_tokens, steady_s = sum(r.get("steady_tokens", 0) for r in records), sum(r.get("steady_wall_s", 0) for r in records)
    return {
        "task": "+".join(r["task"] for r in records),
        "steps": sum(r["steps"] for r in records),
        "tokens": tokens,
        "token_slots": slots,
        "padded_fraction": 1 - tokens / slots if slots else None,
        "batching": records[-1].get("batching"),
        "loss_tokens": sum(r["loss_tokens"] for r in records),
        "wall_s": wall_s,
        "tokens_per_s": tokens / wall_s if wall_s else 0.0,
        # each stage leaves out its own first steps (the model and optimizer are set up again per stage)
        "steady_tokens": steady_tokens,
        "steady_wall_s": steady_s,
        "steady_tokens_per_s": steady_tokens / steady_s if steady_s else 0.0,
        "steady_skipped_steps": sum(r.get("steady_skipped_steps", 0) for r in records),
        "warmup_s": sum(r.get("warmup_s", 0) for r in records),
        # the recipe is the same for every stage but its step counts: those are in `stages`
        "recipe": {k: v for k, v in records[-1]["recipe"].items() if k not in ("steps", "warmup_steps")},
        "peak_memory_mb": max(r["peak_memory_mb"] for r in records),
        "memory_measure": records[-1]["memory_measure"],
        "final_loss": records[-1]["final_loss"],
        "trainable_params": records[-1]["trainable_params"],
        "examples": sum(r["examples"] for r in records),
        "epochs": None,
    }


def stage_evaluation(model: torch.nn.Module, run: RunSpec, context: StudyContext, folder: Path) -> dict:
    """After a sequence stage: greedy pass@1 on every task's test suite and the held-out loss (the model
    stays unmerged: it keeps training)."""
    limit = context.config.evaluation.limit
    model.eval()
    scores, records = {}, []
    for name, _ in context.stages:
        suite = f"{name}/test"
        problems = context.task.suites[suite][:limit] if limit else context.task.suites[suite]
        suite_records, metrics = evaluate_suite(model, problems, suite, context, seed=run.seed, greedy_only=True)
        scores[name] = metrics["greedy"]["pass@1"]
        records.extend(suite_records)
    write_jsonl(folder / "samples.jsonl", records)
    # the model keeps training in memory: transformers generates, whatever evaluation.backend says
    result = {"pass@1": scores, "backend": generation_backend(model, context.config.evaluation.backend)}
    if context.heldout:
        result["heldout_loss"] = mean_token_loss(model, context.headline_heldout)
    console.print("  after this stage: greedy pass@1 " + ", ".join(f"{k} {v:.2f}" for k, v in scores.items()))
    return result


def sequence_matrix(run_dir: RunDir, context: StudyContext, evaluation: dict) -> dict:
    """The forgetting matrix of a sequential run: pass@1 on task j (columns) after stage i (rows), the base
    first and the run's own final evaluation last, with the held-out loss after each stage."""
    names = [name for name, _ in context.stages]
    base = read_json(context.experiment / BASE_DIR / "eval.json")

    def row(suites: dict, forgetting: dict) -> dict:
        return {
            "pass@1": {n: suites[f"{n}/test"]["greedy"]["pass@1"] for n in names},
            "heldout_loss": forgetting.get("heldout_loss"),
        }

    rows = [row(base["suites"], base["forgetting"])]
    for index, name in enumerate(names[:-1]):
        rows.append(read_json(stage_dir(run_dir, index, name) / "stage.json")["evaluation"])
    rows.append(row(evaluation["suites"], evaluation["forgetting"]))
    return forgetting_matrix(names, rows)
