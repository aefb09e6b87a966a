"""A study, in order: config → run matrix → base + method → train → evaluate → analyse → record.

`run_study` reads top to bottom; `execute_run` is one run's order of stages. The stages themselves live
with their folders (`train/stage.py`, `evaluate/stage.py`, `analyze/stage.py`); each leaves its record in
the run directory, so a re-run skips what is finished. This module writes `study.json`, each run's
`run.json` (which run of which config the folder holds), `metrics.json` and `done.json`, and, for the
learning-rate selection, `selection.json` and `selection_samples.jsonl`.

Under a distributed launch (`accelerate launch`, `torchrun`) the processes are one worker: each walks every job
in order (`work_together`) and trains each run with the others; rank 0 alone writes and evaluates
(`ftcompare.train.distributed`).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from functools import cache, partial
from pathlib import Path

import torch

from ftcompare.analyze.spectral import SpectrumCache
from ftcompare.analyze.stage import (
    base_probes,
    intervention_record,
    intervention_stage,
    layer_similarity_scores,
    reference_for,
    representations_stage,
    spectral_stage,
)
from ftcompare.config import (
    InterveneConfig,
    RepresentationsConfig,
    StudyConfig,
    VllmConfig,
    data_path_keys,
    fingerprint,
    parse_config,
)
from ftcompare.console import console
from ftcompare.context import StudyContext, environment, resolve_device
from ftcompare.data.tasks import load_study_tasks
from ftcompare.evaluate.forgetting import heldout_chunks
from ftcompare.evaluate.generation import check_compile
from ftcompare.evaluate.lm_eval_forgetting import check_tasks
from ftcompare.evaluate.stage import evaluate_base, evaluate_stage, evaluate_suite, served_model, vllm_engines
from ftcompare.matrix import RunSpec, best_multipliers, expand, selection_group
from ftcompare.models.base import load_model, load_tokenizer, resolve_base
from ftcompare.models.registry import sha256_file
from ftcompare.models.weights import adapted_weight_names, merge_adapter
from ftcompare.runs.store import (
    BASE_DIR,
    DONE_FILE,
    STUDY_FILE,
    RunDir,
    begin_session,
    check_writable,
    end_session,
    experiment_dir,
    read_json,
    writable_folder,
    write_json,
    write_jsonl,
)
from ftcompare.runs.tracking import RunTracker, announce_tracking, tracked_run
from ftcompare.runs.workers import CLAIM_FILE, Job, Worker, work_through
from ftcompare.schema import InputError
from ftcompare.train.distributed import Ranks, build_base_alone, join, launched
from ftcompare.train.stage import load_trained, sequence_matrix, stage_dir, train_stage


class StudyMismatch(RuntimeError):
    """A run directory holds results of a different config under the same run id."""


def run_study(config: StudyConfig, output: Path, worker: Worker | None = None) -> Path:
    """Run every cell of the study's matrix that is not finished yet; return the experiment folder.
    With several workers on one folder (the Ray executor's slots), each does the jobs no other has
    claimed and waits for the rest where a later stage needs them (learning-rate selection needs every
    selection score). Under a distributed launch, every process runs this and they train each run together
    (`work_together`)."""
    context = open_study(config, output, worker)
    work = work_through if context.ranks is None else partial(work_together, context.ranks)
    session = {"executor": "local", "started_at": datetime.now(timezone.utc).isoformat()}
    if context.ranks is not None:
        session["processes"] = context.ranks.count
    started = time.perf_counter()
    index = begin_session(context.experiment, session) if context.writes else None
    try:
        work([study_job(name, context) for name in first_jobs(config)])
        work([study_job(name, context) for name in context.on_rank_0(lambda: second_jobs(context))])
    except BaseException as error:
        session["failed"] = f"{type(error).__name__}: {error}"[:500]
        raise
    finally:
        if index is not None:  # the session's wall time: the study's, summed over its sessions
            end_session(context.experiment, index, {**session, "wall_s": time.perf_counter() - started})
    return context.experiment


def open_study(config: StudyConfig, output: Path, worker: Worker | None = None) -> StudyContext:
    """Check the experiment folder against the config, load what every run shares, bind each run
    directory to its run and write `study.json`; the context the study's jobs run in."""
    device = resolve_device(config.device)
    ranks = None
    if launched():  # several processes, one model: they start together once the built-in base exists
        build_base_alone(config.base, device)
        ranks, device = join(config.training.distributed.strategy, device)
    check_compile(config.evaluation.compile, device)  # before anything trains
    runs = expand(config)
    experiment = check_runs_match(config, output)
    # the base and every task's data load before anything is written: bad data fails leaving no stub behind
    context = prepare(config, device, experiment, worker, ranks)
    if context.writes:
        record_study(config, experiment, runs, context)
    return context


def work_together(ranks: Ranks, jobs: Sequence[Job]) -> None:
    """Under a distributed launch, where the processes are one worker: every rank does each job not done yet, in
    order, rank 0 deciding which are (a job's stages know their rank: all train, rank 0 records); then all wait
    for the last."""
    for job in jobs:
        if not ranks.agree(job.done() if ranks.main else None):
            job.do()
    ranks.barrier()


def record_study(config: StudyConfig, experiment: Path, runs: list[RunSpec], context: StudyContext) -> None:
    """Bind each run directory to this config and write `study.json`."""
    bind_runs(config, experiment)
    write_json(
        experiment / STUDY_FILE,
        {
            "config": config.model_dump(mode="json"),
            "runs": [run.model_dump(mode="json") for run in runs],
            "base": {
                "name": context.base.name,
                "path": context.base.path,
                "dtype": str(context.base.dtype),
                "provenance": context.base.provenance,
            },
            "device": str(context.device),
            "environment": environment(context.worker, context.ranks),
            "tracking": announce_tracking(config, experiment, console),
            "updated_at": datetime.now(timezone.utc).isoformat(),
        },
    )


# A study's jobs by name: the base's evaluation, a run's selection training ("select:" + run id), a run.
BASE_JOB = BASE_DIR
SELECT_PREFIX = "select:"


def chooses_before_running(config: StudyConfig) -> bool:
    """Whether learning-rate selection decides which runs go on (a barrier): not when every multiplier is
    evaluated anyway (`evaluate_all_lrs`), where each run scores the selection suite with the others and the
    report marks the choice (`report.tables.mark_lr_choice`)."""
    return bool(config.training.select_lr_on) and not config.training.evaluate_all_lrs


def first_jobs(config: StudyConfig) -> list[str]:
    """The jobs every run waits for: the base (each run's forgetting is read against it) and, where
    selection decides which runs go on, every run's selection score."""
    selection = [SELECT_PREFIX + run.run_id for run in expand(config)] if chooses_before_running(config) else []
    return [BASE_JOB, *selection]


def second_jobs(context: StudyContext) -> list[str]:
    """The runs that go through every stage, once `first_jobs` are done, seed by seed: all of them, or the
    ones whose multiplier selection chose (this call chooses, and records the others as finished)."""
    runs = expand(context.config)
    if chooses_before_running(context.config):
        chosen = select_learning_rates(runs, context)
        record_unselected([run for run in runs if run.run_id not in chosen], context)
        runs = [run for run in runs if run.run_id in chosen]
    # seed by seed: a sweep cut short has every method at its first seeds rather than some methods at all
    return [run.run_id for run in sorted(runs, key=lambda run: run.seed)]


def study_job(name: str, context: StudyContext) -> Job:
    """The job a name stands for (see `first_jobs`, `second_jobs`)."""
    if name == BASE_JOB:  # under a distributed launch, rank 0 alone evaluates the base
        base_dir = RunDir(context.experiment / BASE_DIR)
        return Job(
            base_dir.file(CLAIM_FILE),
            lambda: base_dir.has("metrics.json"),
            lambda: evaluate_base(context) if context.writes else None,
        )
    runs = expand(context.config)
    by_id = {run.run_id: run for run in runs}
    if name.startswith(SELECT_PREFIX):
        return selection_job(by_id[name.removeprefix(SELECT_PREFIX)], context)
    selected = True if chooses_before_running(context.config) else None  # only chosen runs go on
    return run_job(runs.index(by_id[name]) + 1, len(runs), by_id[name], context, selected)


def check_runs_match(config: StudyConfig, output: Path) -> Path:
    """Refuse run directories an earlier, different config made (before anything trains: a clash must not
    cost a sweep), writing nothing; return the experiment folder."""
    experiment = experiment_dir(output, config.experiment)
    check_writable(experiment)
    for run in [*expand(config), None]:
        refuse_another_run(RunDir(experiment / (run.run_id if run else BASE_DIR)), run, config)
    return experiment


def bind_runs(config: StudyConfig, experiment: Path) -> None:
    """Record in each run directory (and the base's) which run of which config it holds."""
    writable_folder(experiment)
    for run in [*expand(config), None]:
        bind_run_dir(run, RunDir(experiment / (run.run_id if run else BASE_DIR)), config)


def worker_tag(context: StudyContext) -> str:
    return f" [dim]{context.worker.label}[/]" if context.worker else ""


def run_job(index: int, total: int, run: RunSpec, context: StudyContext, selected: bool | None = None) -> Job:
    """The full run as a job (`selected`: whether learning-rate selection chose its multiplier; None: no choice)."""
    run_dir = RunDir(context.experiment / run.run_id)

    def do() -> None:
        console.print(
            f"[bold]({index}/{total}) {run.run_id}[/] ({run.label}, lr {run.lr:g}, seed {run.seed})" + worker_tag(context)
        )
        with tracked_run(run, run_dir, context) as tracker:
            execute_run(run, run_dir, context, tracker, selected)

    return Job(run_dir.file(CLAIM_FILE), lambda: run_dir.done, do)


def selection_job(run: RunSpec, context: StudyContext) -> Job:
    """Train a run and score it greedily on the selection suite (no test suite is touched)."""
    run_dir = RunDir(context.experiment / run.run_id)
    suite = context.config.training.select_lr_on

    def do() -> None:
        console.print(f"[bold]select {run.run_id}[/] ({run.label}, lr {run.lr:g}, seed {run.seed})" + worker_tag(context))
        with tracked_run(run, run_dir, context) as tracker:
            model = train_stage(run, run_dir, context, tracker)
        if model is None:  # another rank of a distributed launch: rank 0 scores and records
            return
        model = merge_adapter(model).eval()
        limit = context.config.evaluation.limit
        problems = context.task.suites[suite][:limit] if limit else context.task.suites[suite]
        generator = served_model(run, run_dir, context, model) if context.engines else model
        records, metrics = evaluate_suite(generator, problems, suite, context, seed=run.seed, greedy_only=True)
        write_jsonl(run_dir.file("selection_samples.jsonl"), records)
        write_json(run_dir.file("selection.json"), {"suite": suite, **metrics})

    return Job(run_dir.file(CLAIM_FILE), lambda: run_dir.done or run_dir.has("selection.json"), do)


def select_learning_rates(runs: list[RunSpec], context: StudyContext) -> set[str]:
    """Learning-rate selection, from every run's selection score: per group of runs that differ only in
    the lr multiplier (and seed), choose the multiplier with the best mean pass@1 over seeds (ties: the
    smaller rate). Returns the ids of the runs at the chosen multipliers."""
    best = best_multipliers(
        (
            run.run_id,
            run.lr_multiplier,
            read_json(RunDir(context.experiment / run.run_id).file("selection.json"))["greedy"]["pass@1"],
        )
        for run in runs
    )
    suite = context.config.training.select_lr_on
    console.print("learning rates selected on " + suite + ": " + ", ".join(f"{g} ×{m:g}" for g, m in best.items()))
    return {run.run_id for run in runs if best[selection_group(run.run_id)] == run.lr_multiplier}


def record_unselected(runs: list[RunSpec], context: StudyContext) -> None:
    """Record the runs whose multiplier was not chosen as finished, with their selection score only (the
    study goes on with the chosen ones alone: training.evaluate_all_lrs false)."""
    suite = context.config.training.select_lr_on
    for run in runs:
        run_dir = RunDir(context.experiment / run.run_id)
        if run_dir.done:
            continue
        selection = read_json(run_dir.file("selection.json"))
        metrics = {
            **run.model_dump(mode="json"),
            "label": run.label,
            "primary_suite": context.config.primary_suite,
            "selection_suite": suite,
            "selected": False,
            "train": read_json(run_dir.file("train.json")),
            "suites": {suite: {**{k: v for k, v in selection.items() if k != "suite"}, "in_domain": True}},
        }
        write_json(run_dir.file("metrics.json"), metrics)
        if not context.config.save_weights:
            shutil.rmtree(run_dir.file("weights"), ignore_errors=True)
        write_json(run_dir.file(DONE_FILE), {"finished_at": datetime.now(timezone.utc).isoformat(), "selected": False})
        with tracked_run(run, run_dir, context) as tracker:
            tracker.log_final(metrics)


def prepare(
    config: StudyConfig, device: torch.device, experiment: Path, worker: Worker | None = None, ranks: Ranks | None = None
) -> StudyContext:
    """The context every run shares, resolved once (the lm-evaluation-harness tasks built first, so that one that
    cannot load fails before anything else): the base and its tokenizer, the tasks, the forgetting corpora, the
    base's adapted weights (and their SVD cache), and, where the study asks, the base's probes and per-layer
    scores (`_base/layer_scores.json`). Under a distributed launch, what only evaluation and the analyses read is
    resolved by rank 0 alone, and rank 0's layer scores are every rank's."""
    writes = ranks is None or ranks.main
    if worker:
        worker.cap_gpu_memory(device)
    if config.evaluation.lm_eval:  # its tasks load (a hub task's data download) before anything trains
        check_tasks(config.evaluation.lm_eval)
    base = resolve_base(config.base, device, console)
    tokenizer = load_tokenizer(base)
    forgetting = config.evaluation.forgetting
    heldout = {
        corpus: heldout_chunks(tokenizer, n_chunks=forgetting.n_chunks, chunk_tokens=forgetting.chunk_tokens, corpus=corpus)
        for corpus in (forgetting.corpora if forgetting else ())
    }
    model = load_model(base, torch.device("cpu"))
    names = adapted_weight_names(model, None)
    parameters = dict(model.named_parameters())
    base_weights = {name: parameters[name].detach().clone() for name in names} if writes else {}
    spectra = SpectrumCache(experiment / BASE_DIR / "svd", base.fingerprint)
    stages, task = load_study_tasks(config, tokenizer)
    probes, layer_scores = {}, None
    wants_layer_scores = any(run.layer_fraction is not None for run in expand(config))
    if config.analyses.representations or wants_layer_scores:
        model = load_model(base, device)
        if config.analyses.representations and writes:
            probes = base_probes(
                config.analyses.representations, model, tokenizer, task.suites[config.primary_suite], heldout.get("stdlib")
            )
        if wants_layer_scores:
            layer_scores = layer_similarity_scores(
                model, tokenizer, stages[0][1].train, config.analyses.representations or RepresentationsConfig()
            )
            if ranks:  # which layers an adapter wraps must not differ between ranks by a rounding
                layer_scores = ranks.agree(layer_scores)
            if writes:
                write_json(
                    experiment / BASE_DIR / "layer_scores.json",
                    {
                        "rule": "CKA(input, output) of each decoder layer of the base on the first training examples; "
                        "layer-wise LoRA adapts the ceil(f·L) layers with the lowest score",
                        "scores": layer_scores,
                    },
                )
    return StudyContext(
        config=config,
        device=device,
        base=base,
        tokenizer=tokenizer,
        task=task,
        experiment=experiment,
        stages=tuple(stages),
        heldout=heldout,
        base_weights=base_weights,
        spectra=spectra,
        probes=probes,
        layer_scores=layer_scores,
        worker=worker,
        engines=vllm_engines(config, base, device) if config.evaluation.backend == "vllm" else None,
        ranks=ranks,
    )


_ABSENT = object()  # a key a mapping does not have

# fields added after studies were recorded, at the values every run had before they existed: left
# out of the fingerprint at those values, so a folder recorded earlier still resumes. A dotted key names a
# field inside a section's mapping. The exception, analyses.intervene.control, is silent at its default (on), not
# at the old behaviour (off): it only adds rows to intervene.json, the intruders' rows being what they were, so a
# folder recorded before it resumes under the default and measures the control where the causal test has not run
# or ran without it (analyze.stage.intervention_record); a run finished before keeps its record as it is
FINGERPRINT_SILENT_DEFAULTS = {
    "training": {
        "adam_betas": [0.9, 0.95],
        "adam_eps": 1e-8,
        "batching": "random",
        "pad_to_multiple_of": 1,
        "evaluate_all_lrs": False,
        "gradient_accumulation_steps": 1,
        "activation_checkpointing": False,
        "distributed": {"strategy": "fsdp2"},
    },
    "task": {"timeout_s": None, "memory_mb": None},
    "evaluation": {"vllm": VllmConfig().model_dump(mode="json"), "lm_eval": None, "static_cache_tokens": None},
    "analyses": {"intervene.control": True},
}


def without_silent_defaults(values: dict, silent: dict) -> dict:
    """`values` less the keys at their silent values; a dotted key ("intervene.control") names a key of the
    mapping under its first part (left alone where that is not a mapping, e.g. null)."""
    kept = {key: value for key, value in values.items() if silent.get(key, _ABSENT) != value}
    for key, default in silent.items():
        outer, dot, inner = key.partition(".")
        if dot and isinstance(kept.get(outer), dict):
            kept[outer] = without_silent_defaults(kept[outer], {inner: default})
    return kept


def run_record(run: RunSpec | None, config: StudyConfig) -> dict:
    """What determines a run's results (run None: the base's evaluation); a run directory made from
    another record is not resumed. Data files count by their content, not by where they lie."""
    spec, shared = fingerprinted(run, config)
    shared["task"] = with_data_digests(shared["task"])
    if shared.get("evaluation", {}).get("lm_eval"):
        shared["evaluation"]["lm_eval"] = with_data_digests(shared["evaluation"]["lm_eval"])
    return {"run": spec, "fingerprint": fingerprint([spec, shared])}


def fingerprinted(run: RunSpec | None, config: StudyConfig) -> tuple[object, dict]:
    """The run and the config sections a run record identifies, less the fields at their silent defaults."""
    shared = config.model_dump(
        mode="json",
        include={"base", "task", "evaluation"} if run is None else {"base", "task", "training", "evaluation", "analyses"},
    )
    for section, silent in FINGERPRINT_SILENT_DEFAULTS.items():
        if section in shared:
            shared[section] = without_silent_defaults(shared[section], silent)
    return (run.model_dump(mode="json") if run else "base"), shared


def with_data_digests(section: dict) -> dict:
    """A config section with each data path (as `_resolve_data_paths` reads them) replaced by a digest of what
    it holds: the same data is the same run however the config's path was spelled (the Ray executor's slots
    load it by its absolute path) and wherever the folder is copied; changed data is another run."""
    keys = data_path_keys()
    return {key: data_digest(Path(value)) if key in keys and isinstance(value, str) else value for key, value in section.items()}


def data_digest(path: Path) -> str:
    """sha256 of a data file, or a digest of a folder's files (their relative paths and sha256s)."""
    try:
        if not path.is_dir():
            return f"sha256:{file_digest(path)}"
        files = sorted(item for item in path.rglob("*") if item.is_file())
        return f"tree:{fingerprint([[item.relative_to(path).as_posix(), file_digest(item)] for item in files])}"
    except OSError as error:
        raise InputError(path, f"cannot read it: {error.strerror or error}") from None


def file_digest(path: Path) -> str:
    """A file's sha256, remembered per path, size and modification time: every run record of a study hashes
    the same files."""
    stat = path.stat()
    return _file_digest(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@cache
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    return sha256_file(path)


def holds_this_run(run_dir: RunDir, run: RunSpec | None, config: StudyConfig) -> bool:
    return read_json(run_dir.file("run.json")).get("fingerprint") in (
        run_record(run, config)["fingerprint"],
        fingerprint(list(fingerprinted(run, config))),  # as recorded before data counted by content: its path as spelled
    )


def is_stub(run_dir: RunDir) -> bool:
    """A run directory that records which run it is for and nothing else: no result of any config is lost
    by binding it to another (a study that stopped before this run started leaves these)."""
    return {path.name for path in run_dir.path.iterdir()} <= {"run.json", CLAIM_FILE}


def holds_another_run(run_dir: RunDir, run: RunSpec | None, config: StudyConfig) -> bool:
    """Whether `run_dir` holds results another config made: the study refuses it rather than resume or overwrite it."""
    return run_dir.has("run.json") and not is_stub(run_dir) and not holds_this_run(run_dir, run, config)


def refuse_another_run(run_dir: RunDir, run: RunSpec | None, config: StudyConfig) -> None:
    if holds_another_run(run_dir, run, config):
        raise StudyMismatch(f"{run_dir.path} holds a run of a different config; use another experiment name or --output")


def run_progress(run: RunSpec, run_dir: RunDir, config: StudyConfig) -> str:
    """How far `run` got in `run_dir` (RunDir.progress), or that the folder holds another config's run."""
    return "another config's" if holds_another_run(run_dir, run, config) else run_dir.progress


def bind_run_dir(run: RunSpec | None, run_dir: RunDir, config: StudyConfig) -> None:
    """Record which run a directory holds (a record of an earlier form of the same run is rewritten in today's);
    refuse one that holds a run of a different config."""
    record = run_record(run, config)
    if run_dir.has("run.json") and read_json(run_dir.file("run.json")).get("fingerprint") == record["fingerprint"]:
        return
    refuse_another_run(run_dir, run, config)
    write_json(run_dir.file("run.json"), record)


def execute_run(
    run: RunSpec, run_dir: RunDir, context: StudyContext, tracker: RunTracker | None = None, selected: bool | None = None
) -> None:
    """One run's stages in order, each skipped when its record exists: train, the reference it is compared
    with, spectra (before the merge), evaluation (which merges), representations, the causal test; then
    `metrics.json` gathers their records (with `selected`, whether learning-rate selection chose this run's
    multiplier, where a choice was made) and `done.json` marks the run finished, and `tracker` hears the
    training log and the final metrics."""
    started = time.perf_counter()
    model = train_stage(run, run_dir, context, tracker)
    if model is None:  # another rank of a distributed launch: rank 0 evaluates and records
        return
    reference = reference_for(run, model, context)
    spectral = spectral_stage(run, run_dir, context, model, reference)  # before the merge: ΔW from the adapter itself
    evaluation, model = evaluate_stage(run, run_dir, context, model)  # merges an adapter after timing it unmerged
    metrics = {
        **run.model_dump(mode="json"),
        "label": run.label,
        "primary_suite": context.config.primary_suite,
        "selection_suite": context.config.training.select_lr_on,
        **({"selected": selected} if selected is not None else {}),
        "train": read_json(run_dir.file("train.json")),
        **evaluation,
        "spectral": spectral,
        **({"worker": context.worker.record(context.device)} if context.worker else {}),
    }
    if context.config.sequence:
        metrics["sequence"] = sequence_matrix(run_dir, context, evaluation)
    stage_s = {"train": metrics["train"]["wall_s"], "evaluate": evaluation["wall_s"], "spectral": spectral.get("wall_s")}
    if context.probes:
        metrics["representations"] = representations_stage(run_dir, context, model)
        stage_s["representations"] = metrics["representations"]["wall_s"]
    if context.config.intervenes_on(run):
        result = intervention_record(run, run_dir, context, model, reference, evaluation)
        metrics["intervene"] = result["rows"]
        stage_s["intervene"] = result.get("wall_s")
    metrics["stage_s"] = stage_s
    write_json(run_dir.file("metrics.json"), metrics)
    if not context.config.save_weights:
        shutil.rmtree(run_dir.file("weights"), ignore_errors=True)
        for index, (name, _) in enumerate(context.stages[:-1]):
            shutil.rmtree(stage_dir(run_dir, index, name) / "weights", ignore_errors=True)
    write_json(
        run_dir.file(DONE_FILE),
        {"finished_at": datetime.now(timezone.utc).isoformat(), "wall_s_this_session": time.perf_counter() - started},
    )
    if tracker:  # after done.json: a session stopped before it never logged them, so a resume cannot log them twice
        tracker.log_final(metrics)


def intervene(experiment: Path, run_id: str, settings: InterveneConfig) -> dict:
    """`ftcompare intervene`: the causal test on a finished run of an experiment (see `intervention_stage`), at
    `settings.lambdas`, with its control when `settings.control`."""
    study = read_json(experiment / STUDY_FILE)
    recorded = study["config"]
    if recorded.get("sequence"):  # study.json writes out the default `task`, which a sequence must not give
        recorded = {key: value for key, value in recorded.items() if key != "task"}
    recorded.pop("tracking", None)  # nothing is tracked here: a tracker missing on this machine must not refuse it
    config = parse_config(recorded, source=str(experiment / STUDY_FILE))  # imports its plugins first
    runs = {r["run_id"]: RunSpec.model_validate(r) for r in study["runs"]}
    if run_id not in runs:
        raise ValueError(f"{experiment}: no run {run_id!r}; runs: {', '.join(runs)}")
    run, run_dir = runs[run_id], RunDir(experiment / run_id)
    if not run_dir.has_trained_weights:
        raise ValueError(f"{run_dir.path}: no trained weights (was it run with save_weights: false, or not finished?)")
    context = prepare(config, resolve_device(config.device), experiment)
    model = load_trained(run, run_dir.file("weights"), context)
    reference = reference_for(run, model, context)
    return intervention_stage(run, run_dir, context, merge_adapter(model).eval(), reference, settings)
