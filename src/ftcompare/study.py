"""A study, stage by stage: config → run matrix → base + method → train → evaluate → analyse → record.

`run_study` reads top to bottom; each stage is a function over plain records, and each run's stages
leave their record in the run directory so a re-run skips what is finished.
"""

from __future__ import annotations

import math
import platform
import shutil
import sys
import time
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import torch
from accelerate import Accelerator
from peft import PeftModel

from ftcompare import __version__
from ftcompare.analyze.intervene import scale_model_intruders, select_layers
from ftcompare.analyze.similarity import (attention_distance, attention_entropy, hidden_states_and_attentions, layer_io_cka,
                                          layerwise_cka)
from ftcompare.analyze.spectral import SpectrumCache, analyze_matrix, summarize
from ftcompare.config import (BaseModelConfig, EvaluationConfig, FullMethod, RepresentationsConfig, RunSpec, SpectralConfig,
                              StudyConfig, expand, fingerprint, selection_group)
from ftcompare.console import console, step_progress
from ftcompare.data.perturb import family_variants
from ftcompare.data.problems import Problem, TaskSplits
from ftcompare.data.tasks import finetune_examples, load_benchmark, load_study_tasks, training_subset
from ftcompare.evaluate.forgetting import forgetting_matrix, heldout_chunks, mean_token_loss
from ftcompare.evaluate.generation import SamplingSettings, check_compile, generate, generation_tokens_per_s
from ftcompare.evaluate.repair import REPAIR_F1_KEYS, repair_f1_scores
from ftcompare.evaluate.robustness import family_robustness
from ftcompare.evaluate.scoring import SandboxSettings, execute_records, pass_at_k_table, sample_records
from ftcompare.models.base import BaseSource, load_model, load_tokenizer, resolve_base
from ftcompare.models.methods import (EXACT_DELTA, EXACT_DELTA_RULE, adapted_weight_names, apply_method, as_out_in, load_tuned,
                                      merge_adapter, method_record, quantize_4bit, quantized_base_weights, save_tuned,
                                      weight_updates)
from ftcompare.runs.store import (BASE_DIR, DONE_FILE, STUDY_FILE, RunDir, check_writable, experiment_dir, read_json,
                                  writable_folder, write_json, write_jsonl)
from ftcompare.runs.workers import CLAIM_FILE, Job, Worker, work_through
from ftcompare.train.loop import TrainSettings, epoch_batches, seed_everything, train, trainable_parameters_in

@dataclass(frozen=True)
class Probe:
    """A fixed probe batch and the base model's hidden states and attention maps on it."""

    input_ids: torch.Tensor  # (batch, tokens)
    attention_mask: torch.Tensor  # (batch, tokens), 1 for real tokens
    base_hidden: list[torch.Tensor]  # layers + 1 of (batch, tokens, dim)
    base_attentions: list[torch.Tensor]  # layers of (batch, heads, tokens, tokens)


class StudyMismatch(RuntimeError):
    """A run directory holds results of a different config under the same run id."""


@dataclass
class StudyContext:
    """What every run of a study shares: resolved once, read by the stages."""

    config: StudyConfig
    device: torch.device
    base: BaseSource
    tokenizer: object
    stages: list[tuple[str, TaskSplits]]  # the tasks trained in order (one unless the study is a sequence)
    task: TaskSplits  # every evaluation suite
    heldout: dict[str, torch.Tensor]  # forgetting corpora by name, the headline one first (empty: no forgetting)
    base_weights: dict[str, torch.Tensor]
    spectra: SpectrumCache
    experiment: Path
    probes: dict[str, "Probe"]
    layer_scores: list[float] | None  # per decoder layer, the base's input-output CKA (layer-wise LoRA)
    worker: Worker | None = None  # which of several workers on this experiment folder this process is

    @property
    def primary_problems(self) -> tuple[Problem, ...]:
        return self.task.suites[self.config.primary_suite]


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: cuda was asked for but torch sees no CUDA device")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def environment(worker: Worker | None = None) -> dict:
    import peft
    import transformers

    return {
        "ftcompare": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "cpu_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        **({"workers": f"{worker.count} ({worker.sharing} on this device)"} if worker else {}),
    }


def run_study(config: StudyConfig, output: Path, worker: Worker | None = None) -> Path:
    """Run every cell of the study's matrix that is not finished yet; return the experiment folder.
    With several workers on one folder, each does the jobs no other has claimed and waits for the rest
    where a later stage needs them (learning-rate selection needs every selection score)."""
    device = resolve_device(config.device)
    check_compile(config.evaluation.compile, device)  # before anything trains
    runs = expand(config)
    experiment = check_runs_match(config, output)
    # the base and every task's data load before anything is written: bad data fails leaving no stub behind
    context = prepare(config, device, experiment, worker)
    bind_runs(config, experiment)
    write_json(experiment / STUDY_FILE, {
        "config": config.model_dump(mode="json"),
        "runs": [run.model_dump(mode="json") for run in runs],
        "base": {"name": context.base.name, "path": context.base.path, "dtype": str(context.base.dtype),
                 "provenance": context.base.provenance},
        "device": str(device),
        "environment": environment(worker),
        "updated_at": datetime.now(timezone.utc).isoformat(),
    })
    base_dir = RunDir(experiment / BASE_DIR)
    base_job = Job(base_dir.file(CLAIM_FILE), lambda: base_dir.has("metrics.json"), lambda: evaluate_base(context))
    if config.training.select_lr_on:
        work_through([base_job, *(selection_job(run, context) for run in runs)])
        runs = select_learning_rates(runs, context)
    else:
        work_through([base_job])  # every run's forgetting is read against the base's
    work_through([run_job(index, len(runs), run, context) for index, run in enumerate(runs, start=1)])
    return experiment


