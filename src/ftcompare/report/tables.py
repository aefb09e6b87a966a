"""The results tables, from the runs' metrics records: one row per run (and one for the base), per suite, paired
by problem; and over seeds, one row per method setting and learning-rate multiplier."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from ftcompare.evaluate.metrics import paired_difference
from ftcompare.matrix import best_multipliers, run_id_without, selection_group


@dataclass(frozen=True)
class Column:
    key: str
    title: str
    fmt: str  # format spec for numbers


def _get(record: dict, *path: str) -> object:
    value: object = record
    for part in path:
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def fully_evaluated(record: dict) -> bool:
    """Whether a run went through the full evaluation: every run but one whose learning-rate multiplier was not
    chosen in a study that stops those at their selection score (training.evaluate_all_lrs false), which
    records its selection suite alone."""
    return record.get("selected") is not False or record.get("primary_suite", "test") in (record.get("suites") or {})


def intruder_total(record: dict) -> int | None:
    """A run's total intruder dimensions; None ("–") when its spectral record analysed no matrix, which
    records written before the spectral stage refused that can hold (GPT-2's Conv1D went unseen): a
    count over no matrices is not a zero."""
    if _get(record, "spectral", "matrices") == 0:
        return None
    return _get(record, "spectral", "total_intruders")


def weights_line(provenance: dict) -> str:
    """Which weights the base was, from its provenance record: source, revision or file and checksum,
    quantization, and the record's own caveat (a quantized file is not the upstream model)."""
    parts = [
        str(provenance[key]) if key == "source" else f"{key} {provenance[key]}"
        for key in ("source", "revision", "file")
        if provenance.get(key)
    ]
    if provenance.get("sha256"):
        parts.append(f"sha256 {provenance['sha256'][:12]}…")
    if provenance.get("quantization"):
        parts.append(str(provenance["quantization"]))
    note = provenance.get("note")
    return "; ".join(parts) + (f". Note: {note}." if note else ("." if parts else ""))


def training_precision_line(records: Sequence[dict]) -> str:
    """How each trained run held its trainable weights while training: fp32 master weights under autocast,
    or the model's own dtype. Runs recorded before ftcompare kept master weights trained in the base's dtype."""
    runs_by_precision: dict[str, list[str]] = {}
    for record in records:
        train = record.get("train") or {}
        if not train:
            continue
        dtype = str(train.get("dtype", "")).removeprefix("torch.")
        if "master_weights" not in train:
            precision = f"{dtype}, pure (recorded before ftcompare kept fp32 master weights)"
        elif train.get("autocast"):
            precision = f"{train['master_weights']} master weights, {train['autocast']} autocast"
        else:
            precision = f"{train['master_weights']}, pure" if train["master_weights"] != "float32" else "float32"
        runs_by_precision.setdefault(precision, []).append(str(record.get("run_id")))
    if len(runs_by_precision) == 1:
        return f"{next(iter(runs_by_precision))}, in every run"
    return "; ".join(f"{precision}: {', '.join(runs)}" for precision, runs in runs_by_precision.items())


def sandbox_line(records: Sequence[dict]) -> str:
    """Which sandbox isolation scored the generated programs, over every run and suite: bubblewrap, or the
    weaker fallback (named with its runs, so a result scored without namespaces is never mistaken for one
    scored with them). Empty where no record says (evaluated before the sandbox recorded it)."""
    samples: dict[str, int] = {}
    runs_by_isolation: dict[str, set[str]] = {}
    for record in records:
        for suite in (record.get("suites") or {}).values():
            for mode in ("greedy", "sampled"):
                for isolation, count in ((suite.get(mode) or {}).get("isolation_counts") or {}).items():
                    samples[isolation] = samples.get(isolation, 0) + count
                    runs_by_isolation.setdefault(isolation, set()).add(str(record.get("run_id")))
    parts = []
    for isolation in sorted(samples):
        runs = "" if isolation == "bubblewrap" else f" (runs: {', '.join(sorted(runs_by_isolation[isolation]))})"
        parts.append(f"{isolation}: {samples[isolation]:,} programs{runs}")
    return "; ".join(parts)


def _best_sampled_k(record: dict, suite: str) -> tuple[str, float | None]:
    sampled = _get(record, "suites", suite, "sampled") or {}
    keys = sorted((k for k in sampled if k.startswith("pass@")), key=lambda k: int(k.split("@")[1]))
    return (keys[-1], sampled[keys[-1]]) if keys else ("pass@k", None)


def out_of_domain_suite(record: dict, primary: str) -> str | None:
    """The suite the table's OOD column shows: the task's own "ood" suite, else the first suite tagged out
    of domain (e.g. HumanEval for an MBPP study) that has a pass@1 (not one scored by a judge)."""
    suites = record.get("suites") or {}
    own = "ood" if primary == "test" else primary.rsplit("/", 1)[0] + "/ood"
    if own in suites:
        return own
    return next(
        (
            name
            for name, metrics in suites.items()
            if metrics.get("in_domain") is False and (metrics.get("greedy") or {}).get("scoring") != "judge"
        ),
        None,
    )


def mark_lr_choice(records: Sequence[dict]) -> None:
    """Mark `selected` on runs of a study that evaluated every lr multiplier (`evaluate_all_lrs`: the study
    leaves the choice to the report), by the study's own rule (`matrix.best_multipliers`) over each run's
    recorded selection-suite pass@1, among the runs finished so far. Runs already marked are left alone."""
    open_choice = [
        r
        for r in records
        if r.get("selection_suite")
        and r.get("selected") is None
        and _get(r, "suites", r["selection_suite"], "greedy", "pass@1") is not None
    ]
    best = best_multipliers(
        (r["run_id"], r["lr_multiplier"], r["suites"][r["selection_suite"]]["greedy"]["pass@1"]) for r in open_choice
    )
    for record in open_choice:
        record["selected"] = best[selection_group(record["run_id"])] == record["lr_multiplier"]


def result_row(record: dict) -> dict:
    """The table's values for one metrics record (None where the run has no such number)."""
    primary = record.get("primary_suite", "test")
    ood = out_of_domain_suite(record, primary)
    is_adapter = _get(record, "train", "method", "library") == "peft"  # what the run recorded it trained
    row = {
        "run": record.get("run_id"),
        "method": record.get("label", record.get("method")),
        "kind": record.get("method"),
        "rank": record.get("rank"),
        "alpha": record.get("alpha"),
        # the sweep axes; an adapter on every layer sits at layer fraction 1
        "layer_fraction": (record.get("layer_fraction") or 1.0) if is_adapter else None,
        "data_fraction": record.get("data_fraction"),
        "lr_multiplier": record.get("lr_multiplier"),
        "selection_pass1": _get(record, "suites", record.get("selection_suite") or "", "greedy", "pass@1"),
        "selected": record.get("selected"),  # learning-rate selection, decided by the study
        "evaluated": fully_evaluated(record),
        "seed": record.get("seed"),
        "lr": record.get("lr"),
        "trainable_params": _get(record, "train", "trainable_params"),
        "id_pass1": _get(record, "suites", primary, "greedy", "pass@1"),
        "ood_suite": ood,
        "ood_pass1": _get(record, "suites", ood, "greedy", "pass@1") if ood else None,
        "forgetting": _get(record, "forgetting", "increase") if record.get("method") != "base" else 0.0,
        "heldout_loss": _get(record, "forgetting", "heldout_loss"),
        "forgetting_prose": _get(record, "forgetting", "corpora", "prose", "increase")
        if record.get("method") != "base"
        else None,
        # QLoRA: the loss moved by the adapter alone, over the quantized base it was trained on
        "forgetting_over_quantized": _get(record, "forgetting", "increase_over_quantized_base"),
        # steady state: the first steps' one-time costs left out (records from before it have only the overall)
        "train_tokens_per_s": _get(record, "train", "steady_tokens_per_s") or _get(record, "train", "tokens_per_s"),
        "peak_memory_mb": _get(record, "train", "peak_memory_mb"),
        "memory_measure": _get(record, "train", "memory_measure"),
        "merged_tokens_per_s": _get(record, "latency", "merged_tokens_per_s"),
        "unmerged_tokens_per_s": _get(record, "latency", "unmerged_tokens_per_s"),
        "intruders": intruder_total(record),
        # lm-evaluation-harness: each task's accuracy change against the base (the base's own: 0)
        **{
            f"lm_eval_change:{task}": 0.0 if record.get("method") == "base" else _get(scores, "change", "acc", "difference")
            for task, scores in (_get(record, "lm_eval", "tasks") or {}).items()
        },
    }
    id_pass1, ood_pass1 = row["id_pass1"], row["ood_pass1"]
    row["generalisation_gap"] = id_pass1 - ood_pass1 if id_pass1 is not None and ood_pass1 is not None else None
    for suite, prefix in ((primary, "id"), (ood or "", "ood")):
        k_name, value = _best_sampled_k(record, suite)
        row[f"{prefix}_passk"] = value
        row[f"{prefix}_k_name"] = k_name
    return row


def columns(rows: Sequence[dict]) -> list[Column]:
    k_id = next((r["id_k_name"] for r in rows if r.get("id_passk") is not None), "pass@k")
    ood_name = next((r["ood_suite"] for r in rows if r.get("ood_suite")), "ood")
    ood_title = "OOD" if ood_name.endswith("ood") else f"OOD ({ood_name})"
    k_ood = next((r["ood_k_name"] for r in rows if r.get("ood_passk") is not None), "pass@k")
    selection = (
        [Column("selection_pass1", "selection pass@1", ".3f"), Column("selected", "selected", "s")]
        if any(r.get("selection_pass1") is not None or r.get("selected") is not None for r in rows)
        else []
    )
    multipliers = {r.get("lr_multiplier") for r in rows if r.get("lr_multiplier") is not None}
    return [
        Column("method", "method", "s"),
        Column("seed", "seed", "d"),
        Column("lr", "lr", ".1e"),
        *([Column("lr_multiplier", "lr ×", "g")] if len(multipliers) > 1 else []),
        *selection,
        Column("trainable_params", "trainable params", ",d"),
        Column("id_pass1", "ID pass@1", ".3f"),
        Column("id_passk", f"ID {k_id}", ".3f"),
        Column("ood_pass1", f"{ood_title} pass@1", ".3f"),
        Column("ood_passk", f"{ood_title} {k_ood}", ".3f"),
        Column("generalisation_gap", "ID−OOD gap", "+.3f"),
        Column("forgetting", "forgetting (Δ loss)", "+.3f"),
        *(
            [Column("forgetting_prose", "forgetting, prose", "+.3f")]
            if any(r.get("forgetting_prose") is not None for r in rows)
            else []
        ),
        *(
            [Column("forgetting_over_quantized", "forgetting over quantized base", "+.3f")]
            if any(r.get("forgetting_over_quantized") is not None for r in rows)
            else []
        ),
        *[Column(f"lm_eval_change:{task}", f"{task} Δ acc", "+.3f") for task in lm_eval_tasks(rows)],
        Column("train_tokens_per_s", "train tok/s", ",.0f"),
        Column("peak_memory_mb", "peak MB", ",.0f"),
        Column("merged_tokens_per_s", "infer tok/s merged", ",.0f"),
        Column("unmerged_tokens_per_s", "infer tok/s unmerged", ",.0f"),
        Column("intruders", "intruders", "d"),
    ]


def lm_eval_tasks(rows: Sequence[dict]) -> list[str]:
    """The lm-evaluation-harness tasks some row has a change for, in the order first seen."""
    return list(dict.fromkeys(key.split(":", 1)[1] for row in rows for key in row if key.startswith("lm_eval_change:")))


def format_cell(value: object, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool):
        return "✓" if value else ""
    if isinstance(value, (int, float)) and fmt != "s":
        if fmt.endswith("d"):
            value = int(value)
        return format(value, fmt)
    return str(value)


SUMMARY_KEYS = (
    "method",
    "id_pass1",
    "id_passk",
    "ood_pass1",
    "forgetting",
    "train_tokens_per_s",
    "merged_tokens_per_s",
    "intruders",
)


def table_cells(rows: Sequence[dict], keys: Sequence[str] | None = None) -> tuple[list[str], list[list[str]]]:
    """Header and formatted cells; `keys` picks a subset of the columns (e.g. SUMMARY_KEYS for a terminal)."""
    cols = [c for c in columns(rows) if keys is None or c.key in keys]
    return [c.title for c in cols], [[format_cell(row.get(c.key), c.fmt) for c in cols] for row in rows]


def markdown_table(rows: Sequence[dict]) -> str:
    return markdown_from_cells(*table_cells(rows))


def group_mean(rows: Sequence[dict], key: Callable[[dict], object], field: str) -> dict[object, tuple[float, float, int]]:
    """Mean, standard deviation and count of `field` per group (over seeds), skipping missing values; the
    standard error of the mean is the deviation over √count (`mean_and_stderr`)."""
    groups: dict[object, list[float]] = {}
    for row in rows:
        if row.get(field) is not None:
            groups.setdefault(key(row), []).append(float(row[field]))
    stats = {}
    for group, values in groups.items():
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
        stats[group] = (mean, std, len(values))
    return stats


def _cells(values: Sequence[tuple[object, str]]) -> list[str]:
    return [format_cell(value, fmt) for value, fmt in values]


def suite_tables(records: Sequence[dict]) -> tuple[list[str], list[list[str]], list[str], list[list[str]]]:
    """Per run and suite (greedy decoding): accuracy, repair F1 where scored (token level, and line level;
    records from before token F1 have only the line-level one, as "diff_f1"), and the generation cost that
    matters for reasoning models; then per run, suite and perturbation family: ReCode's robust metrics over
    the problems the family applies to ("applies to": perturbed / all; a family that applies to none
    shows n/a)."""
    suite_header = [
        "run",
        "suite",
        "in domain",
        "pass@1",
        "± s.e.",
        "F1 (tokens)",
        "line-edit F1",
        "mean new tokens",
        "reasoning tokens",
        "s / problem",
        "cut by budget",
    ]
    robust_header = [
        "run",
        "suite",
        "perturbation",
        "s",
        "applies to",
        "nominal pass@1",
        "robust pass@1",
        "robust drop@1",
        "robust relative@1",
    ]
    suite_body, robust_body = [], []
    for record in records:
        for suite, metrics in (record.get("suites") or {}).items():
            greedy = metrics.get("greedy", {})
            suite_body.append(
                [
                    str(record.get("run_id")),
                    suite,
                    "yes" if metrics.get("in_domain") else "no",
                    *_cells(
                        [
                            (greedy.get("pass@1"), ".3f"),
                            ((greedy.get("stderr") or {}).get("pass@1"), ".3f"),
                            (greedy.get("token_f1"), ".3f"),
                            (greedy.get("line_edit_f1", greedy.get("diff_f1")), ".3f"),
                            (greedy.get("mean_new_tokens"), ".1f"),
                            (greedy.get("mean_reasoning_tokens"), ".1f"),
                            (greedy.get("seconds_per_problem"), ".3f"),
                            (greedy.get("hit_budget_fraction"), ".2f"),
                        ]
                    ),
                ]
            )
            for family, robust in (metrics.get("robustness") or {}).items():
                robust_body.append([str(record.get("run_id")), suite, family, str(robust["s"]), *_robust_cells(robust)])
    return suite_header, suite_body, robust_header, robust_body


def _robust_cells(robust: dict) -> list[str]:
    """The "applies to" cell and the four metric cells of one family's robustness record."""
    if "problems" not in robust:  # recorded before not-applicable problems were
        applies = "–"
    else:
        applies = f"{robust['problems']}/{robust['problems'] + len(robust['not_applicable'])}"
        if robust["problems"] == 0:
            return [applies, *["n/a"] * 4]
    return [
        applies,
        *_cells(
            [
                (robust["nominal_pass@1"], ".3f"),
                (robust["robust_pass@1"], ".3f"),
                (robust["robust_drop@1"], "+.3f"),
                (robust["robust_relative@1"], ".3f"),
            ]
        ),
    ]


def judged_tables(records: Sequence[dict]) -> list[dict]:
    """Per suite scored by a judge: one row per run (greedy answers), its mean score per category, the macro
    average over categories, and how many verdicts were scored, unparseable, out of range or failed (none of
    which count in a mean)."""
    suites: dict[str, list[tuple[dict, dict]]] = {}
    for record in records:
        for suite, metrics in (record.get("suites") or {}).items():
            greedy = metrics.get("greedy") or {}
            if greedy.get("scoring") == "judge":
                suites.setdefault(suite, []).append((record, metrics))
    tables = []
    for suite, rows in suites.items():
        categories = list(dict.fromkeys(c for _, m in rows for c in m["greedy"]["per_category"]))
        header = ["run", *categories, "macro", "scored", "unparseable", "out of range", "errors"]
        body = []
        for record, metrics in rows:
            greedy = metrics["greedy"]
            counts = greedy["verdict_counts"]
            means = [(greedy["per_category"].get(c, {}).get("mean"), ".3f") for c in categories]
            body.append(
                [
                    str(record.get("run_id")),
                    *_cells([*means, (greedy["macro_mean"], ".3f")]),
                    *(str(counts[v]) for v in ("scored", "unparseable", "out_of_range", "error")),
                ]
            )
        judge = next((m.get("judge") for _, m in rows if m.get("judge")), {})
        tables.append(
            {
                "suite": suite,
                "judge": f"{judge.get('kind', '?')} {judge.get('model', '?')}"
                + (f" at {judge['url']}" if judge.get("url") else ""),
                "rubric_sha256": judge.get("rubric_sha256", ""),
                "temperature": judge.get("temperature"),
                "header": header,
                "body": body,
                "markdown": markdown_from_cells(header, body),
            }
        )
    return tables


def full_ft_references(record: dict, records: Sequence[dict]) -> list[dict]:
    """The full fine-tuning runs (every seed) a run is compared with: those at its data fraction and
    learning-rate multiplier; where full FT was not evaluated at that multiplier (a study that evaluates each
    method's chosen rate alone), those at full FT's chosen one."""
    full = [
        r
        for r in records
        if r.get("method") == "full" and fully_evaluated(r) and r.get("data_fraction") == record.get("data_fraction")
    ]
    return [r for r in full if r.get("lr_multiplier") == record.get("lr_multiplier")] or [r for r in full if r.get("selected")]


def _full_ft_name(references: Sequence[dict], multiplier_axis: bool) -> str:
    """The reference's name: full FT, with its learning-rate multiplier where the study evaluated several."""
    multiplier = references[0].get("lr_multiplier") if references else None
    return f"full FT ×{multiplier:g}" if multiplier_axis and multiplier is not None else "full FT"


def _paired_suites(runs: Sequence[dict]) -> list[str]:
    """The suites some run has a pass@1 on (not those scored by a judge: judged_tables shows them), first seen first."""
    return list(
        dict.fromkeys(
            suite
            for r in runs
            for suite, metrics in (r.get("suites") or {}).items()
            if (metrics.get("greedy") or {}).get("scoring") != "judge"
        )
    )


def _paired_cell(paired: dict | None) -> str:
    """One paired comparison as a cell: "+0.050 ± 0.020 (12↑ 5↓, p 0.14)"; – without one."""
    if paired is None:
        return "–"
    return (
        f"{paired['difference']:+.3f} ± {format_cell(paired['stderr'], '.3f')} "
        f"({paired['better']}↑ {paired['worse']}↓, p {paired['p_value']:.2g})"
    )


def paired_comparison_table(records: Sequence[dict]) -> tuple[list[str], list[list[str]]]:
    """Each fine-tuned run that was evaluated (at every multiplier, or only its chosen one) against the base and
    against full fine-tuning (same seed; at the same multiplier where evaluated, see `full_ft_references`), per
    greedy suite, paired by problem: the pass@1 difference ± its standard error, on how many problems each side
    was better, and the exact sign (McNemar) test's p-value. A suite recorded without per-problem scores
    (evaluated before they were kept) shows –; a pair with none at all is left out."""
    runs = [r for r in records if r.get("method") != "base" and fully_evaluated(r)]
    suites = _paired_suites(runs)
    multiplier_axis = len({r.get("lr_multiplier") for r in runs}) > 1
    base = next((r for r in records if r.get("method") == "base"), None)
    body = []
    for run in runs:
        references = [("base", base)]
        if run.get("method") != "full":
            full = [r for r in full_ft_references(run, records) if r.get("seed") == run.get("seed")]
            references.append((_full_ft_name(full, multiplier_axis), full[0] if full else None))
        for name, reference in references:
            if reference is None:
                continue
            cells = []
            for suite in suites:
                scores = _get(run, "suites", suite, "greedy", "per_problem_pass@1")
                against = _get(reference, "suites", suite, "greedy", "per_problem_pass@1")
                cells.append(_paired_cell(paired_difference(scores, against) if scores and against else None))
            if any(cell != "–" for cell in cells):
                body.append([str(run.get("run_id")), name, *cells])
    return ["run", "against", *suites], body


def seed_groups(records: Sequence[dict]) -> dict[str, list[dict]]:
    """The records grouped by what they differ in only by seed (the run id without its seed: a method setting at one
    learning-rate multiplier; the base alone), ordered by method setting, then multiplier."""
    groups: dict[str, list[dict]] = {}
    for record in records:
        groups.setdefault(run_id_without(str(record.get("run_id"))), []).append(record)
    settings = list(dict.fromkeys(selection_group(group) for group in groups))
    return dict(
        sorted(
            groups.items(),
            key=lambda item: (settings.index(selection_group(item[0])), item[1][0].get("lr_multiplier") or 0.0),
        )
    )


def method_label(record: dict) -> str:
    """A run's label without its learning-rate multiplier ("LoRA r=4 lr×10" → "LoRA r=4"), which tables over
    seeds give a column of its own."""
    return re.sub(r" lr×[0-9.e+-]+$", "", str(record.get("label", record.get("method"))))


def _seed_values(record: dict) -> dict:
    """One record's numbers that a mean over seeds is taken of, flat: greedy pass@1 per suite, forgetting per
    corpus (records from before several corpora: their one corpus), intruders, training wall time."""
    values = {
        f"pass@1:{suite}": (metrics.get("greedy") or {}).get("pass@1")
        for suite, metrics in (record.get("suites") or {}).items()
        if (metrics.get("greedy") or {}).get("scoring") != "judge"
    }
    forgetting = record.get("forgetting") or {}
    corpora = forgetting.get("corpora") or (
        {forgetting.get("corpus", "stdlib"): {"increase": forgetting["increase"]}} if "increase" in forgetting else {}
    )
    values.update({f"forgetting:{corpus}": scores.get("increase") for corpus, scores in corpora.items()})
    return {**values, "intruders": intruder_total(record), "train_wall_s": _get(record, "train", "wall_s")}


def mean_and_stderr(stats: tuple[float, float, int] | None) -> tuple[float | None, float | None]:
    """`group_mean`'s (mean, sd, count) as (mean, standard error of the mean); s.e. None below two values."""
    if stats is None:
        return None, None
    mean, std, count = stats
    return mean, (std / math.sqrt(count) if count > 1 else None)


def seed_summary(records: Sequence[dict]) -> list[dict]:
    """Over seeds, one row per method setting and learning-rate multiplier (`seed_groups`; the base, evaluated
    once, a group of one): how many seeds, how many of them learning-rate selection chose (None: no choice in
    this study), and the mean and standard error over seeds of greedy pass@1 per suite (`pass@1`), forgetting
    per corpus (the held-out loss increase over the base, `forgetting`), intruder dimensions at the configured k
    and ε (`intruders`) and training wall time in seconds (`train_wall_s`); each a (mean, s.e.) pair, the s.e.
    None for one seed, the pair (None, None) where no seed measured it. A run not fully evaluated gives what it
    measured: its selection score and training time."""
    rows = []
    for group, members in seed_groups(records).items():
        flat = [_seed_values(record) for record in members]
        fields = list(dict.fromkeys(field for values in flat for field in values))
        stats = {field: mean_and_stderr(group_mean(flat, lambda _: 0, field).get(0)) for field in fields}
        choices = [record.get("selected") for record in members]
        rows.append(
            {
                "group": group,
                "method": method_label(members[0]),
                "kind": members[0].get("method"),
                "lr_multiplier": members[0].get("lr_multiplier"),
                "seeds": len({record.get("seed") for record in members}),
                "selected": None if all(choice is None for choice in choices) else sum(choice is True for choice in choices),
                "pass@1": {f.split(":", 1)[1]: stats[f] for f in fields if f.startswith("pass@1:")},
                "forgetting": {f.split(":", 1)[1]: stats[f] for f in fields if f.startswith("forgetting:")},
                "intruders": stats["intruders"],
                "train_wall_s": stats["train_wall_s"],
            }
        )
    return rows


def seed_summary_table(summary: Sequence[dict]) -> tuple[list[str], list[list[str]]]:
    """`seed_summary`'s rows as cells: mean ± s.e. over seeds; "selected": seeds chosen / seeds."""
    suites = list(dict.fromkeys(suite for row in summary for suite in row["pass@1"]))
    corpora = list(dict.fromkeys(corpus for row in summary for corpus in row["forgetting"]))
    selection = any(row["selected"] is not None for row in summary)
    header = [
        "method",
        "lr ×",
        "seeds",
        *(["selected"] if selection else []),
        *(f"{suite} pass@1" for suite in suites),
        *(f"forgetting, {corpus}" for corpus in corpora),
        "intruders",
        "train s",
    ]
    body = []
    for row in summary:
        body.append(
            [
                row["method"],
                format_cell(row["lr_multiplier"], "g") if row["kind"] != "base" else "–",
                str(row["seeds"]),
                *([f"{row['selected']}/{row['seeds']}" if row["selected"] is not None else "–"] if selection else []),
                *(plus_minus(*row["pass@1"].get(suite, (None, None))) for suite in suites),
                *(plus_minus(*row["forgetting"].get(corpus, (None, None)), "+.3f") for corpus in corpora),
                plus_minus(*row["intruders"], ".1f"),
                plus_minus(*row["train_wall_s"], ".1f"),
            ]
        )
    return header, body


def epsilon_sweep_table(records: Sequence[dict], spectral: dict[str, dict]) -> tuple[list[str], list[list[str]]]:
    """Intruder dimensions at each ε of the sweep (`spectral.json` → `summary.epsilon_sweep`), per method setting and
    learning-rate multiplier (`seed_groups`): the mean ± s.e. over the seeds that have a spectral record."""
    analysed = [record for record in records if str(record.get("run_id")) in spectral]
    sweeps = {str(r["run_id"]): spectral[str(r["run_id"])]["summary"].get("epsilon_sweep") or {} for r in analysed}
    epsilons = sorted({epsilon for sweep in sweeps.values() for epsilon in sweep}, key=float)
    if not epsilons:
        return [], []
    header = ["method", "lr ×", "seeds", *(f"ε {epsilon}" for epsilon in epsilons)]
    body = []
    for members in seed_groups(analysed).values():
        counts = [sweeps[str(member["run_id"])] for member in members]
        body.append(
            [
                method_label(members[0]),
                format_cell(members[0].get("lr_multiplier"), "g"),
                str(len(members)),
                *(_over_seeds([sweep.get(epsilon) for sweep in counts], ".1f") for epsilon in epsilons),
            ]
        )
    return header, body


def per_problem_over_seeds(records: Sequence[dict], suite: str) -> dict[str, float] | None:
    """Per problem of `suite`, its greedy pass (0/1) averaged over `records` (the seeds of one group), over the
    problems every record scored; None when a record has no per-problem scores for the suite."""
    scores = [_get(record, "suites", suite, "greedy", "per_problem_pass@1") for record in records]
    if not records or not all(scores):
        return None
    problems = [problem for problem in scores[0] if all(problem in s for s in scores[1:])]
    return {problem: sum(s[problem] for s in scores) / len(scores) for problem in problems}


def paired_over_seeds(records: Sequence[dict]) -> list[dict]:
    """Each fully evaluated method setting at each learning-rate multiplier (its seeds together, `seed_groups`)
    against the base and against full fine-tuning at the same multiplier and data fraction (`full_ft_references`),
    per greedy suite: per problem, the pass (0/1) is averaged over seeds on each side (the base is evaluated once),
    then `paired_difference` over problems: the mean per-problem difference ± its standard error over problems,
    the problems where each side is ahead, and the exact two-sided sign test over the problems with a nonzero
    difference. Problems are the unit of the test because they are what the suite samples; the seeds of a setting
    are not independent replicates of a problem, so averaging them first turns each problem into one paired
    observation of the setting's expected pass rate instead of counting one problem several times.

    One row per pair: group, method, lr_multiplier, seeds, selected (as in `seed_summary`), against (the
    reference's name), reference_seeds, and suites (suite → `paired_difference`'s record, or None where a side
    has no per-problem scores)."""
    summary = {row["group"]: row for row in seed_summary(records)}
    groups = {
        group: members
        for group, members in seed_groups(records).items()
        if members[0].get("method") != "base" and all(fully_evaluated(r) for r in members)
    }
    runs = [record for members in groups.values() for record in members]
    suites = _paired_suites(runs)
    multiplier_axis = len({r.get("lr_multiplier") for r in runs}) > 1
    base = [r for r in records if r.get("method") == "base"][:1]
    rows = []
    for group, members in groups.items():
        references = [("base", base)]
        if members[0].get("method") != "full":
            full = full_ft_references(members[0], records)
            references.append((_full_ft_name(full, multiplier_axis), full))
        for name, reference in references:
            if not reference:
                continue
            pairs = {}
            for suite in suites:
                scores, against = per_problem_over_seeds(members, suite), per_problem_over_seeds(reference, suite)
                shared = scores and against and any(problem in against for problem in scores)
                pairs[suite] = paired_difference(scores, against) if shared else None
            if any(pairs.values()):
                rows.append(
                    {
                        **{key: summary[group][key] for key in ("group", "method", "lr_multiplier", "seeds", "selected")},
                        "against": name,
                        "reference_seeds": len({r.get("seed") for r in reference}),
                        "suites": pairs,
                    }
                )
    return rows


def paired_over_seeds_table(pairs: Sequence[dict]) -> tuple[list[str], list[list[str]]]:
    """`paired_over_seeds`'s rows as cells, suites as columns."""
    suites = list(dict.fromkeys(suite for pair in pairs for suite in pair["suites"]))
    selection = any(pair["selected"] is not None for pair in pairs)
    header = ["method", "lr ×", "seeds", *(["selected"] if selection else []), "against", *suites]
    body = [
        [
            pair["method"],
            format_cell(pair["lr_multiplier"], "g"),
            str(pair["seeds"]),
            *([f"{pair['selected']}/{pair['seeds']}" if pair["selected"] is not None else "–"] if selection else []),
            pair["against"],
            *(_paired_cell(pair["suites"].get(suite)) for suite in suites),
        ]
        for pair in pairs
    ]
    return header, body


def plus_minus(value: float | None, stderr: float | None, fmt: str = ".3f") -> str:
    """A value ± its standard error ("0.412 ± 0.021"; the error in the value's format without its sign); the
    value alone without one, – without a value."""
    if value is None:
        return "–"
    return format_cell(value, fmt) + (f" ± {format_cell(stderr, fmt.lstrip('+'))}" if stderr is not None else "")


def lm_eval_table(records: Sequence[dict]) -> tuple[list[str], list[list[str]]]:
    """Per model (the base first) and lm-evaluation-harness task: the documents scored, the few-shot count, acc and
    acc_norm ± the harness's standard errors, and each one's change against the base ± its standard error, paired
    by document (a metric the task lacks shows –)."""
    header = ["run", "task", "documents", "shots", "acc ± s.e.", "Δ acc vs base", "acc_norm ± s.e.", "Δ acc_norm vs base"]
    body = []
    for record in records:
        if not fully_evaluated(record):
            continue
        for task, scores in (_get(record, "lm_eval", "tasks") or {}).items():
            cells = [str(record.get("run_id")), task, str(scores.get("documents")), str(scores.get("num_fewshot"))]
            for metric in ("acc", "acc_norm"):
                change = _get(scores, "change", metric) or {}
                cells += [
                    plus_minus(scores.get(metric), scores.get(f"{metric}_stderr")),
                    plus_minus(change.get("difference"), change.get("stderr"), "+.3f"),
                ]
            body.append(cells)
    return header, body


def lm_eval_line(records: Sequence[dict]) -> str:
    """How the harness was run, from the base's record (or the first that has one): version, shots, documents, seed."""
    settings = next((r["lm_eval"] for r in records if r.get("lm_eval")), None)
    if not settings:
        return ""
    shots = "each task's default few-shot count" if settings.get("num_fewshot") is None else f"{settings['num_fewshot']}-shot"
    documents = f"the first {settings['limit']} documents of each task" if settings.get("limit") else "every document"
    return f"lm-eval {settings.get('lm_eval_version')}, {shots}, {documents}, seed {settings.get('seed')}, batch size {settings.get('batch_size')}"


def intervention_groups(records: Sequence[dict]) -> tuple[dict[str, list[list[dict]]], list[str]]:
    """The causal tests of `records` by method setting (`seed_groups`): per setting where some seed scaled a
    direction, each seed's rows; apart, the settings where no seed had anything to scale (no intruder dimension:
    every row is the tuned model, so the test says nothing there)."""
    tested: dict[str, list[list[dict]]] = {}
    untouched = []
    for group, members in seed_groups([r for r in records if r.get("intervene")]).items():
        seeds = [record["intervene"] for record in members]
        if any(row.get("scaled", row.get("intruders")) for rows in seeds for row in rows):
            tested[group] = seeds
        else:
            untouched.append(group)
    return tested, untouched


def intervention_table(records: Sequence[dict]) -> tuple[list[str], list[list[str]], list[str]]:
    """The causal test over seeds, per method setting with intruder dimensions (`intervention_groups`) and λ: for
    the intruders, then the control, the directions scaled, greedy pass@1 and the forgetting on each corpus (the
    increase of its held-out loss over the base's), each the mean ± s.e. over the setting's seeds. A control scaled
    partly past the top k, or short of the intruders' count, says so in its cell (summed over seeds). The settings
    left out, where nothing was scaled, are the third value. Rows recorded before the control have no `directions`
    (they are the intruders') and the headline corpus's forgetting only."""
    tested, untouched = intervention_groups(records)
    rows = [row for seeds in tested.values() for run_rows in seeds for row in run_rows]
    # None: rows from before per-corpus records, with the headline corpus's forgetting only
    corpora = list(dict.fromkeys(corpus for row in rows for corpus in row.get("corpora") or {})) or [None]
    kinds = [kind for kind in ("intruders", "control") if any(row.get("directions", "intruders") == kind for row in rows)]
    header = ["setting", "seeds", "λ"]
    for kind in kinds:
        header += [f"{kind} scaled", f"pass@1, {kind}", *[f"forgetting{f' {c}' if c else ''}, {kind}" for c in corpora]]
    body = []
    for group, seeds in tested.items():
        for lam in sorted({row["lambda"] for run_rows in seeds for row in run_rows}):
            cells = [group, str(len(seeds)), format_cell(lam, "g")]
            for kind in kinds:
                at = [
                    row
                    for run_rows in seeds
                    for row in run_rows
                    if (row["lambda"], row.get("directions", "intruders")) == (lam, kind)
                ]
                cells += [_scaled_cell(at), _over_seeds([row.get("pass@1") for row in at], ".3f")]
                for index, corpus in enumerate(corpora):
                    # the headline corpus is the first: rows from before per-corpus records have only its forgetting
                    values = [_get(row, "corpora", corpus, "forgetting") if corpus else None for row in at]
                    if index == 0:
                        values = [row.get("forgetting") if value is None else value for row, value in zip(at, values)]
                    cells.append(_over_seeds(values, "+.3f"))
            body.append(cells)
    return header, body, untouched


def _over_seeds(values: Sequence[float | None], fmt: str) -> str:
    """The mean ± s.e. of the values the seeds measured ("–" where none did)."""
    return plus_minus(*mean_and_stderr(group_mean([{"v": v} for v in values], lambda _: 0, "v").get(0)), fmt)


def _scaled_cell(rows: Sequence[dict]) -> str:
    """How many directions causal-test rows (one per seed) scaled, over seeds, with the control's caveats."""
    counts = [row.get("scaled", row.get("intruders")) for row in rows]  # rows from before the control: the intruders
    if not counts or any(count is None for count in counts):
        return "–"
    cell = str(counts[0]) if len(counts) == 1 else _over_seeds(counts, ".1f")
    notes = [f"{sum(r.get('beyond_k') or 0 for r in rows)} past top k"] if any(r.get("beyond_k") for r in rows) else []
    notes += [f"{sum(r.get('unmatched') or 0 for r in rows)} unmatched"] if any(r.get("unmatched") for r in rows) else []
    return cell + (f" ({', '.join(notes)})" if notes else "")


def sequence_tables(records: Sequence[dict]) -> list[dict]:
    """Per sequential run, its forgetting matrix as cells: rows after each stage, columns the tasks'
    greedy pass@1 then the held-out loss; with mean forgetting and backward transfer."""
    tables = []
    for record in records:
        sequence = record.get("sequence")
        if not sequence:
            continue
        header = ["after"] + [f"{task} pass@1" for task in sequence["tasks"]] + ["held-out loss"]
        body = [
            [label, *_cells([(v, ".3f") for v in scores]), format_cell(loss, ".3f")]
            for label, scores, loss in zip(sequence["rows"], sequence["pass@1"], sequence["heldout_loss"])
        ]
        tables.append(
            {
                "run": record["run_id"],
                "label": record.get("label"),
                "header": header,
                "body": body,
                "markdown": markdown_from_cells(header, body),
                "mean_forgetting": sequence["mean_forgetting"],
                "mean_backward_transfer": sequence["mean_backward_transfer"],
            }
        )
    return tables


def markdown_from_cells(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(cells) + " |" for cells in body])


