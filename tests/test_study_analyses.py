"""End to end on the tiny built-in base: a sequential study with the method variants, layer-wise LoRA,
a data fraction and the causal test as an analysis."""

import json
import os
import shutil

import pytest
import torch
import yaml
from typer.testing import CliRunner

from ftcompare.cli import app
from ftcompare.report.render import collect
from ftcompare.runs.store import read_jsonl
from tests.conftest import TINY_BUILTIN

pytestmark = pytest.mark.slow

TASK = {"kind": "generated", "n_train": 32, "n_test": 3, "n_ood": 0}
STUDY = {
    "experiment": "sequential",
    "base": {"model": "builtin:tiny-code", "builtin": TINY_BUILTIN},
    "sequence": [
        {"name": "ints", "task": {**TASK, "seed": 0, "families": ["add", "mul"]}},
        {"name": "lists", "task": {**TASK, "seed": 1, "families": ["list_sum", "list_len"]}},
    ],
    "methods": [
        {"kind": "full", "lr": 1e-3, "data_fraction": 0.5},
        {"kind": "qlora", "rank": 2, "alpha_lr_product": 0.02},
        {"kind": "dora", "rank": 2, "alpha_lr_product": 0.02, "layer_fraction": 0.5},
    ],
    "training": {"max_steps": 3, "batch_size": 8, "log_every": 1},
    "evaluation": {
        "n_samples": 0,
        "k": [1],
        "max_new_tokens": 8,
        "timeout_s": 3,
        "forgetting": {"n_chunks": 2, "chunk_tokens": 32},
        "latency": None,
    },
    "analyses": {
        "spectral": {"k": 4},
        "representations": {"probe_size": 3, "probe_tokens": 24},
        "intervene": {"lambdas": [0.0, 1.0], "runs": ["qlora-r2-s0", "full-d0.5-s0"]},
    },
}
RUNS = ("full-d0.5-s0", "qlora-r2-s0", "dora-r2-l50-s0")


def _run(output, study: dict = STUDY, name: str = "study.yaml"):
    """`ftcompare run` on `study`, written to output/name, with its experiment folder under output."""
    config_path = output / name
    config_path.write_text(yaml.safe_dump(study))
    return CliRunner().invoke(
        app, ["run", str(config_path), "--output", str(output)], env={"FTCOMPARE_CACHE": os.environ["FTCOMPARE_CACHE"]}
    )


@pytest.fixture(scope="module")
def experiment(tmp_path_factory, tiny_base, cache_dir):
    output = tmp_path_factory.mktemp("runs")
    os.environ["FTCOMPARE_CACHE"] = str(cache_dir)
    result = _run(output)
    assert result.exit_code == 0, result.output
    return output / "sequential"


def _metrics(experiment, run_id):
    return json.loads((experiment / run_id / "metrics.json").read_text())


def test_each_stage_but_the_last_leaves_weights_scores_and_samples(experiment):
    for run_id in RUNS:
        stage = experiment / run_id / "stage1-ints"
        record = json.loads((stage / "stage.json").read_text())
        assert record["task"] == "ints" and set(record["evaluation"]["pass@1"]) == {"ints", "lists"}
        assert (stage / "weights").is_dir() and (stage / "train_log.jsonl").is_file()
        assert {r["suite"] for r in read_jsonl(stage / "samples.jsonl")} == {"ints/test", "lists/test"}
        assert not (experiment / run_id / "stage2-lists").exists()  # the last stage is the run's own record
        train = json.loads((experiment / run_id / "train.json").read_text())
        assert [s["task"] for s in train["stages"]] == ["ints", "lists"] and train["steps"] == 6


def test_the_forgetting_matrix_has_the_base_then_one_row_per_stage(experiment):
    for run_id in RUNS:
        metrics = _metrics(experiment, run_id)
        sequence = metrics["sequence"]
        assert sequence["rows"] == ["base", "after ints", "after lists"] and sequence["tasks"] == ["ints", "lists"]
        stage1 = json.loads((experiment / run_id / "stage1-ints" / "stage.json").read_text())["evaluation"]
        assert sequence["pass@1"][1] == [stage1["pass@1"]["ints"], stage1["pass@1"]["lists"]]
        assert sequence["pass@1"][2] == [
            metrics["suites"]["ints/test"]["greedy"]["pass@1"],
            metrics["suites"]["lists/test"]["greedy"]["pass@1"],
        ]
        assert sequence["forgetting"]["ints"] == pytest.approx(sequence["pass@1"][1][0] - sequence["pass@1"][2][0])
        assert metrics["primary_suite"] == "lists/test"


