"""The command line: it parses arguments and calls the stages, nothing more."""

from __future__ import annotations

from importlib.resources import as_file, files
from pathlib import Path

import typer
from rich.table import Table

from ftcompare.config import ConfigError, StudyConfig, expand, load_config
from ftcompare.console import console

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Measure how LoRA fine-tuning compares with full fine-tuning.")

OUTPUT_OPTION = typer.Option(Path("runs"), "--output", "-o", help="Folder that holds experiment folders.")


def _fail(message: str) -> None:
    console.print(f"[red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


def _load(config_path: Path) -> StudyConfig:
    try:
        return load_config(config_path)
    except ConfigError as error:
        _fail(str(error))


def _print_matrix(config: StudyConfig) -> None:
    table = Table(title=f"run matrix: {config.experiment}")
    for column in ("run", "method", "rank", "alpha", "lr", "seed"):
        table.add_column(column)
    for run in expand(config):
        table.add_row(run.run_id, run.method, str(run.rank or "–"), f"{run.alpha:g}" if run.alpha else "–", f"{run.lr:g}", str(run.seed))
    console.print(table)


def _run_and_report(config: StudyConfig, output: Path) -> None:
    from ftcompare.report.render import render_report
    from ftcompare.report.tables import SUMMARY_KEYS, table_cells
    from ftcompare.study import StudyMismatch, run_study

    _print_matrix(config)
    try:
        experiment = run_study(config, output)
    except StudyMismatch as error:
        _fail(str(error))
    markdown, html, rows = render_report(experiment)
    header, body = table_cells(rows, SUMMARY_KEYS)
    table = Table(title=f"results: {config.experiment} (full table: report.md)")
    for title in header:
        table.add_column(title, justify="right")
    for cells in body:
        table.add_row(*cells)
    console.print(table)
    console.print(f"report: {html}\n        {markdown}")


@app.command()
def run(
    config_path: Path = typer.Argument(..., help="Study config (YAML)."),
    output: Path = OUTPUT_OPTION,
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate and print the run matrix; train nothing."),
) -> None:
    """Run a study: every method × rank × seed of the config, then the report. Finished runs are skipped."""
    config = _load(config_path)
    if dry_run:
        from ftcompare.study import estimate_cost

        _print_matrix(config)
        table = Table(title="estimated cost (counted offline; tokens are upper bounds)")
        table.add_column("quantity")
        table.add_column("value", justify="right")
        for key, value in estimate_cost(config).items():
            table.add_row(key.replace("_", " "), "unknown offline" if value is None else str(value))
        console.print(table)
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
    except FileNotFoundError as error:
        _fail(str(error))
    console.print(f"report: {html}\n        {markdown}")


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


@app.command("verify-benchmark")
def verify_benchmark_command(
    benchmark: str = typer.Argument(..., help="mbpp, mbpp-sanitized or quixbugs."),
    data: Path = typer.Option(None, "--data", help="The benchmark file (mbpp.jsonl, sanitized-mbpp.json, quixbugs.jsonl); "
                                                  "MBPP without it comes from the Hugging Face hub."),
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
