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
        "lora-r4-s0": [{"lambda": lam, "pass@1": 0.5 * lam, "forgetting": 0.1 * lam} for lam in (0, 0.5, 1)],
        "full-s0": [{"lambda": lam, "pass@1": 0.6} for lam in (0, 1)],
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


def _causal_rows(run_pass1, control_pass1):
    """A causal test's rows at λ = 0, 1: intruders then control, each with forgetting."""
    return [
        {"lambda": lam, "directions": kind, "pass@1": score, "forgetting": 0.1 * lam + offset}
        for lam in (1.0, 0.0)
        for kind, score, offset in (("intruders", run_pass1 * lam, 0.0), ("control", control_pass1, 0.5))
    ]


def test_the_causal_test_draws_intruders_solid_and_the_control_dashed():
    import matplotlib.pyplot as plt

    results = {
        "lora-r4-s0": _causal_rows(0.6, 0.4),
        "full-s0": [{"lambda": lam, "pass@1": 0.7, "intruders": 0} for lam in (1.0, 0.0)],  # before the control
    }
    figure, axes = plt.subplots(1, 2)
    plots.intervention_axes(axes, results)
    lines = [{line.get_label(): line for line in ax.get_lines() if not line.get_label().startswith("_")} for ax in axes]
    plt.close(figure)
    assert set(lines[0]) == {"lora-r4-s0 (intruders)", "lora-r4-s0 (control)", "full-s0 (intruders)"}
    assert set(lines[1]) == {"lora-r4-s0 (intruders)", "lora-r4-s0 (control)"}  # the old rows have no forgetting
    for panel in lines:
        for label, line in panel.items():
            assert line.get_linestyle() == ("--" if "(control)" in label else "-"), label
            assert list(line.get_xdata()) == [0.0, 1.0], label  # in λ order
    assert list(lines[0]["lora-r4-s0 (intruders)"].get_ydata()) == [0.0, 0.6]
    assert list(lines[0]["lora-r4-s0 (control)"].get_ydata()) == [0.4, 0.4]
    assert list(lines[1]["lora-r4-s0 (control)"].get_ydata()) == pytest.approx([0.5, 0.6])
    assert lines[0]["lora-r4-s0 (intruders)"].get_color() == lines[0]["lora-r4-s0 (control)"].get_color()
    assert lines[0]["full-s0 (intruders)"].get_color() == "black"
    record = {"run_id": "lora-r4-s0", "k": 10, "epsilon": 0.5, "rows": results["lora-r4-s0"]}
    assert plots.intervention_curve(record).startswith(b"\x89PNG")
    assert plots.interventions(results).startswith(b"\x89PNG")
