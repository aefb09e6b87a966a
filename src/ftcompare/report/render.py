"""The report of an experiment folder: `report.md` (figures as PNG files beside it) and a
self-contained `report.html` (figures embedded), both rendered from the runs' records alone, so
`ftcompare report DIR` re-renders without re-running anything."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path

from jinja2 import Environment, PackageLoader, select_autoescape

from ftcompare.report import plots
from ftcompare.report.tables import markdown_from_cells, markdown_table, result_row, suite_tables, table_cells
from ftcompare.runs.store import BASE_DIR, STUDY_FILE, atomic_write_text, read_json, run_dirs

FIGURES_DIR = "figures"


@dataclass(frozen=True)
class Figure:
    slug: str
    title: str
    caption: str
    png: bytes


def collect(experiment: Path) -> tuple[dict, list[dict], dict[str, dict]]:
    """(study record, metrics of the base then of each finished run, spectral sweeps by run, probe results by run)."""
    experiment = Path(experiment)
    if not experiment.is_dir():
        raise FileNotFoundError(f"{experiment}: no such experiment folder")
    study = read_json(experiment / STUDY_FILE) if (experiment / STUDY_FILE).is_file() else {}
    records = []
    base = experiment / BASE_DIR / "metrics.json"
    if base.is_file():
        records.append(read_json(base))
    sweeps, representations = {}, {}
    for run in run_dirs(experiment):
        if run.has("metrics.json"):
            records.append(read_json(run.file("metrics.json")))
            if run.has("spectral.json"):
                sweeps[run.run_id] = read_json(run.file("spectral.json"))["summary"].get("epsilon_sweep", {})
            if run.has("representations.json"):
                representations[run.run_id] = read_json(run.file("representations.json"))["probes"]
    if len(records) <= (1 if base.is_file() else 0):
        raise FileNotFoundError(f"{experiment}: no finished runs to report")
    return study, records, sweeps, representations


def figures(rows: list[dict], sweeps: dict[str, dict], representations: dict[str, dict]) -> list[Figure]:
    result = [
        Figure("accuracy_vs_rank", "Accuracy vs rank", "Greedy pass@1 in and out of domain per LoRA rank (mean ± sd over seeds); full fine-tuning and the base as horizontal lines.", plots.accuracy_vs_rank(rows)),
        Figure("forgetting_vs_accuracy", "Forgetting vs accuracy", "In-domain greedy pass@1 against the increase of held-out pre-training loss over the base.", plots.forgetting_vs_accuracy(rows)),
        Figure("intruders_vs_rank", "Intruder dimensions vs rank", "Total intruder dimensions over every adapted matrix (Algorithm 1 of Shuttleworth et al. 2024 at the configured k and ε).", plots.intruders_vs_rank(rows)),
        Figure("latency", "Latency and memory", "Training and generation throughput, and peak training memory, per run.", plots.latency_bars(rows)),
    ]
    if sweeps:
        result.append(Figure("epsilon_sweep", "Intruders vs ε", "Total intruder dimensions per run as the similarity threshold ε varies.", plots.epsilon_sweep(sweeps)))
    if representations:
        result.append(Figure("representations", "Representational drift and attention change",
                             "Per layer: linear CKA between base and tuned hidden states (Kornblith et al. 2019) and the Jensen–Shannon distance between their attention maps, on task inputs (solid) and held-out pre-training text (dashed).",
                             plots.cka_by_layer(representations)))
    return result


def render_report(experiment: Path) -> tuple[Path, Path, list[dict]]:
    """Write report.md, report.html and figures/ into the experiment folder; return their paths and the rows."""
    experiment = Path(experiment)
    study, records, sweeps, representations = collect(experiment)
    rows = [result_row(record) for record in records]
    figs = figures(rows, sweeps, representations)
    figure_dir = experiment / FIGURES_DIR
    figure_dir.mkdir(exist_ok=True)
    for figure in figs:
        (figure_dir / f"{figure.slug}.png").write_bytes(figure.png)
    header, body = table_cells(rows)
    suite_header, suite_body, robust_header, robust_body = suite_tables(records)
    environment = Environment(loader=PackageLoader("ftcompare.report", "templates"), autoescape=select_autoescape(["html"]),
                              trim_blocks=True, lstrip_blocks=True)
    context = {
        "study": study,
        "rows": rows,
        "records": records,
        "header": header,
        "body": body,
        "markdown_table": markdown_table(rows),
        "suite_header": suite_header, "suite_body": suite_body, "suite_markdown": markdown_from_cells(suite_header, suite_body),
        "robust_header": robust_header, "robust_body": robust_body,
        "robust_markdown": markdown_from_cells(robust_header, robust_body) if robust_body else "",
        "figures": [{"slug": f.slug, "title": f.title, "caption": f.caption,
                     "data": base64.b64encode(f.png).decode(), "file": f"{FIGURES_DIR}/{f.slug}.png"} for f in figs],
        "experiment": study.get("config", {}).get("experiment", experiment.name),
    }
    markdown_path, html_path = experiment / "report.md", experiment / "report.html"
    atomic_write_text(markdown_path, environment.get_template("report.md.j2").render(**context))
    atomic_write_text(html_path, environment.get_template("report.html.j2").render(**context))
    return markdown_path, html_path, rows