def test_a_data_fraction_trains_on_that_share_of_each_task(experiment):
    train = json.loads((experiment / "full-d0.5-s0" / "train.json").read_text())
    assert [s["examples"] for s in train["stages"]] == [16, 16]


def test_layer_wise_dora_adapts_the_layers_least_like_their_input(experiment):
    scores = json.loads((experiment / "_base" / "layer_scores.json").read_text())["scores"]
    train = json.loads((experiment / "dora-r2-l50-s0" / "train.json").read_text())
    expected = sorted(sorted(range(len(scores)), key=lambda i: (scores[i], i))[: (len(scores) + 1) // 2])
    assert train["layers"] == expected and train["method"]["dora"] is True
    adapter = json.loads((experiment / "dora-r2-l50-s0" / "weights" / "adapter_config.json").read_text())
    assert adapter["layers_to_transform"] == expected and adapter["use_dora"] is True


def test_qlora_is_compared_with_the_quantized_base_it_trained_on(experiment):
    metrics = _metrics(experiment, "qlora-r2-s0")
    forgetting = metrics["forgetting"]
    assert forgetting["increase_over_quantized_base"] == pytest.approx(
        forgetting["heldout_loss"] - forgetting["quantized_base_heldout_loss"]
    )
    assert forgetting["quantized_base_heldout_loss"] != forgetting["base_heldout_loss"]
    assert (experiment / "_base" / "svd-nf4").is_dir()
    assert metrics["train"]["method"]["quantization"]["quant_type"] == "nf4"
    # the report gives both: over the base, and over the quantized base (the adapter's own share)
    report = (experiment / "report.md").read_text()
    header = next(line for line in report.splitlines() if line.startswith("| method |"))
    row = next(line for line in report.splitlines() if line.startswith("| QLoRA r=2 |"))
    cells = dict(zip((c.strip() for c in header.split("|")), (c.strip() for c in row.split("|"))))
    assert cells["forgetting over quantized base"] == f"{forgetting['increase_over_quantized_base']:+.3f}"
    assert cells["forgetting (Δ loss)"] == f"{forgetting['increase']:+.3f}"
    assert "the adapter's own share" in report


def test_the_causal_test_runs_as_an_analysis_on_the_runs_named(experiment):
    for run_id in ("qlora-r2-s0", "full-d0.5-s0"):
        metrics = _metrics(experiment, run_id)
        rows = {(row["lambda"], row["directions"]): row for row in metrics["intervene"]}
        assert list(rows) == [(0.0, "intruders"), (0.0, "control"), (1.0, "intruders"), (1.0, "control")]
        for kind in ("intruders", "control"):
            assert (
                rows[1.0, kind]["unchanged"] and rows[1.0, kind]["pass@1"] == metrics["suites"]["lists/test"]["greedy"]["pass@1"]
            )
            # the tuned model's row is the evaluation's own measurement
            assert rows[1.0, kind]["heldout_loss"] == metrics["forgetting"]["heldout_loss"]
            assert rows[1.0, kind]["corpora"]["stdlib"]["forgetting"] == metrics["forgetting"]["increase"]
    assert "intervene" not in _metrics(experiment, "dora-r2-l50-s0")


def test_the_report_shows_the_matrix_and_the_new_figures(experiment):
    report = (experiment / "report.md").read_text()
    assert "the forgetting matrix" in report and "| after ints |" in report
    for figure in ("sequence", "intervene", "intruders_by_layer", "intruder_positions", "spectral_features_by_layer"):
        assert (experiment / "figures" / f"{figure}.png").is_file(), figure
    assert "## Causal test: intruders and control" in report and "| pass@1, control |" in report


def test_an_interrupted_sequence_resumes_after_its_last_recorded_stage(experiment):
    run = experiment / "qlora-r2-s0"
    stage_record = (run / "stage1-ints" / "stage.json").read_text()
    for name in (
        "done.json",
        "metrics.json",
        "eval.json",
        "train.json",
        "spectral.json",
        "intervene.json",
        "representations.json",
        "samples.jsonl",
    ):
        (run / name).unlink()
    result = _run(experiment.parent)
    assert result.exit_code == 0, result.output
    assert "resuming the sequence after ints" in result.output
    assert (run / "stage1-ints" / "stage.json").read_text() == stage_record
    assert (run / "done.json").is_file()


def test_learning_rates_are_chosen_on_the_selection_suite_before_the_test_suite_is_scored(tmp_path, tiny_base):
    study = {
        "experiment": "selection",
        "base": STUDY["base"],
        "task": {"kind": "generated", "n_train": 32, "n_test": 3, "n_ood": 4},
        "methods": [{"kind": "full", "lr": 1e-3}],
        "training": {"max_steps": 2, "batch_size": 8, "lr_multipliers": [1, 10], "select_lr_on": "ood"},
        "evaluation": {"n_samples": 0, "k": [1], "max_new_tokens": 8, "forgetting": None, "latency": None},
        "analyses": {"spectral": None},
    }
    result = _run(tmp_path, study)
    assert result.exit_code == 0, result.output
    experiment = tmp_path / "selection"
    scores = {m: json.loads((experiment / f"full-x{m}-s0" / "selection.json").read_text())["greedy"]["pass@1"] for m in (1, 10)}
    chosen = 10 if scores[10] > scores[1] else 1
    other = 1 if chosen == 10 else 10
    winner, loser = _metrics(experiment, f"full-x{chosen}-s0"), _metrics(experiment, f"full-x{other}-s0")
    assert winner["selected"] is True and set(winner["suites"]) == {"test", "ood"}
    assert winner["suites"]["ood"]["greedy"]["pass@1"] == scores[chosen]  # the selection score, not re-measured
    assert loser["selected"] is False and set(loser["suites"]) == {"ood"}
    assert not (experiment / f"full-x{other}-s0" / "eval.json").exists()
    assert (experiment / f"full-x{other}-s0" / "done.json").is_file()
    # the winner's weights lost before it finished: retrained, and its selection suite scored again on the
    # retrained model rather than credited with the lost model's score
    winner_dir = experiment / f"full-x{chosen}-s0"
    for name in ("done.json", "metrics.json"):
        (winner_dir / name).unlink()
    shutil.rmtree(winner_dir / "weights")
    selection = json.loads((winner_dir / "selection.json").read_text())
    selection["greedy"]["pass@1"] = 0.987  # a score the retrained model cannot reach on 4 problems
    (winner_dir / "selection.json").write_text(json.dumps(selection))
    result = _run(tmp_path, study)
    assert result.exit_code == 0, result.output
    retrained = _metrics(experiment, f"full-x{chosen}-s0")
    assert retrained["train"]["retrained_without_saved_weights"] is True
    assert retrained["suites"]["ood"]["greedy"]["pass@1"] != 0.987


def test_with_evaluate_all_lrs_every_multiplier_is_evaluated_in_full_and_the_choice_marked(tmp_path, tiny_base):
    study = {
        "experiment": "every-rate",
        "base": STUDY["base"],
        "task": {"kind": "generated", "n_train": 32, "n_test": 3, "n_ood": 4},
        "methods": [{"kind": "full", "lr": 1e-3}, {"kind": "lora", "rank": 2, "alpha_lr_product": 0.02}],
        "training": {
            "max_steps": 2,
            "batch_size": 8,
            "lr_multipliers": [1, 10],
            "select_lr_on": "ood",
            "evaluate_all_lrs": True,
        },
        "evaluation": {
            "n_samples": 0,
            "k": [1],
            "max_new_tokens": 8,
            "forgetting": {"n_chunks": 2, "chunk_tokens": 32},
            "latency": None,
        },
        "analyses": {"spectral": {"k": 4}},
    }
    result = _run(tmp_path, study)
    assert result.exit_code == 0, result.output
    experiment = tmp_path / "every-rate"
    # no barrier: no run trained for its selection score alone; each scored the selection suite with the others
    assert not list(experiment.glob("*/selection.json"))
    records = collect(experiment).records  # the report marks the choice, by the study's rule
    for group in ("full", "lora-r2"):
        runs = {m: f"{group}-x{m}-s0" for m in (1, 10)}
        scores = {m: _metrics(experiment, run)["suites"]["ood"]["greedy"]["pass@1"] for m, run in runs.items()}
        chosen = 10 if scores[10] > scores[1] else 1  # ties: the smaller rate
        for m, run in runs.items():
            metrics = _metrics(experiment, run)
            assert "selected" not in metrics, run  # left to the report
            assert next(r for r in records if r.get("run_id") == run)["selected"] is (m == chosen), run
            assert set(metrics["suites"]) == {"test", "ood"} and (experiment / run / "eval.json").is_file(), run
            assert metrics["forgetting"]["increase"] is not None and metrics["spectral"]["matrices"] > 0, run
            assert (experiment / run / "done.json").is_file()
    markdown = (experiment / "report.md").read_text()
    [session] = json.loads((experiment / "executor.json").read_text())["sessions"]  # the study's wall time
    assert session["executor"] == "local" and session["wall_s"] > 0 and "failed" not in session
    assert "## Time" in markdown and f"Study wall time {session['wall_s']:.0f} s over 1 session(s)" in markdown
    assert "## Over seeds" in markdown and "## Paired comparisons over seeds (greedy)" in markdown
    for m in (1, 10):
        assert f"| LoRA r=2 | {m} | 1 |" in markdown and f"| full FT ×{m} |" in markdown


def test_eval_scores_a_model_without_fine_tuning_and_keeps_every_sample(tmp_path, tiny_base):
    model_dir = tiny_base[0]
    output = tmp_path / "eval"
    result = CliRunner().invoke(
        app,
        [
            "eval",
            str(model_dir),
            "--benchmark",
            "humaneval",
            "--format",
            "completion",
            "--limit",
            "3",
            "--max-new-tokens",
            "8",
            "--output",
            str(output),
        ],
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((output / "metrics.json").read_text())
    assert (metrics["benchmark"], metrics["problems"], metrics["format"]) == ("humaneval", 3, "completion")
    records = read_jsonl(output / "samples.jsonl")
    assert len(records) == 3 and metrics["pass@1"] == sum(r["passed"] for r in records) / 3
    assert {r["task_id"] for r in records} == {"HumanEval/0", "HumanEval/1", "HumanEval/2"}
    greedy = metrics["modes"]["greedy"]
    assert greedy["per_problem_pass@1"] == {r["task_id"]: float(r["passed"]) for r in records}
    assert f"pass@1 {metrics['pass@1']:.3f} ± {greedy['stderr']['pass@1']:.3f}" in " ".join(result.output.split())


def test_models_lists_the_registry_and_refuses_an_unknown_name():
    listing = CliRunner().invoke(app, ["models"])
    assert listing.exit_code == 0 and "smollm2-135m-instruct" in listing.output and "Apache-2.0" in listing.output
    unknown = CliRunner().invoke(app, ["models", "pull", "nope"])
    assert unknown.exit_code == 2 and "unknown model 'nope'" in unknown.output


def test_a_bf16_base_trains_with_fp32_master_weights_unless_told_otherwise(tmp_path, tiny_base):
    from safetensors.torch import load_file

    def weights_moved(master_weights: str) -> tuple[dict, float]:
        study = {
            "experiment": f"master-{master_weights}",
            "base": {**STUDY["base"], "dtype": "bfloat16"},
            "task": {"kind": "generated", "n_train": 16, "n_test": 2, "n_ood": 0},
            "methods": [{"kind": "full", "lr": 1e-5}],
            "training": {
                "max_steps": 4,
                "batch_size": 8,
                "schedule": "constant",
                "warmup_ratio": 0,
                "grad_clip": None,
                "master_weights": master_weights,
            },
            "evaluation": {"n_samples": 0, "k": [1], "max_new_tokens": 4, "forgetting": None, "latency": None},
            "analyses": {"spectral": None},
        }
        result = _run(tmp_path, study, f"{master_weights}.yaml")
        assert result.exit_code == 0, result.output
        run = tmp_path / f"master-{master_weights}" / "full-s0"
        tuned = load_file(next((run / "weights").glob("*.safetensors")))
        base = load_file(next(tiny_base[0].glob("*.safetensors")))
        shared = [name for name in tuned if name in base and tuned[name].ndim == 2]
        assert {tuned[name].dtype for name in shared} == {torch.bfloat16}  # saved in the base's dtype
        changed = sum(int((tuned[n] != base[n].to(torch.bfloat16)).sum()) for n in shared)
        return json.loads((run / "train.json").read_text()), changed / sum(tuned[n].numel() for n in shared)

    mixed, mixed_moved = weights_moved("float32")
    pure, pure_moved = weights_moved("base")
    assert (mixed["master_weights"], mixed["autocast"]) == ("float32", "bfloat16")
    assert (pure["master_weights"], pure["autocast"]) == ("bfloat16", None)
    # four steps of ~1e-5: pure bf16 rounds most of them away, fp32 master weights keep them
    assert mixed_moved > 2 * pure_moved, (mixed_moved, pure_moved)
