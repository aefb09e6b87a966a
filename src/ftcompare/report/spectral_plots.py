"""Figures of the spectral analysis (spectral.json), each a pure function from its records to a PNG:
where intruder dimensions appear (per layer, per module type, per position in the tuned spectrum) and
how the ranks and norms of W, W0 and ΔW = W − W0 vary over layers ("rank trade-offs").

Runs are keyed by run id (`full-s0`, `lora-r4-s0`, `dora-r16-s0`); full fine-tuning is drawn in black,
the other runs in the colors of plots.py.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ftcompare.analyze.spectral import features_by_layer, layer_sort_key
from ftcompare.report.plots import COLORS, _png, plt

FULL_COLOR = "black"
_FULL_STYLES = ("-s", "--s", ":s", "-.s")


def _is_full(run: str) -> bool:
    return run == "full" or run.startswith("full-")


def _styles(runs: Sequence[str]) -> dict[str, tuple[str, str]]:
    """run -> (color, line format): full fine-tuning black (one dash pattern per run), others by color."""
    styles, full, other = {}, 0, 0
    for run in runs:
        if _is_full(run):
            styles[run] = (FULL_COLOR, _FULL_STYLES[full % len(_FULL_STYLES)])
            full += 1
        else:
            styles[run] = (COLORS[other % len(COLORS)], "-o")
            other += 1
    return styles


def _no_data(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what}", ha="center", va="center", transform=ax.transAxes, color="gray")


def _numeric_layers(values: dict) -> list[str]:
    """The keys of a per-layer dict that are layer numbers ("-" = no layer has no place on the x axis)."""
    return sorted((layer for layer in values if layer.isdigit()), key=layer_sort_key)


def _legend(ax) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=6)


def intruders_by_layer(summaries: dict[str, dict]) -> bytes:
    """`summaries[run_id]` = spectral.json's "summary": intruders per layer (its "by_layer"), one line per
    run, and per module type (its "by_module_type"), grouped bars per run."""
    runs = list(summaries)
    styles = _styles(runs)
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    plotted = False
    for run in runs:
        by_layer = summaries[run].get("by_layer") or {}
        layers = _numeric_layers(by_layer)
        if layers:
            color, fmt = styles[run]
            axes[0].plot(
                [int(layer) for layer in layers], [by_layer[layer] for layer in layers], fmt, markersize=3, color=color, label=run
            )
            plotted = True
    if not plotted:
        _no_data(axes[0], "per-layer intruder counts")
    axes[0].set_xlabel("layer")
    axes[0].set_ylabel("intruder dimensions (all matrices of the layer)")
    axes[0].set_title("Intruders per layer")
    _legend(axes[0])

    modules: list[str] = []
    for run in runs:
        modules += [m for m in summaries[run].get("by_module_type") or {} if m not in modules]
    if modules and runs:
        width = 0.8 / len(runs)
        for offset, run in enumerate(runs):
            counts = summaries[run].get("by_module_type") or {}
            color, _ = styles[run]
            axes[1].bar(
                [i + offset * width for i in range(len(modules))],
                [counts.get(m, 0) for m in modules],
                width=width,
                color=color,
                label=run,
            )
        axes[1].set_xticks([i + 0.4 - width / 2 for i in range(len(modules))], modules, rotation=45, ha="right", fontsize=7)
        _legend(axes[1])
    else:
        _no_data(axes[1], "per-module intruder counts")
    axes[1].set_xlabel("module type")
    axes[1].set_ylabel("intruder dimensions (all layers)")
    axes[1].set_title("Intruders per module type")
    return _png(figure)


def intruder_positions(summaries: dict[str, dict], k: int | None = None) -> bytes:
    """`summaries[run_id]["intruder_positions"]` = {0-based position among the tuned top-k: count}: for each
    run, intruders at each position 1..k of the tuned spectrum (1 = the top singular vector), summed over
    matrices. `k` (spectral.json's "k") sets the x range; without it, up to the largest position seen."""
    runs = list(summaries)
    styles = _styles(runs)
    histograms = {run: {int(p): c for p, c in (summaries[run].get("intruder_positions") or {}).items()} for run in runs}
    largest = max((p + 1 for h in histograms.values() for p in h), default=1)
    positions = list(range(1, max(k or 0, largest) + 1))
    figure, ax = plt.subplots(figsize=(6, 4))
    for run in runs:
        color, fmt = styles[run]
        ax.plot(positions, [histograms[run].get(p - 1, 0) for p in positions], fmt, markersize=3, color=color, label=run)
    if not runs:
        _no_data(ax, "spectral summaries")
    ax.set_xticks(positions)
    ax.set_xlabel("position among the tuned singular vectors (1 = largest singular value)")
    ax.set_ylabel("intruder dimensions (all matrices)")
    ax.set_title("Where intruders sit in the tuned spectrum")
    _legend(ax)
    return _png(figure)


# (feature key in the matrix records, panel title, y label)
FEATURE_PANELS: tuple[tuple[str, str, str], ...] = (
    ("tuned_effective_rank", "Effective rank of W", "effective rank (exp entropy of σ)"),
    ("delta_effective_rank", "Effective rank of ΔW", "effective rank (exp entropy of σ)"),
    ("delta_sv_entropy", "Singular-value entropy of ΔW", "entropy of normalised σ (nats)"),
    ("delta_stable_rank", "Stable rank of ΔW", "‖ΔW‖²_F / ‖ΔW‖²_2"),
    ("delta_spectral_norm", "Spectral norm of ΔW", "‖ΔW‖_2"),
    ("relative_delta_norm", "Relative update size", "‖ΔW‖_F / ‖W0‖_F"),
)


def spectral_features_by_layer(matrices_by_run: dict[str, list[dict]]) -> bytes:
    """`matrices_by_run[run_id]` = spectral.json's "matrices": per layer, the mean over that layer's matrices
    of each feature in FEATURE_PANELS, one line per run (full fine-tuning in black); the base W0's effective
    rank is drawn dotted in gray on the first panel. Records without a feature (older spectral.json) are
    skipped for it, as are non-finite values."""
    runs = list(matrices_by_run)
    styles = _styles(runs)
    per_layer = {run: features_by_layer(matrices_by_run[run]) for run in runs}
    figure, axes = plt.subplots(2, 3, figsize=(13, 7))
    for ax, (feature, title, ylabel) in zip(axes.flat, FEATURE_PANELS):
        plotted = False
        for run in runs:
            points = [
                (int(layer), values[feature])
                for layer, values in per_layer[run].items()
                if layer.isdigit() and feature in values and math.isfinite(values[feature])
            ]
            if points:
                color, fmt = styles[run]
                ax.plot([x for x, _ in points], [y for _, y in points], fmt, markersize=3, color=color, label=run)
                plotted = True
        if feature == "tuned_effective_rank":  # the base is the same for every run: the first that has it
            for run in runs:
                base = [
                    (int(layer), values["base_effective_rank"])
                    for layer, values in per_layer[run].items()
                    if layer.isdigit() and "base_effective_rank" in values
                ]
                if base:
                    ax.plot([x for x, _ in base], [y for _, y in base], ":", color="gray", label="base W0")
                    break
        if not plotted:
            _no_data(ax, feature)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("layer")
        ax.set_ylabel(ylabel, fontsize=8)
    _legend(next((ax for ax in axes.flat if ax.get_legend_handles_labels()[0]), axes.flat[0]))
    figure.suptitle("Spectral features per layer (mean over the layer's adapted matrices)", fontsize=11)
    return _png(figure)
