import pytest

from ftcompare.report import plots


def _row(run, rank=None, alpha=None, layer_fraction=None, data_fraction=1.0, **values):
    return {
        "run": run,
        "rank": rank,
        "alpha": alpha,
        "layer_fraction": layer_fraction,
        "data_fraction": data_fraction,
        "id_pass1": 0.5,
        "ood_pass1": 0.1,
        "forgetting": 0.2,
        "intruders": 3,
        **values,
    }


@pytest.mark.parametrize(
    "run, axis, series",
    [
        ("lora-r4-a16-s0", "rank", "lora-a16"),
        ("lora-r4-a16-s0", "alpha", "lora-r4"),
        ("lora-r4-l50-d0.25-s1", "layer_fraction", "lora-r4-d0.25"),
        ("lora-r4-l50-d0.25-s1", "data_fraction", "lora-r4-l50"),
        ("full-d0.5-s0", "data_fraction", "full"),
        ("dora-r16-s2", "data_fraction", "dora-r16"),
    ],
)
def test_series_drop_the_plotted_axis_and_the_seed(run, axis, series):
    assert plots.series_name({"run": run}, axis) == series


def test_sweep_axes_are_those_some_series_varies_along():
    rank_sweep = [_row("full-s0"), _row("lora-r4-s0", 4, 8, 1.0), _row("lora-r16-s0", 16, 32, 1.0)]
    assert plots.sweep_axes(rank_sweep) == ["rank"]  # alpha = 2r varies with the rank, but is not swept
    alpha_sweep = [_row("lora-r4-a4-s0", 4, 4, 1.0), _row("lora-r4-a16-s0", 4, 16, 1.0)]
    assert plots.sweep_axes(alpha_sweep) == ["alpha"]
    layers = rank_sweep + [_row("lora-r4-l50-s0", 4, 8, 0.5)]
    assert plots.sweep_axes(layers) == ["rank", "layer_fraction"]
    data = [_row("full-d0.5-s0", data_fraction=0.5), _row("full-d1-s0")]
    assert plots.sweep_axes(data) == ["data_fraction"]


def test_sweep_intervention_and_sequence_figures_are_pngs():
    rows = [
        _row("base"),
        _row("full-d0.5-s0", data_fraction=0.5),
        _row("full-d1-s0"),
        _row("lora-r4-d0.5-s0", 4, 8, 1.0, 0.5),
        _row("lora-r4-d1-s0", 4, 8, 1.0, 1.0, id_pass1=0.7),
    ]
    assert plots.sweep(rows, "data_fraction").startswith(b"\x89PNG")
    causal = {
        "lora-r4": [[{"lambda": lam, "pass@1": 0.5 * lam, "forgetting": 0.1 * lam} for lam in (0, 0.5, 1)]],
        "full": [[{"lambda": lam, "pass@1": 0.6} for lam in (0, 1)]],
    }
    assert plots.interventions(causal).startswith(b"\x89PNG")
    sequence = {"tasks": ["a", "b"], "pass@1": [[0, 0], [0.5, 0.1], [0.2, 0.6]]}
    assert plots.sequence_curves({"full-s0": sequence, "lora-r4-s0": sequence}).startswith(b"\x89PNG")


def test_a_sweep_figure_draws_only_the_series_that_vary_along_its_axis():
    rows = [
        _row("base"),
        _row("full-d0.5-s0", data_fraction=0.5),
        _row("full-d1-s0"),
        _row("lora-r4-s0", 4, 8, 1.0),
        _row("lora-r16-s0", 16, 32, 1.0),
        _row("lora-alpha-r16-a4-s0", 16, 4, 1.0),
        _row("lora-alpha-r16-a64-s0", 16, 64, 1.0),
    ]
    assert [r["run"] for r in plots.swept_rows(rows, "alpha")] == [
        "base",
        "full-d1-s0",
        "lora-alpha-r16-a4-s0",
        "lora-alpha-r16-a64-s0",
    ]
    assert [r["run"] for r in plots.swept_rows(rows, "data_fraction")] == ["full-d0.5-s0", "full-d1-s0"]


