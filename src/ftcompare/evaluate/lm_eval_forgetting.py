"""Forgetting as lm-evaluation-harness measures it: each model's accuracy on the harness's tasks (HellaSwag,
ARC-Challenge, WinoGrande, as "LoRA Learns Less and Forgets Less" reports it, or task YAMLs of your own), and its
change against the base's.

The numbers are the harness's own: its Python API (`lm_eval.simple_evaluate`) scores the model in memory
wrapped as `HFLM(pretrained=model, tokenizer=...)`, with a `TaskManager` that also indexes `include_path`;
ftcompare only picks the accuracies out of its results and pairs each run with the base document by document.
The harness is handed a copy of the tokenizer, and the model's train/eval mode and the global random states
(which `simple_evaluate` seeds) are put back afterwards, so the stages after it see what they saw before.

Records: `lm_eval` in `<run>/eval.json` and `_base/eval.json` (beside `forgetting`, the held-out loss): per task
acc and acc_norm (where the task has it) with the harness's standard errors, the harness's version, the task's
version, its few-shot count and documents; for a run, the change against the base (paired by document). Every
document's requests, log-likelihoods and scores go to `lm_eval_samples.jsonl` beside it.
"""

from __future__ import annotations

import copy
import difflib
import functools
import math
import random
import time
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from pydantic import Field, ValidationInfo, field_validator, model_validator

from ftcompare.evaluate.metrics import paired_difference
from ftcompare.schema import InputError, Strict

if TYPE_CHECKING:
    from ftcompare.context import StudyContext
    from ftcompare.runs.store import RunDir

INSTALL_HINT = "pip install 'ftcompare[lm-eval]'"
METRICS = ("acc", "acc_norm")  # what is recorded of each task: accuracy, and length-normalised accuracy where it has one
SAMPLES_FILE = "lm_eval_samples.jsonl"


class LmEvalConfig(Strict):
    """Forgetting on lm-evaluation-harness tasks (needs `pip install 'ftcompare[lm-eval]'`): the base and every tuned
    model are scored by the harness's own Python API, in memory, and each run's accuracy is compared with the base's
    per task. Name the harness's tasks (hellaswag, arc_challenge, winogrande: their data come from the Hugging Face
    hub on first use) or tasks of your own in `include_path`."""

    include_path: Path | None = Field(
        default=None,
        description="A folder of task YAMLs (lm-evaluation-harness's format; a relative path resolves against the "
        "config's folder) indexed beside the harness's own tasks, which it overrides on a clash of names: offline "
        "tasks over local files (`dataset_path: json`, `dataset_kwargs: {data_files: ...}` with absolute paths: the "
        "datasets library reads a relative one from the working directory).",
    )
    tasks: list[str] = Field(
        min_length=1,
        description="The tasks, groups or tags to score, by the harness's names (hellaswag, arc_challenge, "
        "winogrande) or those of include_path; every task must report acc. Checked against the harness's "
        "index when the config loads.",
    )
    num_fewshot: int | None = Field(
        default=None,
        ge=0,
        description="Few-shot examples per prompt (the harness's num_fewshot); None: each task's own default (0 "
        "where it sets none). A task whose YAML fixes 0 keeps 0.",
    )
    limit: int | None = Field(
        default=None,
        gt=0,
        description="Score only the first N documents of each task (the harness's limit, meant for tests); None: every document.",
    )
    batch_size: int | Literal["auto"] = Field(
        default=8,
        description='Sequences per forward pass in the harness (its batch_size); "auto": the largest that fits, '
        "found by the harness.",
    )
    seed: int = Field(
        default=0,
        description="The seed of the harness's random, numpy, torch and few-shot samplers, the same for the base and "
        "every run, so every model is scored on the same prompts.",
    )

    @field_validator("batch_size")
    @classmethod
    def _positive_batch(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError(f'batch_size must be ≥ 1 or "auto", got {value}')
        return value

    @field_validator("include_path")
    @classmethod
    def _a_folder_of_tasks(cls, value: Path | None) -> Path | None:
        if value is not None:
            if not value.is_dir():
                raise ValueError(f"not a folder: {value}")
            if not any(value.rglob("*.yaml")):
                raise ValueError(f"{value} holds no task YAML (*.yaml)")
        return value

    @field_validator("tasks")
    @classmethod
    def _known_tasks(cls, value: list[str], info: ValidationInfo) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"each task once, got {value}")
        if "include_path" in info.data and lm_eval_installed():  # else that field's error, or _installed's, is the one
            unknown_task_error(value, info.data["include_path"])
        return value

    @model_validator(mode="after")
    def _installed(self) -> LmEvalConfig:
        try:
            require_lm_eval()
        except InputError as error:
            raise ValueError(error.message) from None
        return self


