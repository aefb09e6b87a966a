"""The report's figures, each a function from table rows (and spectral records) to a PNG.

LoRA runs are grouped into series by method name: a line through the mean over seeds, each seed a small
point; full fine-tuning and the base are drawn as horizontal reference lines where the x axis is a LoRA
rank. Where a study evaluated several learning-rate multipliers, the rank figures have a panel per multiplier.
"""

from __future__ import annotations

import io
import statistics
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # no display on a server or in CI
import matplotlib.pyplot as plt  # noqa: E402

from ftcompare.matrix import RUN_ID_TAGS, run_id_without, selection_group  # noqa: E402
from ftcompare.report.tables import group_mean  # noqa: E402

COLORS = plt.rcParams["axes.prop_cycle"].by_key()["color"]


AXIS_LABELS = {
    "rank": "LoRA rank",
    "alpha": "LoRA alpha (the update is scaled by alpha/r, or alpha/√r for rsLoRA)",
    "layer_fraction": "fraction of layers adapted (by lowest input–output CKA)",
    "data_fraction": "fraction of the training set",
    "lr_multiplier": "learning-rate multiplier (of each method's configured rate)",
}
_LOG2_AXES = ("rank", "alpha", "lr_multiplier")


def series_name(row: dict, axis: str = "rank") -> str:
    """The run id without its seed and without the tag of the plotted axis: `lora-r4-a16-s0` → `lora-a16`
    along rank, `lora-r4` along alpha; the runs of one series differ only along the axis."""
    return run_id_without(row["run"], axis)


def sweep_axes(rows: Sequence[dict]) -> list[str]:
    """The axes some series of runs is swept along (two or more values of the axis), in a fixed order.
    alpha defaults to 2·rank, so a rank sweep alone is not an alpha sweep."""

    def swept(axis: str) -> bool:
        values: dict[str, set] = {}
        for row in rows:
            if row.get(axis) is not None:
                values.setdefault(series_name(row, axis), set()).add(row[axis])
        return any(len(v) > 1 for v in values.values())

    return [axis for axis in RUN_ID_TAGS if swept(axis)]


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return buffer.getvalue()


def series_colors(rows: Sequence[dict], axis: str = "rank") -> dict[str, str]:
    """One colour per series along `axis`, the same whichever field is drawn: a method's in-domain and
    out-of-domain lines share their colour and differ in line style."""
    names = sorted({series_name(r, axis) for r in rows if r.get(axis) is not None})
    return {name: COLORS[index % len(COLORS)] for index, name in enumerate(names)}


def versus_axis(
    ax,
    rows: Sequence[dict],
    field: str,
    axis: str = "rank",
    label_suffix: str = "",
    style: str = "-o",
    reference_color: str = "black",
) -> None:
    """`field` along a sweep axis, one series per combination of the other settings (a line through the mean
    over seeds, each seed a small point); runs without the axis (full FT along rank, the base) as horizontal
    reference lines at their mean."""
    swept = [r for r in rows if r.get(axis) is not None]
    for name, color in series_colors(rows, axis).items():
        series = [r for r in swept if series_name(r, axis) == name and r.get(field) is not None]
        stats = group_mean(series, lambda r: r[axis], field)
        xs = sorted(stats)
        if xs:
            ax.errorbar(xs, [stats[x][0] for x in xs], fmt=style, color=color, label=f"{name}{label_suffix}")
            ax.scatter([r[axis] for r in series], [r[field] for r in series], s=10, color=color, alpha=0.45, linewidths=0)
    references = [r for r in rows if r.get(axis) is None]
    for name in sorted({series_name(r, "rank") for r in references}):
        stats = group_mean([r for r in references if series_name(r, "rank") == name], lambda r: 0, field)
        if stats:
            ax.axhline(
                stats[0][0],
                linestyle="--" if name != "base" else ":",
                color=reference_color,
                alpha=1.0 if name != "base" else 0.5,
                label=f"{name}{label_suffix}",
            )
    if swept:
        if axis in _LOG2_AXES:
            ax.set_xscale("log", base=2)
        ax.set_xlabel(AXIS_LABELS[axis], fontsize=8)


def accuracy_axis(
    ax, rows: Sequence[dict], axis: str = "rank", in_domain: str = " (in-domain)", out_of_domain: str = " (out-of-domain)"
) -> None:
    """Greedy pass@1 along `axis`: in domain as solid lines, out of domain dotted, each series in one colour."""
    versus_axis(ax, rows, "id_pass1", axis, in_domain)
    if any(r.get("ood_pass1") is not None for r in rows):
        versus_axis(ax, rows, "ood_pass1", axis, out_of_domain, style=":s", reference_color="tab:red")
    ax.set_ylabel("greedy pass@1")


