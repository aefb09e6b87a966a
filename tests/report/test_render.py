"""The report of a study over seeds and learning-rate multipliers, rendered from handmade records alone."""

import json

from ftcompare.report.render import render_report

PROBLEMS = [f"p{i}" for i in range(6)]


def _suites(passed: set[str], validation: float) -> dict:
    outcomes = {problem: float(problem in passed) for problem in PROBLEMS}
    return {
        "test": {"in_domain": True, "greedy": {"pass@1": sum(outcomes.values()) / 6, "per_problem_pass@1": outcomes}},
        "validation": {"in_domain": True, "greedy": {"pass@1": validation}},
    }


def _run(method: str, multiplier: int, seed: int, passed: set[str], selected: bool) -> dict:
    rank = 4 if method == "lora" else None
    return {
        "run_id": f"{method}{'-r4' if rank else ''}-x{multiplier}-s{seed}",
        "label": ("LoRA r=4" if rank else "full FT") + (f" lr×{multiplier}" if multiplier != 1 else ""),
        "method": method,
        "seed": seed,
        "rank": rank,
        "alpha": 2 * rank if rank else None,
        "lr": 1e-4 * multiplier,
        "data_fraction": 1.0,
        "lr_multiplier": float(multiplier),
        "primary_suite": "test",
        "selection_suite": "validation",
        "selected": selected,
        "train": {
            "wall_s": 10.0 + seed,
            "method": {"library": "peft" if rank else "torch"},
            "dtype": "torch.float32",
            "master_weights": "float32",
        },
        "suites": _suites(passed, 0.5 if selected else 0.25),
        "forgetting": {"increase": 0.1 * multiplier, "corpora": {"stdlib": {"increase": 0.1 * multiplier}}},
        "spectral": {"matrices": 7, "total_intruders": multiplier + seed},
    }


def test_a_study_over_seeds_and_multipliers_reports_every_multiplier_with_its_mean_and_paired_tests(tmp_path):
    runs = [
        *(_run("full", m, seed, {"p0", "p1"}, m == 1) for m in (1, 10) for seed in (0, 1, 2)),
        # LoRA ×10 (chosen) solves p2..p5 on every seed, where full FT ×10 fails them: 4 better, 0 worse
        *(_run("lora", 10, seed, {"p0", "p1", "p2", "p3", "p4", "p5"}, True) for seed in (0, 1, 2)),
        *(_run("lora", 1, seed, {"p0"}, False) for seed in (0, 1, 2)),
    ]
    experiment = tmp_path / "seeds"
    base = {"run_id": "base", "method": "base", "label": "base", "primary_suite": "test", "suites": _suites({"p0"}, 0.0)}
    for record in [base | {"run_id": "_base"}, *runs]:
        (experiment / record["run_id"]).mkdir(parents=True)
        payload = base if record["run_id"] == "_base" else record
        (experiment / record["run_id"] / "metrics.json").write_text(json.dumps(payload))
    study = {
        "config": {"experiment": "seeds", "training": {"select_lr_on": "validation", "evaluate_all_lrs": True}},
        "runs": [{"run_id": r["run_id"]} for r in runs],
        "device": "cpu",
    }
    (experiment / "study.json").write_text(json.dumps(study))
    markdown_path, html_path, rows = render_report(experiment)
    markdown, html = markdown_path.read_text(), html_path.read_text()
    assert "every table and figure reports them all" in markdown and "The figures show only the selected" not in markdown
    # the per-run table: every multiplier a row, with its multiplier and whether it was chosen
    assert "| lr × | selection pass@1 | selected |" in markdown
    assert "| LoRA r=4 lr×10 | 2 | 1.0e-03 | 10 | 0.500 | ✓ | – | 1.000 |" in markdown
    assert "| LoRA r=4 | 2 | 1.0e-04 | 1 | 0.250 |  | – | 0.167 |" in markdown
    # over seeds: one row per method and multiplier, mean ± s.e. over the three seeds
    assert "## Over seeds" in markdown and "<h2>Over seeds</h2>" in html
    assert "| LoRA r=4 | 10 | 3 | 3/3 | 1.000 ± 0.000 | 0.500 ± 0.000 | +1.000 ± 0.000 | 11.0 ± 0.6 | 11.0 ± 0.6 |" in markdown
    assert "so for all or none).\n\n## Per suite" in markdown
    assert "| full FT | 1 | 3 | 3/3 |" in markdown and "| LoRA r=4 | 1 | 3 | 0/3 |" in markdown
    # paired over seeds: against full FT at the same multiplier, by problem
    assert "## Paired comparisons over seeds (greedy)" in markdown and "<h2>Paired comparisons over seeds (greedy)</h2>" in html
    assert "| LoRA r=4 | 10 | 3 | 3/3 | full FT ×10 | +0.667 ± 0.211 (4↑ 0↓, p 0.12) |" in markdown
    assert "| LoRA r=4 | 1 | 3 | 0/3 | full FT ×1 | -0.167 ± 0.167 (0↑ 1↓, p 1) |" in markdown
    figures = {path.name for path in (experiment / "figures").iterdir()}
    assert {"accuracy_vs_rank.png", "forgetting_vs_accuracy.png", "learning_rate_selection.png"} <= figures
    assert "sweep_lr_multiplier.png" in figures  # every multiplier evaluated: a sweep along it
    assert {row["run"] for row in rows if row["evaluated"]} == {r["run_id"] for r in runs} | {"base"}