def require_lm_eval(where: str = "evaluation.lm_eval") -> str:
    """lm-evaluation-harness's version; a missing harness is one line naming the extra that installs it."""
    try:
        import lm_eval
    except ImportError as error:
        raise InputError(where, f"lm_eval is not installed ({error}); {INSTALL_HINT}") from None
    return lm_eval.__version__


def task_manager(include_path: Path | None):
    """The harness's `TaskManager` over its own tasks and the task YAMLs in `include_path` (indexing them takes
    seconds: once per folder and process)."""
    return _task_manager(str(Path(include_path).resolve()) if include_path is not None else None)


@functools.lru_cache(maxsize=4)
def _task_manager(include_path: str | None):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=include_path)


def lm_eval_installed() -> bool:
    try:
        require_lm_eval()
    except InputError:
        return False
    return True


def unknown_task_error(tasks: list[str], include_path: Path | None) -> None:
    """ValueError naming the first task that is no task, group or tag of the harness's index."""
    known = task_manager(include_path).all_tasks
    for index, name in enumerate(tasks):
        if name not in known:
            close = difflib.get_close_matches(name, known, n=3)
            hint = f" (close: {', '.join(close)})" if close else ""
            where = f"among its own and those in {include_path}" if include_path else "(include_path adds task YAMLs of your own)"
            raise ValueError(f"item {index}, {name!r}: lm-evaluation-harness has no such task, group or tag{hint} {where}")


def check_tasks(settings: LmEvalConfig) -> None:
    """Build every task once before anything trains (a hub task downloads its data here, a local one reads its
    files): a task that cannot load or reports no acc is one line naming it, not a failure after training."""
    manager = task_manager(settings.include_path)
    for index, name in enumerate(settings.tasks):
        try:
            loaded = manager.load([name])["tasks"]
        except Exception as error:  # no network for a hub task, a bad data file, a broken YAML: the harness's reason
            raise InputError(
                "evaluation.lm_eval", f"cannot load {name!r}: {type(error).__name__}: {error}", field=f"tasks.{index}"
            ) from None
        for task_name, task in loaded.items():
            if "acc" not in task.aggregation():
                raise InputError(
                    "evaluation.lm_eval",
                    f"{task_name!r} reports {sorted(task.aggregation())}, no acc (ftcompare records accuracy: "
                    "multiple-choice or log-likelihood tasks)",
                    field=f"tasks.{index}",
                )


def harness_scores(model: torch.nn.Module, tokenizer, settings: LmEvalConfig) -> tuple[dict, list[dict]]:
    """Score `model` (a transformers causal LM, in memory) on the configured tasks: the record (per task acc,
    acc_norm, their standard errors and per-document scores; the settings and the harness's version) and every
    document's sample record."""
    import lm_eval

    started = time.perf_counter()
    results = simple_evaluate(model, tokenizer, settings)
    tasks, samples = {}, []
    for name in results["configs"]:  # the leaf tasks (groups aggregate them)
        task_samples = [sample_record(name, sample) for sample in results["samples"][name]]
        counts = results["n-samples"][name]
        tasks[name] = {
            "version": results["versions"].get(name),
            "num_fewshot": results["n-shot"].get(name),
            "documents": counts["effective"],
            "documents_in_split": counts["original"],
            **task_metrics(results["results"][name]),
            "per_sample": {
                metric: {str(s["doc_id"]): s[metric] for s in task_samples} for metric in METRICS if metric in task_samples[0]
            },
        }
        samples.extend(task_samples)
    record = {
        "lm_eval_version": lm_eval.__version__,
        "num_fewshot": settings.num_fewshot,
        "limit": settings.limit,
        "batch_size": settings.batch_size,
        "batch_sizes": results["config"].get("batch_sizes"),  # what "auto" found
        "seed": settings.seed,
        "include_path": str(settings.include_path) if settings.include_path else None,
        "tasks": tasks,
        "wall_s": time.perf_counter() - started,
    }
    return record, samples


