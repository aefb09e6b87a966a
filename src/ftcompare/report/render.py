"""The report of an experiment folder: `report.md` (figures as PNG files beside it) and a
self-contained `report.html` (figures embedded), both rendered from the runs' records alone, so
`ftcompare report DIR` re-renders without re-running anything."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from pathlib import Path

from jinja2 import Environment, PackageLoader, select_autoescape

from ftcompare.report import plots, spectral_plots
from ftcompare.report.tables import (
    epsilon_sweep_table,
    fully_evaluated,
    intervention_groups,
    intervention_table,
    judged_tables,
    lm_eval_line,
    lm_eval_table,
    mark_lr_choice,
    markdown_from_cells,
    markdown_table,
    paired_comparison_table,
    paired_over_seeds,
    paired_over_seeds_table,
    result_row,
    sandbox_line,
    seed_summary,
    seed_summary_table,
    sequence_tables,
    sessions_line,
    stage_time_table,
    suite_tables,
    table_cells,
    training_precision_line,
    weights_line,
)
from ftcompare.runs.store import BASE_DIR, DONE_FILE, STUDY_FILE, atomic_write_text, read_json, read_sessions, run_dirs

FIGURES_DIR = "figures"


@dataclass(frozen=True)
class Figure:
    slug: str
    title: str
    caption: str
    png: bytes


@dataclass
class Collected:
    """What the report reads from an experiment folder: the study record, the metrics of the base then of
    each finished run, and per run the spectral record and the probe results."""

    study: dict
    records: list[dict]
    spectral: dict[str, dict] = field(default_factory=dict)  # run id -> spectral.json
    representations: dict[str, dict] = field(default_factory=dict)  # run id -> probes
    unfinished: list[str] = field(default_factory=list)  # run ids of the study without a finished record
    sessions: list[dict] = field(default_factory=list)  # executor.json: each session's executor and wall time
    finished_at: list[str] = field(default_factory=list)  # when each finished run ended (its done.json), ISO 8601


def collect(experiment: Path) -> Collected:
    experiment = Path(experiment)
    if not experiment.is_dir():
        raise FileNotFoundError(f"{experiment}: no such experiment folder")
    study = read_json(experiment / STUDY_FILE) if (experiment / STUDY_FILE).is_file() else {}
    collected = Collected(study, [])
    base = experiment / BASE_DIR / "metrics.json"
    if base.is_file():
        collected.records.append(read_json(base))
    for run in run_dirs(experiment):
        if run.done:
            collected.finished_at.append(read_json(run.file(DONE_FILE))["finished_at"])
        if run.has("metrics.json"):
            collected.records.append(read_json(run.file("metrics.json")))
            if run.has("spectral.json"):
                collected.spectral[run.run_id] = read_json(run.file("spectral.json"))
            if run.has("representations.json"):
                collected.representations[run.run_id] = read_json(run.file("representations.json"))["probes"]
    mark_lr_choice(collected.records)
    collected.sessions = read_sessions(experiment)
    collected.unfinished = [
        run["run_id"] for run in study.get("runs", ()) if not (experiment / run["run_id"] / "metrics.json").is_file()
    ]
    if len(collected.records) <= (1 if base.is_file() else 0):
        raise FileNotFoundError(f"{experiment}: no finished runs to report")
    return collected


def figures(all_rows: list[dict], collected: Collected) -> list[Figure]:
    """The report's figures, of every fully evaluated run: with learning-rate selection, each method's chosen
    multiplier, or every multiplier (training.evaluate_all_lrs); the learning-rate selection figure shows
    every run's selection score."""
    rows = [r for r in all_rows if r.get("evaluated") is not False]
    result = [
        Figure(
            "accuracy_vs_rank",
            "Accuracy vs rank",
            "Greedy pass@1 in and out of domain per LoRA rank (the line: the mean over seeds; the small points: each seed), one panel per learning-rate multiplier where several were evaluated; full fine-tuning (its mean at that multiplier) and the base as horizontal lines.",
            plots.accuracy_vs_rank(rows),
        ),
        Figure(
            "forgetting_vs_accuracy",
            "Forgetting vs accuracy",
            "In-domain greedy pass@1 against the increase of held-out pre-training loss over the base: the large marker the mean over seeds, the small ones each seed; one colour per method setting, one marker shape per learning-rate multiplier.",
            plots.forgetting_vs_accuracy(rows),
        ),
        Figure(
            "intruders_vs_rank",
            "Intruder dimensions vs rank",
            "Total intruder dimensions over every adapted matrix (Algorithm 1 of Shuttleworth et al. 2024 at the configured k and ε).",
            plots.intruders_vs_rank(rows),
        ),
    ]
    if "lr_multiplier" in plots.sweep_axes(all_rows) and any(r.get("selection_pass1") is not None for r in all_rows):
        every_rate = "lr_multiplier" in plots.sweep_axes(rows)
        result.append(
            Figure(
                "learning_rate_selection",
                "Learning-rate selection",
                "Greedy pass@1 on the selection suite per learning-rate multiplier, per method (the line: the mean over seeds, which chooses; the small points: each seed); "
                + (
                    "each multiplier is reported, the chosen one marked selected in the tables."
                    if every_rate
                    else "each method's best multiplier is the one reported everywhere else."
                ),
                plots.learning_rate_selection(all_rows),
            )
        )
    for axis in plots.sweep_axes(rows):
        if axis != "rank":
            name = plots.AXIS_LABELS[axis].split(" (")[0]
            result.append(
                Figure(
                    f"sweep_{axis}",
                    f"Sweep over the {name}",
                    f"Accuracy, forgetting and intruder dimensions against the {plots.AXIS_LABELS[axis]}, one line per setting of the other axes (the mean over seeds; the small points: each seed); runs without this axis as horizontal lines.",
                    plots.sweep(rows, axis),
                )
            )
    result.append(
        Figure(
            "latency",
            "Latency and memory",
            "Training and generation throughput, and peak training memory, per run.",
            plots.latency_bars(rows),
        )
    )
    summaries = {run: record["summary"] for run, record in collected.spectral.items()}
    if summaries:
        k = max((record.get("k") or 0 for record in collected.spectral.values()), default=0) or None
        result += [
            Figure(
                "epsilon_sweep",
                "Intruders vs ε",
                "Total intruder dimensions per run as the similarity threshold ε varies.",
                plots.epsilon_sweep({run: s.get("epsilon_sweep", {}) for run, s in summaries.items()}),
            ),
            Figure(
                "intruders_by_layer",
                "Intruders by layer and module type",
                "Intruder dimensions per layer (left) and per module type (right), per run; full fine-tuning in black.",
                spectral_plots.intruders_by_layer(summaries),
            ),
            Figure(
                "intruder_positions",
                "Where intruders sit in the spectrum",
                "Intruder dimensions at each position among the tuned matrix's top-k singular vectors (1 = largest), summed over matrices.",
                spectral_plots.intruder_positions(summaries, k=k),
            ),
        ]
        matrices = {run: record.get("matrices", []) for run, record in collected.spectral.items()}
        if any(matrices.values()):
            result.append(
                Figure(
                    "spectral_features_by_layer",
                    "Spectral features per layer",
                    "Per layer, mean over adapted matrices: effective rank (Roy & Vetterli 2007) of W and ΔW = W − W0, singular-value entropy, stable rank and spectral norm of ΔW, and ‖ΔW‖_F/‖W0‖_F; the base W0's effective rank dotted.",
                    spectral_plots.spectral_features_by_layer(matrices),
                )
            )
    interventions, _ = intervention_groups(collected.records)
    if interventions:
        result.append(
            Figure(
                "intervene",
                "Causal test: scaling the intruder dimensions",
                "In-domain greedy pass@1 and forgetting when the singular values of every adapted matrix's intruder dimensions are scaled by λ (solid; Shuttleworth et al. 2024, §6), and, as the control, as many of its top non-intruder directions (dashed); λ = 1 is the tuned model, λ = 0 removes those directions. Lines: the mean over seeds; points: each seed. Forgetting on a symmetric log scale past ±0.01. Settings without an intruder dimension are not drawn.",
                plots.interventions(interventions),
            )
        )
    sequences = {r["run_id"]: r["sequence"] for r in collected.records if r.get("sequence")}
    if sequences:
        result.append(
            Figure(
                "sequence",
                "Sequential fine-tuning: interference",
                "Greedy pass@1 on each task (panel) after each training stage, per run; the dotted line marks the stage that trains that task.",
                plots.sequence_curves(sequences),
            )
        )
    if collected.representations:
        result.append(
            Figure(
                "representations",
                "Representational drift and attention change",
                "Per layer: linear CKA between base and tuned hidden states (Kornblith et al. 2019) and the Jensen–Shannon distance between their attention maps, on task inputs (solid) and held-out pre-training text (dashed).",
                plots.cka_by_layer(collected.representations),
            )
        )
    return result