STAGES = ("train", "evaluate", "spectral", "representations", "intervene")  # a run's stages, as metrics.json times them


def stage_time_table(records: Sequence[dict]) -> tuple[list[str], list[list[str]]]:
    """Seconds per stage of each finished run (`stage_s`; the base: its evaluation), a column per stage some run
    timed, the run's total, and how many runs shared its device while it ran (contended timings)."""
    timed = [r for r in records if r.get("stage_s") or (r.get("method") == "base" and r.get("wall_s") is not None)]
    stages = [stage for stage in STAGES if any((r.get("stage_s") or {}).get(stage) is not None for r in timed)]
    body = []
    for record in timed:
        stage_s = record.get("stage_s") or {"evaluate": record.get("wall_s")}
        seconds = [stage_s.get(stage) for stage in stages]
        sharing = _get(record, "worker", "workers_on_this_device")
        body.append(
            [
                str(record.get("run_id") or record.get("method")),
                *(format_cell(value, ".1f") for value in seconds),
                format_cell(sum(value for value in seconds if value is not None), ".1f"),
                str(sharing) if sharing else "1",
            ]
        )
    return ["run", *(f"{stage} s" for stage in stages), "total s", "runs sharing its device"], body


def sessions_line(sessions: Sequence[dict], finished_at: Sequence[str] = ()) -> str:
    """The study's wall time, session by session (`executor.json`), and in all. A session cut short (its driver
    killed, its machine taken back) recorded its start only: its time is taken to the last run that finished in it
    (`finished_at`: each finished run's end, from its done.json), a lower bound, and said to be one; a session
    written afterwards from its log (`reconstructed`, saying how) is said to be so."""
    if not sessions:
        return ""
    parts, total = [], 0.0
    starts = [datetime.fromisoformat(session["started_at"]) if session.get("started_at") else None for session in sessions]
    ends = sorted(datetime.fromisoformat(moment) for moment in finished_at)
    for number, session in enumerate(sessions):
        plan = session.get("plan") or {}
        where = f"{session['executor']}" + (
            f", {plan['slots']} slots of {plan['gpus_per_run']:g} GPU" if plan.get("gpus_per_run") else ""
        )
        where += f", {plan['slots']} slots" if plan and not plan.get("gpus_per_run") else ""
        failed = session.get("failed")
        outcome = f", {len(failed) if isinstance(failed, list) else 1} failed" if failed else ""
        wall = session.get("wall_s")
        if wall is None and starts[number] is not None:  # cut short: up to its last finished run
            following = next((start for start in starts[number + 1 :] if start is not None), None)
            within = [end for end in ends if end >= starts[number] and (following is None or end < following)]
            wall = (within[-1] - starts[number]).total_seconds() if within else 0.0
            told = "; recorded after it, from its log" if session.get("reconstructed") else ""
            parts.append(f"≥ {wall:.0f} s ({where}; cut short, {len(within)} run(s) finished in it{told})")
        else:
            parts.append(f"{format_cell(wall, '.0f')} s ({where}{outcome})")
        total += wall or 0.0
    short = any(session.get("wall_s") is None for session in sessions)
    return f"Study wall time {'≥ ' if short else ''}{total:.0f} s over {len(sessions)} session(s): " + "; ".join(parts) + "."