def multiplier_panels(rows: Sequence[dict]) -> list[tuple[float | None, list[dict]]]:
    """The rows of each learning-rate multiplier with the rows that have none (the base), one panel each where
    some method setting has rows at several multipliers (the multiplier an axis of the study); else one panel
    (None) of every row, each method at the multiplier it has (the one chosen for it)."""
    per_setting: dict[str, set] = {}
    for row in rows:
        if row.get("lr_multiplier") is not None:
            per_setting.setdefault(selection_group(row["run"]), set()).add(row["lr_multiplier"])
    if all(len(multipliers) < 2 for multipliers in per_setting.values()):
        return [(None, list(rows))]
    multipliers = sorted(set().union(*per_setting.values()))
    return [(m, [r for r in rows if r.get("lr_multiplier") in (m, None)]) for m in multipliers]


def _panels(rows: Sequence[dict]):
    """A figure with one axes per `multiplier_panels` panel, side by side on one y scale, and per panel its
    (axes, title suffix, rows)."""
    panels = multiplier_panels(rows)
    figure, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), sharey=True, squeeze=False)
    return figure, [(ax, "" if m is None else f", lr ×{m:g}", panel) for ax, (m, panel) in zip(axes[0], panels)]


def accuracy_vs_rank(rows: Sequence[dict]) -> bytes:
    figure, panels = _panels(rows)
    for ax, suffix, panel in panels:
        accuracy_axis(ax, panel)
        ax.set_title("Accuracy vs LoRA rank" + suffix)
        ax.legend(fontsize=7)
    return _png(figure)


def intruders_vs_rank(rows: Sequence[dict]) -> bytes:
    figure, panels = _panels([r for r in rows if r["run"] != "base"])
    for ax, suffix, panel in panels:
        versus_axis(ax, panel, "intruders")
        ax.set_ylabel("intruder dimensions (all matrices)")
        ax.set_title("Intruder dimensions vs LoRA rank" + suffix)
        ax.legend(fontsize=7)
    return _png(figure)


def swept_rows(rows: Sequence[dict], axis: str) -> list[dict]:
    """The rows a sweep figure draws: the series that take two or more values of `axis`, and as reference
    lines the runs without that axis at the full training set (the base, full FT)."""
    values: dict[str, set] = {}
    for row in rows:
        if row.get(axis) is not None:
            values.setdefault(series_name(row, axis), set()).add(row[axis])
    return [
        r
        for r in rows
        if (
            len(values.get(series_name(r, axis), ())) > 1
            if r.get(axis) is not None
            else axis == "data_fraction" or r.get("data_fraction") in (None, 1.0)
        )
    ]


def sweep(rows: Sequence[dict], axis: str) -> bytes:
    """Accuracy (in and out of domain), forgetting and intruder dimensions along one sweep axis."""
    rows = swept_rows(rows, axis)
    figure, axes = plt.subplots(1, 3, figsize=(14, 4))
    accuracy_axis(axes[0], rows, axis, " (ID)", " (OOD)")
    tuned = [r for r in rows if r["run"] != "base"]
    versus_axis(axes[1], tuned, "forgetting", axis)
    axes[1].set_ylabel("held-out loss increase over the base")
    versus_axis(axes[2], tuned, "intruders", axis)
    axes[2].set_ylabel("intruder dimensions (all matrices)")
    for ax, title in zip(axes, ("Accuracy", "Forgetting", "Intruder dimensions")):
        ax.set_title(f"{title} vs {AXIS_LABELS[axis].split(' (')[0]}", fontsize=9)
        ax.legend(fontsize=6)
    return _png(figure)


def learning_rate_selection(rows: Sequence[dict]) -> bytes:
    """The selection score (greedy pass@1 on the selection suite) per learning-rate multiplier, per method."""
    figure, ax = plt.subplots(figsize=(6, 4))
    versus_axis(ax, [r for r in rows if r.get("selection_pass1") is not None], "selection_pass1", "lr_multiplier")
    ax.set_ylabel("greedy pass@1 on the selection suite")
    ax.set_title("Learning-rate selection")
    ax.legend(fontsize=6)
    return _png(figure)


MULTIPLIER_MARKERS = ("o", "^", "s", "D", "v", "P")


def forgetting_vs_accuracy(rows: Sequence[dict]) -> bytes:
    figure, ax = plt.subplots(figsize=(6.5, 4.5))
    forgetting_accuracy_axis(ax, rows)
    return _png(figure)