def render_report(experiment: Path) -> tuple[Path, Path, list[dict]]:
    """Write report.md, report.html and figures/ into the experiment folder; return their paths and the rows."""
    experiment = Path(experiment)
    collected = collect(experiment)
    study, records = collected.study, collected.records
    rows = [result_row(record) for record in records]
    figs = figures(rows, collected)
    figure_dir = experiment / FIGURES_DIR
    figure_dir.mkdir(exist_ok=True)
    for figure in figs:
        (figure_dir / f"{figure.slug}.png").write_bytes(figure.png)
    header, body = table_cells(rows)
    suite_header, suite_body, robust_header, robust_body = suite_tables(records)
    paired_header, paired_body = paired_comparison_table(records)
    summary = seed_summary(records)
    seed_header, seed_body = seed_summary_table(summary)
    seed_paired_header, seed_paired_body = paired_over_seeds_table(paired_over_seeds(records))
    tuned = [r for r in records if r.get("method") != "base" and fully_evaluated(r)]
    # the tables over seeds, where there is something to take a mean over or a multiplier axis to show
    over_seeds = any(row["seeds"] > 1 for row in summary) or len({r.get("lr_multiplier") for r in tuned}) > 1
    lm_eval_header, lm_eval_body = lm_eval_table(records)
    sweep_header, sweep_body = epsilon_sweep_table(records, collected.spectral)
    intervene_header, intervene_body, intervene_untouched = intervention_table(records)
    time_header, time_body = stage_time_table(records)
    environment = Environment(
        loader=PackageLoader("ftcompare.report", "templates"),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    context = {
        "study": study,
        "weights": weights_line((study.get("base") or {}).get("provenance") or {}),
        "precision": training_precision_line(records),
        "sandbox": sandbox_line(records),
        "gpu": str(study.get("device", "")).startswith("cuda"),
        "rows": rows,
        "quantized_forgetting": any(row["forgetting_over_quantized"] is not None for row in rows),
        "records": records,
        "header": header,
        "body": body,
        "markdown_table": markdown_table(rows),
        "suite_header": suite_header,
        "suite_body": suite_body,
        "suite_markdown": markdown_from_cells(suite_header, suite_body),
        "robust_header": robust_header,
        "robust_body": robust_body,
        "paired_header": paired_header,
        "paired_body": paired_body,
        "paired_markdown": markdown_from_cells(paired_header, paired_body) if paired_body else "",
        "over_seeds": over_seeds,
        "seed_header": seed_header,
        "seed_body": seed_body,
        "seed_markdown": markdown_from_cells(seed_header, seed_body) if over_seeds else "",
        "sweep_markdown": markdown_from_cells(sweep_header, sweep_body) if over_seeds and sweep_body else "",
        "sweep_header": sweep_header,
        "sweep_body": sweep_body if over_seeds else [],
        "seed_paired_header": seed_paired_header,
        "seed_paired_body": seed_paired_body if over_seeds else [],
        "seed_paired_markdown": markdown_from_cells(seed_paired_header, seed_paired_body)
        if over_seeds and seed_paired_body
        else "",
        "robust_markdown": markdown_from_cells(robust_header, robust_body) if robust_body else "",
        "lm_eval_header": lm_eval_header,
        "lm_eval_body": lm_eval_body,
        "lm_eval_markdown": markdown_from_cells(lm_eval_header, lm_eval_body) if lm_eval_body else "",
        "lm_eval_settings": lm_eval_line(records),
        "sequences": sequence_tables(records),
        "time_header": time_header,
        "time_body": time_body,
        "time_markdown": markdown_from_cells(time_header, time_body) if time_body else "",
        "sessions": sessions_line(collected.sessions, collected.finished_at),
        "intervene_header": intervene_header,
        "intervene_body": intervene_body,
        "intervene_markdown": markdown_from_cells(intervene_header, intervene_body) if intervene_body else "",
        "intervene_untouched": ", ".join(intervene_untouched),
        "judged": judged_tables(records),
        "selection_suite": (study.get("config") or {}).get("training", {}).get("select_lr_on"),
        "every_rate_evaluated": any(r.get("selected") is False and fully_evaluated(r) for r in records),
        "figures": [
            {
                "slug": f.slug,
                "title": f.title,
                "caption": f.caption,
                "data": base64.b64encode(f.png).decode(),
                "file": f"{FIGURES_DIR}/{f.slug}.png",
            }
            for f in figs
        ],
        "experiment": study.get("config", {}).get("experiment", experiment.name),
        "unfinished": collected.unfinished,
        "retrained": [r["run_id"] for r in records if (r.get("train") or {}).get("retrained_without_saved_weights")],
    }
    markdown_path, html_path = experiment / "report.md", experiment / "report.html"
    atomic_write_text(markdown_path, environment.get_template("report.md.j2").render(**context))
    atomic_write_text(html_path, environment.get_template("report.html.j2").render(**context))
    return markdown_path, html_path, rows