def check_runs_match(config: StudyConfig, output: Path) -> Path:
    """Refuse run directories an earlier, different config made (before anything trains: a clash must not
    cost a sweep), writing nothing; return the experiment folder."""
    experiment = experiment_dir(output, config.experiment)
    check_writable(experiment)
    for run in [*expand(config), None]:
        run_dir = RunDir(experiment / (run.run_id if run else BASE_DIR))
        if run_dir.has("run.json") and not holds_this_run(run_dir, run, config) and not is_stub(run_dir):
            raise StudyMismatch(f"{run_dir.path} holds a run of a different config; use another experiment name or --output")
    return experiment


def bind_runs(config: StudyConfig, experiment: Path) -> None:
    """Record in each run directory (and the base's) which run of which config it holds."""
    writable_folder(experiment)
    for run in [*expand(config), None]:
        bind_run_dir(run, RunDir(experiment / (run.run_id if run else BASE_DIR)), config)


def worker_tag(context: StudyContext) -> str:
    return f" [dim]{context.worker.label}[/]" if context.worker else ""


def run_job(index: int, total: int, run: RunSpec, context: StudyContext) -> Job:
    run_dir = RunDir(context.experiment / run.run_id)

    def do() -> None:
        console.print(f"[bold]({index}/{total}) {run.run_id}[/] ({run.label}, lr {run.lr:g}, seed {run.seed})" + worker_tag(context))
        execute_run(run, run_dir, context)

    return Job(run_dir.file(CLAIM_FILE), lambda: run_dir.done, do)


def selection_job(run: RunSpec, context: StudyContext) -> Job:
    """Train a run and score it greedily on the selection suite (no test suite is touched)."""
    run_dir = RunDir(context.experiment / run.run_id)
    suite = context.config.training.select_lr_on

    def do() -> None:
        console.print(f"[bold]select {run.run_id}[/] ({run.label}, lr {run.lr:g}, seed {run.seed})" + worker_tag(context))
        model = merge_adapter(train_stage(run, run_dir, context)).eval()
        limit = context.config.evaluation.limit
        problems = context.task.suites[suite][:limit] if limit else context.task.suites[suite]
        records, metrics = evaluate_suite(model, problems, suite, context, seed=run.seed, greedy_only=True)
        write_jsonl(run_dir.file("selection_samples.jsonl"), records)
        write_json(run_dir.file("selection.json"), {"suite": suite, **metrics})

    return Job(run_dir.file(CLAIM_FILE), lambda: run_dir.done or run_dir.has("selection.json"), do)


def select_learning_rates(runs: list[RunSpec], context: StudyContext) -> list[RunSpec]:
    """Learning-rate selection, from every run's selection score: per group of runs that differ only in
    the lr multiplier (and seed), keep the multiplier with the best mean pass@1 (ties: the smaller rate).
    Returns the selected runs, which go on to the full evaluation; the others are recorded as finished
    with their selection score only."""
    suite = context.config.training.select_lr_on
    scores: dict[str, dict[float, list[float]]] = {}
    for run in runs:
        pass1 = read_json(RunDir(context.experiment / run.run_id).file("selection.json"))["greedy"]["pass@1"]
        scores.setdefault(selection_group(run.run_id), {}).setdefault(run.lr_multiplier, []).append(pass1)
    best = {group: max(sorted(by_lr), key=lambda m: sum(by_lr[m]) / len(by_lr[m])) for group, by_lr in scores.items()}
    selected = [run for run in runs if best[selection_group(run.run_id)] == run.lr_multiplier]
    for run in runs:
        run_dir = RunDir(context.experiment / run.run_id)
        if run in selected or run_dir.done:
            continue
        selection = read_json(run_dir.file("selection.json"))
        write_json(run_dir.file("metrics.json"), {
            **run.model_dump(mode="json"), "label": run.label, "primary_suite": context.config.primary_suite,
            "selection_suite": suite, "selected": False, "train": read_json(run_dir.file("train.json")),
            "suites": {suite: {**{k: v for k, v in selection.items() if k != "suite"}, "in_domain": True}}})
        if not context.config.save_weights:
            shutil.rmtree(run_dir.file("weights"), ignore_errors=True)
        write_json(run_dir.file(DONE_FILE), {"finished_at": datetime.now(timezone.utc).isoformat(), "selected": False})
    console.print("learning rates selected on " + suite + ": " + ", ".join(f"{g} ×{m:g}" for g, m in best.items()))
    return selected


def prepare(config: StudyConfig, device: torch.device, experiment: Path, worker: Worker | None = None) -> StudyContext:
    if worker:
        worker.cap_gpu_memory(device)
    base = resolve_base(config.base, device, console)
    tokenizer = load_tokenizer(base)
    forgetting = config.evaluation.forgetting
    heldout = {corpus: heldout_chunks(tokenizer, n_chunks=forgetting.n_chunks, chunk_tokens=forgetting.chunk_tokens, corpus=corpus)
               for corpus in (forgetting.corpora if forgetting else ())}
    model = load_model(base, torch.device("cpu"))
    names = adapted_weight_names(model, None)
    parameters = dict(model.named_parameters())
    base_weights = {name: parameters[name].detach().clone() for name in names}
    spectra = SpectrumCache(experiment / BASE_DIR / "svd", base.fingerprint)
    stages, task = load_study_tasks(config, tokenizer)
    probes, layer_scores = {}, None
    wants_layer_scores = any(run.layer_fraction is not None for run in expand(config))
    if config.analyses.representations or wants_layer_scores:
        model = load_model(base, device)
        if config.analyses.representations:
            probes = base_probes(config.analyses.representations, model, tokenizer, task.suites[config.primary_suite],
                                 heldout.get("stdlib"))
        if wants_layer_scores:
            layer_scores = layer_similarity_scores(model, tokenizer, stages[0][1].train,
                                                   config.analyses.representations or RepresentationsConfig())
            write_json(experiment / BASE_DIR / "layer_scores.json", {
                "rule": "CKA(input, output) of each decoder layer of the base on the first training examples; "
                        "layer-wise LoRA adapts the ceil(f·L) layers with the lowest score",
                "scores": layer_scores})
    return StudyContext(config, device, base, tokenizer, stages, task, heldout, base_weights, spectra, experiment, probes,
                        layer_scores, worker)