def forgetting_accuracy_axis(ax, rows: Sequence[dict]) -> None:
    """In-domain pass@1 against forgetting: per run id without its seed, a large marker at the mean over seeds
    (named) and a small one per seed; one colour per method setting (its multipliers share it), one marker
    shape per learning-rate multiplier."""
    measured = [r for r in rows if r.get("forgetting") is not None and r.get("id_pass1") is not None]
    groups: dict[str, list[dict]] = {}
    for row in measured:
        groups.setdefault(run_id_without(row["run"]), []).append(row)
    settings = list(dict.fromkeys(selection_group(group) for group in groups))
    multipliers = sorted({r["lr_multiplier"] for r in measured if r.get("lr_multiplier") is not None})
    markers = {m: MULTIPLIER_MARKERS[i % len(MULTIPLIER_MARKERS)] for i, m in enumerate(multipliers)}
    for group, members in groups.items():
        color = COLORS[settings.index(selection_group(group)) % len(COLORS)]
        marker = markers.get(members[0].get("lr_multiplier"), "o")
        xs, ys = [r["forgetting"] for r in members], [r["id_pass1"] for r in members]
        ax.scatter(xs, ys, s=12, color=color, marker=marker, alpha=0.45, linewidths=0)
        mean = (sum(xs) / len(xs), sum(ys) / len(ys))
        ax.scatter(*mean, s=48, color=color, marker=marker, edgecolors="black", linewidths=0.5)
        ax.annotate(group, mean, fontsize=7, xytext=(3, 3), textcoords="offset points")
    if len(multipliers) > 1:
        handles = [plt.Line2D([], [], marker=markers[m], linestyle="", color="grey", label=f"lr ×{m:g}") for m in multipliers]
        ax.legend(handles=handles, fontsize=7)
    ax.set_xlabel("forgetting: held-out loss increase over the base (nats/token)")
    ax.set_ylabel("in-domain greedy pass@1")
    ax.set_title("Learning vs forgetting")


def latency_bars(rows: Sequence[dict]) -> bytes:
    fields = [
        ("train_tokens_per_s", "train"),
        ("merged_tokens_per_s", "inference, merged"),
        ("unmerged_tokens_per_s", "inference, unmerged"),
    ]
    runs = [r for r in rows if r["run"] != "base"]
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    width = 0.8 / len(fields)
    for offset, (field, label) in enumerate(fields):
        xs = [i + offset * width for i, r in enumerate(runs) if r.get(field) is not None]
        ys = [r[field] for r in runs if r.get(field) is not None]
        axes[0].bar(xs, ys, width=width, label=label)
    axes[0].set_xticks([i + width for i in range(len(runs))], [r["run"] for r in runs], rotation=45, ha="right", fontsize=7)
    axes[0].set_ylabel("tokens/s")
    axes[0].set_title("Throughput")
    axes[0].legend(fontsize=7)
    with_memory = [r for r in runs if r.get("peak_memory_mb") is not None]
    axes[1].bar(range(len(with_memory)), [r["peak_memory_mb"] for r in with_memory], color=COLORS[3])
    axes[1].set_xticks(range(len(with_memory)), [r["run"] for r in with_memory], rotation=45, ha="right", fontsize=7)
    axes[1].set_ylabel("peak memory while training (MB)")
    measures = sorted({r["memory_measure"] for r in with_memory if r.get("memory_measure")})
    axes[1].set_xlabel("; ".join(measures), fontsize=7)
    axes[1].set_title("Training memory")
    return _png(figure)


def epsilon_sweep(sweeps: dict[str, dict[str, int]]) -> bytes:
    """`sweeps[run_id][str(epsilon)]` = total intruders at that epsilon."""
    figure, ax = plt.subplots(figsize=(6, 4))
    for index, (run, sweep) in enumerate(sweeps.items()):
        epsilons = sorted(sweep, key=float)
        ax.plot(
            [float(e) for e in epsilons],
            [sweep[e] for e in epsilons],
            "-o",
            markersize=3,
            color=COLORS[index % len(COLORS)],
            label=run,
        )
    ax.set_xlabel("ε (a tuned singular vector is an intruder when max |cos| with the base's < ε)")
    ax.set_ylabel("intruder dimensions (all matrices)")
    ax.set_title("Intruder count vs ε")
    ax.legend(fontsize=7)
    return _png(figure)


def intervention_curve(result: dict) -> bytes:
    """One run's causal test (an `intervene.json` record): `interventions` for that run, titled with its k and ε."""
    return interventions({result["run_id"]: [result["rows"]]}, title=f"k={result['k']}, ε={result['epsilon']}")


def interventions(results: dict[str, list[list[dict]]], title: str = "") -> bytes:
    """`results[setting]` = the causal test's rows of each of its seeds: pass@1 and forgetting against λ, per
    setting its intruders solid and its control dashed (`intervention_axes`)."""
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    intervention_axes(axes, results)
    if title:
        figure.suptitle(title, fontsize=9)
    return _png(figure)