def test_a_method_keeps_its_colour_in_and_out_of_domain():
    import matplotlib.pyplot as plt

    rows = [
        _row("base"),
        _row("full-s0"),
        _row("dora-r16-s0", 16, 32, 1.0),
        _row("lora-r4-s0", 4, 8, 1.0),
        _row("lora-r16-s0", 16, 32, 1.0),
        _row("qlora-r16-s0", 16, 32, 1.0),
    ]
    figure, ax = plt.subplots()
    plots.accuracy_axis(ax, rows, "rank", " (ID)", " (OOD)")
    colours = {container.get_label(): container.lines[0].get_color() for container in ax.containers}
    plt.close(figure)
    for series in ("dora", "lora", "qlora"):
        assert colours[f"{series} (ID)"] == colours[f"{series} (OOD)"], series
    assert len({colours[f"{series} (ID)"] for series in ("dora", "lora", "qlora")}) == 3


def _seeded(method: str, multiplier: float, seed: int, id_pass1: float, forgetting: float = 0.2) -> dict:
    rank = 4 if method == "lora" else None
    run = f"{method}{'-r4' if rank else ''}-x{multiplier:g}-s{seed}"
    return _row(run, rank, 2 * rank if rank else None, 1.0 if rank else None, id_pass1=id_pass1, forgetting=forgetting) | {
        "lr_multiplier": multiplier
    }


SEEDED = [
    _row("base", id_pass1=0.05, forgetting=0.0),
    *(_seeded("lora", 1, seed, p) for seed, p in ((0, 0.1), (1, 0.2), (2, 0.6))),
    *(_seeded("lora", 10, seed, p, 0.5) for seed, p in ((0, 0.4), (1, 0.5))),
    *(_seeded("full", 1, seed, p) for seed, p in ((0, 0.3), (1, 0.5))),
    *(_seeded("full", 10, seed, p) for seed, p in ((0, 0.7), (1, 0.9))),
]


def test_each_seed_is_a_point_and_the_line_their_mean_with_full_fine_tuning_at_the_panel_s_multiplier():
    import matplotlib.pyplot as plt

    panels = plots.multiplier_panels(SEEDED)
    assert [m for m, _ in panels] == [1, 10]
    assert [r["run"] for r in panels[1][1]] == ["base", "lora-r4-x10-s0", "lora-r4-x10-s1", "full-x10-s0", "full-x10-s1"]
    figure, ax = plt.subplots()
    plots.versus_axis(ax, panels[0][1], "id_pass1")
    mean_line = ax.containers[0].lines[0]
    seeds = ax.collections[0].get_offsets()
    references = {line.get_label(): line.get_ydata()[0] for line in ax.get_lines() if line is not mean_line}
    plt.close(figure)
    assert list(mean_line.get_ydata()) == pytest.approx([0.3])  # the mean of 0.1, 0.2, 0.6
    assert sorted(seeds[:, 1]) == pytest.approx([0.1, 0.2, 0.6]) and set(seeds[:, 0]) == {4}
    assert references == pytest.approx({"full-x1": 0.4, "base": 0.05})  # full FT ×1, not ×10
    assert plots.accuracy_vs_rank(SEEDED).startswith(b"\x89PNG")
    assert plots.multiplier_panels(SEEDED[:4]) == [(None, SEEDED[:4])]  # one multiplier: one panel, as before
    chosen_only = [SEEDED[0], *SEEDED[4:6], *SEEDED[6:8]]  # LoRA at its chosen ×10, full FT at its chosen ×1
    assert plots.multiplier_panels(chosen_only) == [(None, chosen_only)]