def probe_batch(tokenizer, texts: Sequence[str], length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded token ids (batch, tokens) of `texts` cut to `length` tokens, and their attention mask."""
    encoded = [ids[:length] for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]
    width = max(len(ids) for ids in encoded)
    input_ids = torch.full((len(encoded), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    for row, ids in enumerate(encoded):
        input_ids[row, : len(ids)], mask[row, : len(ids)] = torch.tensor(ids), 1
    return input_ids, mask


def base_probes(settings: RepresentationsConfig, model, tokenizer, problems: Sequence[Problem],
                heldout: torch.Tensor | None) -> dict[str, Probe]:
    """The probe sets, each with the base's hidden states and attentions (computed once per study)."""
    size, length = settings.probe_size, settings.probe_tokens
    batches = {"task": probe_batch(tokenizer, [p.prompt + p.completion for p in problems[:size]], length)}
    if heldout is not None:
        chunk = heldout[:size, :length]
        batches["pretraining"] = (chunk, torch.ones_like(chunk))
    device = next(model.parameters()).device
    probes = {}
    for name, (ids, attention_mask) in batches.items():
        hidden, attentions = hidden_states_and_attentions(model, ids.to(device), attention_mask.to(device))
        probes[name] = Probe(ids, attention_mask, hidden, attentions)
    return probes


def layer_similarity_scores(model, tokenizer, train: Sequence[Problem], settings: RepresentationsConfig) -> list[float]:
    """Per decoder layer, linear CKA between its input and output hidden states on the first `probe_size`
    training examples (prompt and reference completion, cut to `probe_tokens`), with the base model.
    Training inputs, not test ones: the choice of layers must not see the evaluation."""
    ids, mask = probe_batch(tokenizer, [p.prompt + p.completion for p in train[: settings.probe_size]], settings.probe_tokens)
    device = next(model.parameters()).device
    hidden, _ = hidden_states_and_attentions(model, ids.to(device), mask.to(device))
    return layer_io_cka(hidden, mask)


# training fields added after studies were recorded, at the values every run had before they existed: left
# out of the fingerprint at those values, so a folder recorded earlier still resumes
FINGERPRINT_SILENT_DEFAULTS = {"adam_betas": [0.9, 0.95], "adam_eps": 1e-8}


def run_record(run: RunSpec | None, config: StudyConfig) -> dict:
    """What determines a run's results (run None: the base's evaluation); a run directory made from
    another record is not resumed."""
    shared = config.model_dump(mode="json", include={"base", "task", "evaluation"} if run is None else
                               {"base", "task", "training", "evaluation", "analyses"})
    if "training" in shared:
        shared["training"] = {key: value for key, value in shared["training"].items()
                              if FINGERPRINT_SILENT_DEFAULTS.get(key, object()) != value}
    spec = run.model_dump(mode="json") if run else "base"
    return {"run": spec, "fingerprint": fingerprint([spec, shared])}


def holds_this_run(run_dir: RunDir, run: RunSpec | None, config: StudyConfig) -> bool:
    return read_json(run_dir.file("run.json")).get("fingerprint") == run_record(run, config)["fingerprint"]


def is_stub(run_dir: RunDir) -> bool:
    """A run directory that records which run it is for and nothing else: no result of any config is lost
    by binding it to another (a study that stopped before this run started leaves these)."""
    return {path.name for path in run_dir.path.iterdir()} <= {"run.json", CLAIM_FILE}


def bind_run_dir(run: RunSpec | None, run_dir: RunDir, config: StudyConfig) -> None:
    """Record which run a directory holds; refuse one that holds a run of a different config."""
    if run_dir.has("run.json") and holds_this_run(run_dir, run, config):
        return
    if run_dir.has("run.json") and not is_stub(run_dir):
        raise StudyMismatch(f"{run_dir.path} holds a run of a different config; use another experiment name or --output")
    write_json(run_dir.file("run.json"), run_record(run, config))


def execute_run(run: RunSpec, run_dir: RunDir, context: StudyContext) -> None:
    started = time.perf_counter()
    model = train_stage(run, run_dir, context)
    reference = reference_for(run, model, context)
    spectral = spectral_stage(run, run_dir, context, model, reference)  # before the merge: ΔW from the adapter itself
    evaluation = evaluate_stage(run, run_dir, context, model)  # merges an adapter after timing it unmerged
    metrics = {
        **run.model_dump(mode="json"),
        "label": run.label,
        "primary_suite": context.config.primary_suite,
        "selection_suite": context.config.training.select_lr_on,
        **({"selected": True} if context.config.training.select_lr_on else {}),
        "train": read_json(run_dir.file("train.json")),
        **{k: v for k, v in evaluation.items() if k != "model"},
        "spectral": spectral,
        **({"worker": context.worker.record(context.device)} if context.worker else {}),
    }
    if context.config.sequence:
        metrics["sequence"] = sequence_matrix(run_dir, context, evaluation)
    stage_s = {"train": metrics["train"]["wall_s"], "evaluate": evaluation["wall_s"], "spectral": spectral.get("wall_s")}
    if context.probes:
        metrics["representations"] = representations_stage(run_dir, context, evaluation["model"])
        stage_s["representations"] = metrics["representations"]["wall_s"]
    if context.config.intervenes_on(run):
        result = read_json(run_dir.file("intervene.json")) if run_dir.has("intervene.json") else \
            intervention_stage(run, run_dir, context, evaluation["model"], reference, context.config.analyses.intervene.lambdas)
        metrics["intervene"] = result["rows"]
        stage_s["intervene"] = result.get("wall_s")
    metrics["stage_s"] = stage_s
    write_json(run_dir.file("metrics.json"), metrics)
    if not context.config.save_weights:
        shutil.rmtree(run_dir.file("weights"), ignore_errors=True)
        for index, (name, _) in enumerate(context.stages[:-1]):
            shutil.rmtree(stage_dir(run_dir, index, name) / "weights", ignore_errors=True)
    write_json(run_dir.file(DONE_FILE), {"finished_at": datetime.now(timezone.utc).isoformat(),
                                         "wall_s_this_session": time.perf_counter() - started})


def adapted_layers(run: RunSpec, context: StudyContext) -> list[int] | None:
    """Layer-wise LoRA: the decoder layers this run adapts (None: all of them)."""
    if run.layer_fraction is None:
        return None
    return select_layers(context.layer_scores, run.layer_fraction)


def load_trained(run: RunSpec, weights: Path, context: StudyContext, trainable: bool = False) -> torch.nn.Module:
    """What a training stage saved: the full model, or the base with its PEFT adapter (unmerged)."""
    if run.method == "full":
        model = load_model(replace(context.base, path=str(weights), revision=None), context.device)
        model.requires_grad_(trainable)
        return model
    return load_tuned(load_model(context.base, context.device), run, weights, trainable=trainable)


def stage_dir(run_dir: RunDir, index: int, name: str) -> Path:
    """Where a sequence's stage `index` (0-based) keeps its weights, training log, evaluation and record."""
    return run_dir.file(f"stage{index + 1}-{name}")


# a run's records measured on its trained model: discarded when the model is trained again
RECORDS_OF_TRAINED_MODEL = ("eval.json", "samples.jsonl", "spectral.json", "representations.json", "intervene.json",
                            "metrics.json")


def train_stage(run: RunSpec, run_dir: RunDir, context: StudyContext) -> torch.nn.Module:
    """Train the run on each task in order (one task unless the study is a sequence) and return the model,
    unmerged; or reload what an earlier session trained.

    In a sequence the same model (the same adapter, for LoRA) keeps training on the next task. After each
    stage but the last, every task's test suite is scored greedily and the held-out loss measured (the
    last stage's scores are the run's own evaluation); each stage leaves its folder with a record, so an
    interrupted sequence resumes at its first unrecorded stage."""
    if run_dir.has_trained_weights:
        console.print("  train: finished earlier, reloading the saved weights")
        return load_trained(run, run_dir.file("weights"), context)
    # trained before but its weights are gone (a results folder moved without them): train again, and say so,
    # since the model evaluated is then a retrained one (same seed and data), not the one first recorded
    retrained = run_dir.has("train.json")
    if retrained:  # what was measured on the lost model does not describe the retrained one
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
        result, model = fit(model, splits.train, run, context, Path(folder) / log_name)
        save_tuned(model, Path(folder) / "weights", run)
        record = {"task": name, **result}
        if not last:
            record["evaluation"] = stage_evaluation(model, run, context, Path(folder))
            write_json(Path(folder) / "stage.json", record)
        records.append(record)
    total = sum(p.numel() for p in model.parameters())
    write_json(run_dir.file("train.json"), {
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
    })
    return model


def fit(model: torch.nn.Module, problems: Sequence[Problem], run: RunSpec, context: StudyContext, log_path: Path) -> tuple[dict, torch.nn.Module]:
    """Fine-tune `model` in place on the run's fraction of `problems`; the training record and the model."""
    training = context.config.training
    examples = finetune_examples(training_subset(problems, run.data_fraction), context.tokenizer, training.max_length)
    steps = math.ceil(training.epochs * len(examples) / training.batch_size)
    if training.max_steps:
        steps = min(steps, training.max_steps)
    # fp32 master weights for a bf16 base (the config refuses them for fp16, which would need loss scaling)
    mixed = training.master_weights == "float32" and context.base.dtype == torch.bfloat16
    settings = TrainSettings(lr=run.lr, steps=steps, warmup_steps=round(steps * training.warmup_ratio),
                             schedule=training.schedule if training.schedule != "constant" else "constant_with_warmup",
                             weight_decay=training.weight_decay, betas=training.adam_betas, eps=training.adam_eps,
                             grad_clip=training.grad_clip,
                             log_every=training.log_every, seed=run.seed,
                             autocast_dtype=torch.bfloat16 if mixed else None)
    batches = epoch_batches(examples, batch_size=training.batch_size, pad_id=context.tokenizer.pad_token_id,
                            max_length=training.max_length, seed=run.seed)
    accelerator = Accelerator(cpu=context.device.type == "cpu")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with trainable_parameters_in(model, torch.float32 if mixed else None), \
            step_progress(console, "  train", steps) as advance:
        result = train(model, batches, settings, accelerator=accelerator, log_path=log_path,
                       on_step=lambda step, loss: advance(step, loss))
    console.print(f"  train: {steps} steps, final loss {result.final_loss:.3f}, {result.steady_tokens_per_s:,.0f} tokens/s "
                  f"after the first {result.steady_skipped_steps} steps ({result.tokens_per_s:,.0f} over all), "
                  f"peak {result.peak_memory_mb:,.0f} MB")
    record = {**asdict(result), "recipe": {**result.recipe, "warmup_ratio": training.warmup_ratio},
              "examples": len(examples), "epochs": steps * training.batch_size / len(examples),
              "master_weights": "float32" if mixed else str(context.base.dtype).removeprefix("torch."),
              "autocast": "bfloat16" if mixed else None}
    return record, accelerator.unwrap_model(model)


def training_totals(records: Sequence[dict]) -> dict:
    """One training record from a sequence's stages (a single stage's record is itself): sums of steps,
    tokens and time, throughput over the whole, the highest peak memory, the last stage's final loss."""
    if len(records) == 1:
        return dict(records[0])
    tokens, wall_s = sum(r["tokens"] for r in records), sum(r["wall_s"] for r in records)
    steady_tokens, steady_s = sum(r.get("steady_tokens", 0) for r in records), sum(r.get("steady_wall_s", 0) for r in records)
    return {
        "task": "+".join(r["task"] for r in records),
        "steps": sum(r["steps"] for r in records), "tokens": tokens, "loss_tokens": sum(r["loss_tokens"] for r in records),
        "wall_s": wall_s, "tokens_per_s": tokens / wall_s if wall_s else 0.0,
        # each stage leaves out its own first steps (the model and optimizer are set up again per stage)
        "steady_tokens": steady_tokens, "steady_wall_s": steady_s, "steady_tokens_per_s": steady_tokens / steady_s if steady_s else 0.0,
        "steady_skipped_steps": sum(r.get("steady_skipped_steps", 0) for r in records),
        # the recipe is the same for every stage but its step counts: those are in `stages`
        "recipe": {k: v for k, v in records[-1]["recipe"].items() if k not in ("steps", "warmup_steps")},
        "peak_memory_mb": max(r["peak_memory_mb"] for r in records), "memory_measure": records[-1]["memory_measure"],
        "final_loss": records[-1]["final_loss"], "trainable_params": records[-1]["trainable_params"],
        "examples": sum(r["examples"] for r in records), "epochs": None,
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
    result = {"pass@1": scores}
    if context.heldout:
        result["heldout_loss"] = mean_token_loss(model, headline_heldout(context))
    console.print("  after this stage: greedy pass@1 " + ", ".join(f"{k} {v:.2f}" for k, v in scores.items()))
    return result


def sequence_matrix(run_dir: RunDir, context: StudyContext, evaluation: dict) -> dict:
    """The forgetting matrix of a sequential run: pass@1 on task j (columns) after stage i (rows), the base
    first and the run's own final evaluation last, with the held-out loss after each stage."""
    names = [name for name, _ in context.stages]
    base = read_json(context.experiment / BASE_DIR / "eval.json")

    def row(suites: dict, forgetting: dict) -> dict:
        return {"pass@1": {n: suites[f"{n}/test"]["greedy"]["pass@1"] for n in names}, "heldout_loss": forgetting.get("heldout_loss")}

    rows = [row(base["suites"], base["forgetting"])]
    for index, name in enumerate(names[:-1]):
        rows.append(read_json(stage_dir(run_dir, index, name) / "stage.json")["evaluation"])
    rows.append(row(evaluation["suites"], evaluation["forgetting"]))
    return forgetting_matrix(names, rows)


def latency_prompts(context: StudyContext) -> list[str]:
    suite = context.primary_problems
    return [suite[i % len(suite)].prompt for i in range(context.config.evaluation.latency.batch_size)]


def evaluate_stage(run: RunSpec | None, run_dir: RunDir, context: StudyContext, model: torch.nn.Module) -> dict:
    """Latency (unmerged, then merged), pass@k on every suite, forgetting; returns them and the merged model."""
    evaluation = context.config.evaluation
    if run_dir.has("eval.json"):
        console.print("  evaluate: finished earlier")
        return {**read_json(run_dir.file("eval.json")), "model": merge_adapter(model)}
    started = time.perf_counter()
    latency: dict = {}
    if evaluation.latency:
        prompts = latency_prompts(context)

        def measure(m: torch.nn.Module) -> float:
            return generation_tokens_per_s(m, context.tokenizer, prompts, new_tokens=evaluation.latency.new_tokens,
                                           repeats=evaluation.latency.repeats, cache=evaluation.cache, compile=evaluation.compile)

        if isinstance(model, PeftModel):
            latency["unmerged_tokens_per_s"] = measure(model)
        model = merge_adapter(model)
        latency["merged_tokens_per_s"] = measure(model)
        latency.update(batch_size=len(prompts), new_tokens=evaluation.latency.new_tokens)
    model = merge_adapter(model)  # no-op when latency already merged it
    model.eval()
    suites, records = {}, []
    # the selection score is reused only if it was measured on this very model
    selection_suite = context.config.training.select_lr_on if run is not None and not \
        read_json(run_dir.file("train.json")).get("retrained_without_saved_weights") else None
    for suite_name, problems in context.task.suites.items():
        problems = problems[: evaluation.limit] if evaluation.limit else problems
        if not problems:
            continue
        if suite_name == selection_suite:  # scored greedily when the rate was chosen
            selection = read_json(run_dir.file("selection.json"))
            suites[suite_name] = {**{k: v for k, v in selection.items() if k != "suite"}, "in_domain": True}
            continue
        seed = run.seed if run else 0
        suite_records, suite_metrics = evaluate_suite(model, problems, suite_name, context, seed=seed)
        suites[suite_name] = {**suite_metrics, "in_domain": context.task.suite_info(suite_name).in_domain}
        records.extend(suite_records)
        if evaluation.robustness and suite_name in evaluation.robustness.suites:
            robust_records, suites[suite_name]["robustness"] = evaluate_robustness(model, problems, suite_records, suite_name, context, seed)
            records.extend(robust_records)
    write_jsonl(run_dir.file("samples.jsonl"), records)
    forgetting = {}
    if context.heldout:
        base_forgetting = read_json(context.experiment / BASE_DIR / "eval.json")["forgetting"] if run else {}
        corpora = {}
        for corpus, chunks in context.heldout.items():
            tuned_loss = mean_token_loss(model, chunks)
            base_loss = base_forgetting["corpora"][corpus]["heldout_loss"] if run else tuned_loss
            corpora[corpus] = {"heldout_loss": tuned_loss, "base_heldout_loss": base_loss, "increase": tuned_loss - base_loss}
            if run is not None and run.method == "qlora":
                quantized = quantized_base_loss(context)[corpus]
                corpora[corpus].update(quantized_base_heldout_loss=quantized, increase_over_quantized_base=tuned_loss - quantized)
        forgetting = {**next(iter(corpora.values())), "corpus": next(iter(corpora)), "corpora": corpora}
    result = {"suites": suites, "forgetting": forgetting, "latency": latency,
              "merged_for_evaluation": run is not None and run.is_adapter, "wall_s": time.perf_counter() - started}
    write_json(run_dir.file("eval.json"), result)
    summary = ", ".join(f"{name} {m.get('greedy', {}).get('pass@1', float('nan')):.2f}" for name, m in suites.items())
    console.print(f"  evaluate: greedy pass@1 {summary}" + (f"; held-out loss {forgetting['increase']:+.3f}" if forgetting and run else ""))
    return {**result, "model": model}


def evaluate_suite(model, problems: tuple[Problem, ...], suite: str, context: StudyContext, seed: int,
                   greedy_only: bool = False) -> tuple[list[dict], dict]:
    """Generate (greedy and/or sampled), extract, execute and score one suite; per-sample records and metrics."""
    evaluation = context.config.evaluation
    info = context.task.suite_info(suite)
    sandbox = SandboxSettings(evaluation.timeout_s, evaluation.memory_mb, evaluation.sandbox_workers)
    common = {"max_new_tokens": evaluation.max_new_tokens, "batch_size": evaluation.batch_size, "seed": seed,
              "stop_strings": info.stop_strings, "backend": evaluation.backend, "round_tokens": evaluation.round_tokens,
              "cache": evaluation.cache, "compile": evaluation.compile}
    modes = []
    if evaluation.greedy:
        modes.append(("greedy", SamplingSettings(n=1, do_sample=False, **common)))
    sampled = evaluation.sampled_suites is None or suite in evaluation.sampled_suites
    if evaluation.n_samples and sampled and not greedy_only:
        modes.append(("sampled", SamplingSettings(n=evaluation.n_samples, do_sample=True, temperature=evaluation.temperature,
                                                  top_p=evaluation.top_p, **common)))
    all_problems, records, metrics = problems, [], {}
    for mode, settings in modes:
        problems = all_problems[: evaluation.sampled_limit] if mode == "sampled" and evaluation.sampled_limit else all_problems
        with step_progress(console, f"  {suite} {mode}", len(problems)) as advance:
            generations, generate_s = generate(model, context.tokenizer, [p.prompt for p in problems], settings,
                                               on_batch=lambda count: advance())
        sampled = sample_records(problems, generations, suite=suite, mode=mode, extraction=info.extraction,
                                 tokenizer=context.tokenizer)
        scored = execute_records(sampled, sandbox)
        if info.scoring == "repair":
            scored = [{**record, **repair_scores(problem, record)}
                      for problem, record in zip((p for p in problems for _ in range(settings.n)), scored, strict=True)]
        metrics[mode] = {**pass_at_k_table(scored, evaluation.k if mode == "sampled" else [1]),
                         **generation_statistics(scored, generate_s, len(problems)), "n": settings.n}
        if info.scoring == "repair":
            metrics[mode].update({key: sum(r[key] for r in scored) / len(scored) for key in REPAIR_F1_KEYS})
        records.extend(scored)
    return records, metrics


def evaluate_robustness(model, problems: tuple[Problem, ...], nominal_records: list[dict], suite: str,
                        context: StudyContext, seed: int) -> tuple[list[dict], dict]:
    """ReCode's Robust Pass@1, Drop@1 and Relative@1 per perturbation family: s variants of every problem,
    decoded greedily, against the suite's own greedy (nominal) results."""
    robustness = context.config.evaluation.robustness
    nominal = {r["task_id"]: [r["passed"]] for r in nominal_records if r["mode"] == "greedy"}
    records, metrics = [], {}
    for family in robustness.perturbations:
        variants, not_applicable = family_variants(problems, family, robustness.s, robustness.seed)
        family_records = []
        if variants:  # a family that applies to no problem generates nothing
            family_records, _ = evaluate_suite(model, tuple(variants), suite, context, seed=seed, greedy_only=True)
        family_records = [{**r, "suite": f"{suite}~{family}", "perturbation": family, "variant": v.meta["variant"]}
                          for r, v in zip(family_records, variants, strict=True)]
        perturbed: dict[str, list[list[bool]]] = {}
        for record in family_records:
            perturbed.setdefault(record["task_id"], []).append([record["passed"]])
        metrics[family] = family_robustness(nominal, perturbed, not_applicable, robustness.s)
        records.extend(family_records)
    return records, metrics


def repair_scores(problem: Problem, record: dict) -> dict:
    """Token-level F1 (the reported F1) and line-edit F1, with their precision and recall, of a candidate
    fix against the reference fix (ftcompare.evaluate.repair)."""
    return repair_f1_scores(problem.meta["buggy"], record["extracted_code"], problem.meta["correct"])


def generation_statistics(scored: list[dict], generate_s: float, problems: int) -> dict:
    """What the latency story of a (reasoning) model needs: tokens generated, reasoning tokens, time per
    problem, and how often the budget cut an answer (recorded, not silently scored as a method's failure)."""
    new_tokens = sum(r["new_tokens"] for r in scored)
    reasoning = [r["reasoning_tokens"] for r in scored if r.get("reasoning_tokens") is not None]
    return {
        "problems": problems,
        "mean_new_tokens": new_tokens / len(scored),
        "mean_reasoning_tokens": sum(reasoning) / len(reasoning) if reasoning else 0.0,
        "hit_budget_fraction": sum(r["hit_budget"] for r in scored) / len(scored),
        "unfinished_reasoning_fraction": sum(not r["reasoning_closed"] for r in scored) / len(scored),
        "generate_s": generate_s,
        "seconds_per_problem": generate_s / problems,
        "generate_tokens_per_s": new_tokens / max(generate_s, 1e-9),
        "status_counts": {s: sum(r["status"] == s for r in scored) for s in sorted({r["status"] for r in scored})},
        "extraction_counts": {m: sum(r["extraction"] == m for r in scored) for m in sorted({r["extraction"] for r in scored})},
        # bubblewrap or the weaker fallback (ftcompare.evaluate.sandbox): the report says which scored each run
        "isolation_counts": {i: sum(r.get("isolation") == i for r in scored) for i in sorted({str(r.get("isolation")) for r in scored})},
    }


def representations_stage(run_dir: RunDir, context: StudyContext, model: torch.nn.Module) -> dict:
    """Per probe set and layer: linear CKA between base and tuned hidden states, the tuned model's and the
    base's mean attention entropy, and the mean Jensen–Shannon distance between their attention maps."""
    if run_dir.has("representations.json"):
        return read_json(run_dir.file("representations.json"))["summary"]
    started = time.perf_counter()
    device = next(model.parameters()).device
    result = {}
    for name, probe in context.probes.items():
        hidden, attentions = hidden_states_and_attentions(model, probe.input_ids.to(device), probe.attention_mask.to(device))
        mask = probe.attention_mask
        result[name] = {
            "cka": layerwise_cka(probe.base_hidden, hidden, mask),
            "attention_entropy": [float(attention_entropy(a, mask).mean()) for a in attentions],
            "base_attention_entropy": [float(attention_entropy(a, mask).mean()) for a in probe.base_attentions],
            "attention_js": [float(attention_distance(b, a, mask).mean()) for b, a in zip(probe.base_attentions, attentions)],
        }
    # mean over the transformer layers' outputs (hidden_states[1:]); [0] is the embedding output
    summary = {f"{name}_mean_cka": sum(v["cka"][1:]) / len(v["cka"][1:]) for name, v in result.items()}
    summary["wall_s"] = time.perf_counter() - started
    write_json(run_dir.file("representations.json"), {"summary": summary, "probes": result})
    console.print("  representations: mean CKA to the base " + ", ".join(
        f"{k.removesuffix('_mean_cka')} {v:.3f}" for k, v in summary.items() if k.endswith("_mean_cka")))
    return summary


@dataclass(frozen=True)
class Reference:
    """The base weights a run is compared against, and their cached SVDs."""

    weights: dict[str, torch.Tensor]
    spectra: SpectrumCache


def reference_for(run: RunSpec, model: torch.nn.Module, context: StudyContext) -> Reference:
    """The base a run actually trained on: the base, or for QLoRA its dequantized 4-bit version (quantization
    alone moves the weights, and those moves are not the adapter's). `model` is the unmerged tuned model."""
    if run.method != "qlora":
        return Reference(context.base_weights, context.spectra)
    return Reference(quantized_base_weights(model),
                     SpectrumCache(context.experiment / BASE_DIR / "svd-nf4", context.base.fingerprint + "-nf4"))


def headline_heldout(context: StudyContext) -> torch.Tensor:
    """The first forgetting corpus: the one the tables' forgetting column and the causal test report."""
    return next(iter(context.heldout.values()))


def quantized_base_loss(context: StudyContext) -> dict[str, float]:
    """Held-out loss per corpus of the base quantized to 4-bit NF4 as QLoRA quantizes it (once per study)."""
    path = context.experiment / BASE_DIR / "quantized_base.json"
    if path.is_file():
        return read_json(path)["heldout_loss"]
    model = quantize_4bit(load_model(context.base, context.device))
    losses = {corpus: mean_token_loss(model, chunks) for corpus, chunks in context.heldout.items()}
    write_json(path, {"quantization": "bitsandbytes NF4, double quantization", "heldout_loss": losses})
    return losses


def spectral_stage(run: RunSpec, run_dir: RunDir, context: StudyContext, model: torch.nn.Module, reference: Reference) -> dict:
    """Spectral analysis of every adapted matrix against the run's base (its SVDs come from the cache).

    `model` is the tuned model before `merge_adapter`: ΔW is the adapter's exact update, not the difference
    of a bf16 merge (whose rounding reads as a full-rank update). Intruders read the exact fine-tuned
    W0 + ΔW too (the paper's W is the fine-tuned matrix, and the count should not depend on the dtype the
    merge is held in). A run with no matrix to analyse is an error, never a silent "0 over 0"."""
    spectral = context.config.analyses.spectral
    if spectral is None:
        return {}
    if run_dir.has("spectral.json"):
        return read_json(run_dir.file("spectral.json"))["summary"]
    if run.is_adapter and not isinstance(model, PeftModel):
        raise ValueError(f"{run.run_id}: the spectral stage needs the adapter unmerged, to read its exact update")
    started = time.perf_counter()
    reports = [analyze_matrix(update.name, reference.spectra.get(update.name, update.base), update.base, update.tuned,
                              delta=update.delta, k=spectral.k, epsilon=spectral.epsilon, epsilons=spectral.epsilons)
               for update in weight_updates(model, reference.weights)]
    if not reports:
        raise RuntimeError(f"{run.run_id}: the spectral analysis found no adapted weight matrix (nn.Linear or Conv1D) in "
                           f"{type(model).__name__}; set analyses.spectral: null to run without it")
    summary = {**summarize(reports), "delta": EXACT_DELTA, "wall_s": time.perf_counter() - started}
    write_json(run_dir.file("spectral.json"), {"summary": summary, "matrices": [asdict(r) for r in reports],
                                               "k": spectral.k, "epsilon": spectral.epsilon,
                                               "delta": EXACT_DELTA, "delta_rule": EXACT_DELTA_RULE})
    console.print(f"  analyse: {summary['total_intruders']} intruder dimensions over {len(reports)} matrices "
                  f"(ε={spectral.epsilon}; ΔW {EXACT_DELTA})")
    return summary


def evaluate_base(context: StudyContext) -> None:
    """The base model's own scores and held-out loss: the reference every run is compared with."""
    base_dir = RunDir(context.experiment / BASE_DIR)
    if base_dir.has("metrics.json"):
        return
    console.print("[bold]base model[/]: evaluating before any fine-tuning")
    model = load_model(context.base, context.device)
    evaluation = evaluate_stage(None, base_dir, context, model)
    metrics = {"run_id": "base", "method": "base", "label": "base", "primary_suite": context.config.primary_suite, **{k: v for k, v in evaluation.items() if k != "model"},
               "params": sum(p.numel() for p in model.parameters()),
               **({"worker": context.worker.record(context.device)} if context.worker else {})}
    write_json(base_dir.file("metrics.json"), metrics)


def evaluate_benchmark(model: str, benchmark: str, output: Path, *, data: Path | None, prompt_format: str,
                       evaluation: EvaluationConfig, device_name: str = "auto") -> dict:
    """Score a base model on a benchmark, no fine-tuning (`ftcompare eval`): `output/metrics.json` with
    pass@k and the generation cost, `output/samples.jsonl` with every sample's prompt, output and verdict."""
    device = resolve_device(device_name)
    check_compile(evaluation.compile, device)
    config = StudyConfig(experiment="eval", base=BaseModelConfig(model=model), methods=[FullMethod()], evaluation=evaluation)
    base = resolve_base(config.base, device, console)
    tokenizer = load_tokenizer(base)
    problems, info = load_benchmark(benchmark, data, prompt_format, tokenizer)
    problems = problems[: evaluation.limit] if evaluation.limit else problems
    splits = TaskSplits(name=benchmark, train=(), suites={benchmark: problems}, info={benchmark: info})
    context = StudyContext(config, device, base, tokenizer, [], splits, {}, {}, None, output, {}, None)
    started = time.perf_counter()
    records, metrics = evaluate_suite(load_model(base, device).eval(), problems, benchmark, context, seed=0)
    output.mkdir(parents=True, exist_ok=True)
    write_jsonl(output / "samples.jsonl", records)
    result = {
        "model": model, "benchmark": benchmark, "format": prompt_format, "problems": len(problems),
        **{key: value for key, value in metrics.get("greedy", {}).items() if key.startswith("pass@")},
        "modes": metrics, "wall_s": time.perf_counter() - started,
        "base": {"path": base.path, "dtype": str(base.dtype), "provenance": base.provenance},
        "evaluation": evaluation.model_dump(mode="json"), "device": str(device), "environment": environment(),
    }
    write_json(output / "metrics.json", result)
    return result


def intervene(experiment: Path, run_id: str, lambdas: Sequence[float]) -> dict:
    """`ftcompare intervene`: the causal test on a finished run of an experiment (see `intervention_stage`)."""
    study = read_json(experiment / STUDY_FILE)
    config = StudyConfig.model_validate(study["config"])
    runs = {r["run_id"]: RunSpec.model_validate(r) for r in study["runs"]}
    if run_id not in runs:
        raise ValueError(f"{experiment}: no run {run_id!r}; runs: {', '.join(runs)}")
    run, run_dir = runs[run_id], RunDir(experiment / run_id)
    if not run_dir.has_trained_weights:
        raise ValueError(f"{run_dir.path}: no trained weights (was it run with save_weights: false, or not finished?)")
    context = prepare(config, resolve_device(config.device), experiment)
    model = load_trained(run, run_dir.file("weights"), context)
    reference = reference_for(run, model, context)
    return intervention_stage(run, run_dir, context, merge_adapter(model).eval(), reference, lambdas)


def intervention_stage(run: RunSpec, run_dir: RunDir, context: StudyContext, model: torch.nn.Module,
                       reference: Reference, lambdas: Sequence[float]) -> dict:
    """The causal test of Shuttleworth et al. 2024: scale the singular values of every adapted matrix's
    intruder dimensions by each λ, and measure the in-domain greedy pass@1 and the held-out loss.

    λ = 1 is the tuned model itself, λ = 0 removes the intruder directions. `model` is the merged tuned
    model; its weights are restored afterwards. Writes `<run>/intervene.json`.
    """
    started = time.perf_counter()
    config = context.config
    spectral = config.analyses.spectral or SpectralConfig()
    names = adapted_weight_names(model, run.target_modules if run.is_adapter else None)
    parameters = dict(model.named_parameters())
    tuned = {name: parameters[name].detach().clone() for name in names}
    base_weights = {name: as_out_in(model, name, reference.weights[name]) for name in names}  # (out, in), as the spectra
    spectra = {name: reference.spectra.get(name, w) for name, w in base_weights.items()}
    suite = config.primary_suite
    problems = context.primary_problems[: config.evaluation.limit] if config.evaluation.limit else context.primary_problems
    base_loss = read_json(context.experiment / BASE_DIR / "eval.json")["forgetting"].get("heldout_loss")
    rows = []
    for lam in lambdas:
        with torch.no_grad():
            for name in names:
                parameters[name].copy_(tuned[name])
        intruders = scale_model_intruders(model, base_weights, spectra, lam, k=spectral.k, epsilon=spectral.epsilon)
        _, metrics = evaluate_suite(model, problems, suite, context, seed=run.seed, greedy_only=True)
        row = {"lambda": lam, "pass@1": metrics["greedy"]["pass@1"], "intruders": sum(len(v) for v in intruders.values())}
        if context.heldout:
            row["heldout_loss"] = mean_token_loss(model, headline_heldout(context))
            row["forgetting"] = row["heldout_loss"] - base_loss
        console.print(f"  λ={lam:g}: pass@1 {row['pass@1']:.3f}" + (f", forgetting {row['forgetting']:+.3f}" if "forgetting" in row else ""))
        rows.append(row)
    with torch.no_grad():
        for name in names:
            parameters[name].copy_(tuned[name])
    result = {"run_id": run.run_id, "k": spectral.k, "epsilon": spectral.epsilon, "suite": suite, "problems": len(problems), "rows": rows,
              "wall_s": time.perf_counter() - started}
    write_json(run_dir.file("intervene.json"), result)
    return result