INTERVENTION_STYLES = {"intruders": "-o", "control": "--s"}


def intervention_axes(axes, results: dict[str, list[list[dict]]]) -> None:
    """Draw the causal test on two axes: greedy pass@1 (axes[0]) and the headline corpus's forgetting (axes[1])
    against λ, one colour per setting (full fine-tuning black), a line per kind of directions scaled through the
    mean over seeds, labelled "<setting> (<kind>)", each seed a small point; rows recorded before the control
    existed have no `directions` and are the intruders'. Forgetting is drawn on a symmetric log scale past ±0.01
    nat: a control that removes top directions can raise the loss by tens of nats, where the intruders' effect is
    a tenth of one."""
    for index, (setting, seeds) in enumerate(results.items()):
        color = "black" if setting.startswith("full") else COLORS[index % len(COLORS)]
        for kind, style in INTERVENTION_STYLES.items():
            rows = [row for run_rows in seeds for row in run_rows if row.get("directions", "intruders") == kind]
            if not rows:
                continue
            for ax, field in zip(axes, ("pass@1", "forgetting")):
                points = [(row["lambda"], row[field]) for row in rows if field in row]
                if not points:
                    continue
                lambdas = sorted({lam for lam, _ in points})
                means = [statistics.fmean(v for lam, v in points if lam == at) for at in lambdas]
                ax.plot(lambdas, means, style, markersize=3, color=color, label=f"{setting} ({kind})")
                if len(seeds) > 1:
                    ax.scatter(*zip(*points), s=6, color=color, alpha=0.35, linewidths=0)
    axes[1].set_yscale("symlog", linthresh=0.01)
    for ax, label in zip(axes, ("in-domain greedy pass@1", "held-out loss increase over the base")):
        ax.axvline(1.0, color="grey", linewidth=0.8, linestyle=":")
        ax.set_xlabel("λ (singular values scaled by λ; 1 = the tuned model)", fontsize=8)
        ax.set_ylabel(label)
        ax.legend(fontsize=6)
    axes[0].set_title("Causal test: task score (solid: intruders, dashed: control)", fontsize=9)
    axes[1].set_title("Causal test: forgetting (solid: intruders, dashed: control)", fontsize=9)


def sequence_curves(sequences: dict[str, dict]) -> bytes:
    """Sequential fine-tuning: per task (panel), greedy pass@1 after each stage, one line per run."""
    tasks = next(iter(sequences.values()))["tasks"]
    figure, axes = plt.subplots(1, len(tasks), figsize=(4 * len(tasks), 3.6), squeeze=False)
    for index, (run, sequence) in enumerate(sequences.items()):
        color = "black" if run.startswith("full") else COLORS[index % len(COLORS)]
        for column in range(len(tasks)):
            scores = [row[column] for row in sequence["pass@1"]]
            axes[0][column].plot(range(len(scores)), scores, "-o", markersize=3, color=color, label=run)
    for column, task in enumerate(tasks):
        ax = axes[0][column]
        ax.set_xticks(range(len(tasks) + 1), ["base"] + [f"after {t}" for t in tasks], rotation=30, ha="right", fontsize=7)
        ax.axvline(column + 1, color="grey", linewidth=0.8, linestyle=":")  # the stage that trains this task
        ax.set_title(f"task {task}", fontsize=9)
        ax.set_ylabel("greedy pass@1")
    axes[0][0].legend(fontsize=6)
    return _png(figure)


def cka_by_layer(representations: dict[str, dict]) -> bytes:
    """`representations[run_id][probe]["cka"]`: linear CKA to the base per layer (0 = embeddings), one line
    per run, solid for task inputs and dashed for held-out pre-training text."""
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for index, (run, probes) in enumerate(representations.items()):
        for probe, style in (("task", "-o"), ("pretraining", "--s")):
            if probe in probes:
                cka = probes[probe]["cka"]
                axes[0].plot(
                    range(len(cka)), cka, style, markersize=3, color=COLORS[index % len(COLORS)], label=f"{run} ({probe})"
                )
                js = probes[probe]["attention_js"]
                axes[1].plot(
                    range(1, len(js) + 1), js, style, markersize=3, color=COLORS[index % len(COLORS)], label=f"{run} ({probe})"
                )
    axes[0].set_xlabel("layer (0 = embeddings)")
    axes[0].set_ylabel("linear CKA, tuned vs base")
    axes[0].set_title("Representational drift")
    axes[1].set_xlabel("layer")
    axes[1].set_ylabel("attention JS distance to the base (nats)")
    axes[1].set_title("Attention change")
    axes[0].legend(fontsize=6)
    return _png(figure)