def test_forgetting_vs_accuracy_marks_each_seed_and_the_mean_with_a_shape_per_multiplier():
    import matplotlib.pyplot as plt

    figure, ax = plt.subplots()
    plots.forgetting_accuracy_axis(ax, SEEDED)
    points = [(c.get_offsets().tolist(), c.get_paths()[0].vertices.tolist()) for c in ax.collections]
    names = [text.get_text() for text in ax.texts]
    legend = [text.get_text() for text in ax.get_legend().get_texts()]
    plt.close(figure)
    assert names == ["base", "lora-r4-x1", "lora-r4-x10", "full-x1", "full-x10"]
    assert len(points) == 2 * len(names)  # per group: its seeds, then their mean
    lora_x1_seeds, lora_x1_mean = points[2], points[3]
    assert sorted(y for _, y in lora_x1_seeds[0]) == pytest.approx([0.1, 0.2, 0.6])
    assert lora_x1_mean[0][0] == pytest.approx([0.2, 0.3])
    lora_x10_mean = points[5]
    assert lora_x10_mean[0][0] == pytest.approx([0.5, 0.45])
    assert lora_x1_mean[1] != lora_x10_mean[1] and points[7][1] == lora_x1_mean[1]  # marker: by multiplier
    assert legend == ["lr ×1", "lr ×10"]
    assert plots.forgetting_vs_accuracy(SEEDED).startswith(b"\x89PNG")


def _causal_rows(run_pass1, control_pass1):
    """A causal test's rows at λ = 0, 1: intruders then control, each with forgetting."""
    return [
        {"lambda": lam, "directions": kind, "pass@1": score, "forgetting": 0.1 * lam + offset}
        for lam in (1.0, 0.0)
        for kind, score, offset in (("intruders", run_pass1 * lam, 0.0), ("control", control_pass1, 0.5))
    ]


def test_the_causal_test_draws_intruders_solid_and_the_control_dashed_through_the_mean_over_seeds():
    import matplotlib.pyplot as plt

    results = {
        "lora-r4": [_causal_rows(0.6, 0.4), _causal_rows(0.8, 0.2)],
        "full": [[{"lambda": lam, "pass@1": 0.7, "intruders": 0} for lam in (1.0, 0.0)]],  # before the control
    }
    figure, axes = plt.subplots(1, 2)
    plots.intervention_axes(axes, results)
    lines = [{line.get_label(): line for line in ax.get_lines() if not line.get_label().startswith("_")} for ax in axes]
    seed_points = [sum(len(c.get_offsets()) for c in ax.collections) for ax in axes]
    scale = axes[1].get_yscale()
    plt.close(figure)
    assert set(lines[0]) == {"lora-r4 (intruders)", "lora-r4 (control)", "full (intruders)"}
    assert set(lines[1]) == {"lora-r4 (intruders)", "lora-r4 (control)"}  # the old rows have no forgetting
    for panel in lines:
        for label, line in panel.items():
            assert line.get_linestyle() == ("--" if "(control)" in label else "-"), label
            assert list(line.get_xdata()) == [0.0, 1.0], label  # in λ order
    assert list(lines[0]["lora-r4 (intruders)"].get_ydata()) == pytest.approx([0.0, 0.7])  # the mean of 0.6 and 0.8
    assert list(lines[0]["lora-r4 (control)"].get_ydata()) == pytest.approx([0.3, 0.3])
    assert list(lines[1]["lora-r4 (control)"].get_ydata()) == pytest.approx([0.5, 0.6])
    assert seed_points == [8, 8]  # each seed of the two-seed setting a point: 2 kinds × 2 λ × 2 seeds per panel
    assert scale == "symlog"  # a control's tens of nats beside the intruders' tenths
    assert lines[0]["lora-r4 (intruders)"].get_color() == lines[0]["lora-r4 (control)"].get_color()
    assert lines[0]["full (intruders)"].get_color() == "black"
    record = {"run_id": "lora-r4-s0", "k": 10, "epsilon": 0.5, "rows": results["lora-r4"][0]}
    assert plots.intervention_curve(record).startswith(b"\x89PNG")
    assert plots.interventions(results).startswith(b"\x89PNG")