def simple_evaluate(model: torch.nn.Module, tokenizer, settings: LmEvalConfig) -> dict:
    """`lm_eval.simple_evaluate` on `HFLM(pretrained=model)` with per-sample logs, its results as they come. The
    model's train/eval mode and the global random states (which the harness seeds) are as they were when it returns."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    was_training = model.training
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[model.device] if model.device.type == "cuda" else []):
            # a copy: the harness sets a pad token and the padding side on the tokenizer it is given
            lm = HFLM(pretrained=model, tokenizer=copy.deepcopy(tokenizer), batch_size=settings.batch_size)
            return lm_eval.simple_evaluate(
                model=lm,
                tasks=list(settings.tasks),
                num_fewshot=settings.num_fewshot,
                limit=settings.limit,
                task_manager=task_manager(settings.include_path),
                random_seed=settings.seed,
                numpy_random_seed=settings.seed,
                torch_random_seed=settings.seed,
                fewshot_random_seed=settings.seed,
                log_samples=True,
            )
    finally:
        model.train(was_training)
        random.setstate(python_state)
        np.random.set_state(numpy_state)


def task_metrics(values: dict) -> dict:
    """acc and acc_norm with their standard errors from one task's harness results (keys "acc,none",
    "acc_stderr,none"); a standard error the harness gave as "N/A" (one document) is None."""
    metrics = {}
    for metric in METRICS:
        if f"{metric},none" in values:
            stderr = values.get(f"{metric}_stderr,none")
            metrics[metric] = float(values[f"{metric},none"])
            metrics[f"{metric}_stderr"] = float(stderr) if isinstance(stderr, (int, float)) and math.isfinite(stderr) else None
    return metrics


def sample_record(task: str, sample: dict) -> dict:
    """One document as the harness scored it: its requests (context, continuation), the log-likelihood of each
    choice and whether it was the greedy one, the gold index and the scores."""
    return {
        "task": task,
        "doc_id": sample["doc_id"],
        "doc_hash": sample.get("doc_hash"),
        "target": sample["target"],
        "requests": [list(arguments[:2]) for arguments in sample["arguments"]],
        "loglikelihoods": [float(response[0]) for response in sample["filtered_resps"]],
        "is_greedy": [bool(response[1]) for response in sample["filtered_resps"]],
        **{metric: float(sample[metric]) for metric in METRICS if metric in sample},
    }


def against_base(record: dict, base: dict) -> dict:
    """`record` with, per task and metric, the base's value and the change (run − base, paired by document: the
    difference ± its standard error, documents won and lost, the sign test's p-value); negative is forgetting."""
    tasks = {}
    for name, scores in record["tasks"].items():
        reference = base["tasks"].get(name)
        if reference is None:
            tasks[name] = scores
            continue
        tasks[name] = {
            **scores,
            "base": {
                key: reference.get(key) for key in (m + suffix for m in METRICS for suffix in ("", "_stderr")) if key in reference
            },
            "change": {
                metric: paired_difference(scores["per_sample"][metric], reference["per_sample"][metric])
                for metric in METRICS
                if metric in scores.get("per_sample", {}) and metric in reference.get("per_sample", {})
            },
        }
    return {**record, "tasks": tasks}


def lm_eval_stage(run_dir: RunDir, context: StudyContext, model: torch.nn.Module, base: dict | None) -> dict:
    """The harness's scores of one model (`base`: the base's record, None when this model is the base):
    writes `lm_eval_samples.jsonl` and returns the record for `eval.json`."""
    from ftcompare.console import console
    from ftcompare.runs.store import write_jsonl

    settings = context.config.evaluation.lm_eval
    console.print(f"  lm-eval: {', '.join(settings.tasks)}")
    record, samples = harness_scores(model, context.tokenizer, settings)
    write_jsonl(run_dir.file(SAMPLES_FILE), samples)
    record = against_base(record, base) if base is not None else record
    console.print(
        "  lm-eval: "
        + ", ".join(
            f"{name} acc {scores['acc']:.3f}" + (f" ({scores['change']['acc']['difference']:+.3f})" if "change" in scores else "")
            for name, scores in record["tasks"].items()
        )
    )
    return record
