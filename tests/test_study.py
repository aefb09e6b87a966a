"""End to end on the tiny built-in base: every stage runs, records land, a re-run resumes."""

import json

import pytest
import torch
import yaml
from peft import PeftModel
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from ftcompare.cli import app
from ftcompare.config import parse_config
from ftcompare.runs.store import read_jsonl
from ftcompare.study import StudyMismatch, run_study
from tests.conftest import TINY_BUILTIN

pytestmark = pytest.mark.slow

STUDY = {
    "experiment": "e2e",
    "base": {"model": "builtin:tiny-code", "builtin": TINY_BUILTIN},
    "task": {"kind": "generated", "n_train": 48, "n_test": 4, "n_ood": 3},
    "methods": [{"kind": "full", "lr": 1e-3}, {"kind": "lora", "rank": [2], "alpha_lr_product": 0.02}],
    "training": {"max_steps": 4, "batch_size": 8, "log_every": 2},
    "evaluation": {
        "n_samples": 2,
        "k": [1, 2],
        "max_new_tokens": 8,
        "timeout_s": 3,
        "forgetting": {"n_chunks": 2, "chunk_tokens": 32},
        "latency": {"batch_size": 2, "new_tokens": 4, "repeats": 1},
        "robustness": {"s": 2, "perturbations": ["docstring", "function_name"]},
    },
    "analyses": {"spectral": {"k": 4, "epsilons": [0.3, 0.5, 0.9]}, "representations": {"probe_size": 3, "probe_tokens": 24}},
}
RUN_FILES = (
    "run.json",
    "train.json",
    "train_log.jsonl",
    "samples.jsonl",
    "eval.json",
    "spectral.json",
    "representations.json",
    "metrics.json",
    "done.json",
)


@pytest.fixture(scope="module")
def experiment(tmp_path_factory, tiny_base, cache_dir):
    output = tmp_path_factory.mktemp("runs")
    config_path = output / "study.yaml"
    config_path.write_text(yaml.safe_dump(STUDY))
    result = CliRunner().invoke(app, ["run", str(config_path), "--output", str(output)], env={"FTCOMPARE_CACHE": str(cache_dir)})
    assert result.exit_code == 0, result.output
    return output / "e2e"


def test_every_run_leaves_its_records(experiment):
    for run_id in ("full-s0", "lora-r2-s0"):
        for name in RUN_FILES:
            assert (experiment / run_id / name).is_file(), (run_id, name)
    assert (experiment / "_base" / "metrics.json").is_file()
    study = json.loads((experiment / "study.json").read_text())
    assert [r["run_id"] for r in study["runs"]] == ["full-s0", "lora-r2-s0"]
    assert study["environment"]["torch"] == torch.__version__


def test_metrics_hold_every_measure(experiment):
    metrics = json.loads((experiment / "lora-r2-s0" / "metrics.json").read_text())
    assert set(metrics["suites"]) == {"test", "ood"}
    assert metrics["suites"]["test"]["in_domain"] and not metrics["suites"]["ood"]["in_domain"]
    assert 0 <= metrics["suites"]["test"]["greedy"]["pass@1"] <= 1
    assert set(metrics["suites"]["test"]["sampled"]) >= {"pass@1", "pass@2"}
    assert metrics["forgetting"]["increase"] == pytest.approx(
        metrics["forgetting"]["heldout_loss"] - metrics["forgetting"]["base_heldout_loss"]
    )
    assert metrics["latency"]["unmerged_tokens_per_s"] > 0 and metrics["latency"]["merged_tokens_per_s"] > 0
    assert metrics["train"]["tokens_per_s"] > 0 and metrics["train"]["steps"] == 4
    assert metrics["train"]["batching"] == "random" and 0 <= metrics["train"]["padded_fraction"] < 1
    assert metrics["train"]["token_slots"] >= metrics["train"]["tokens"] and metrics["train"]["warmup_s"] > 0
    assert metrics["train"]["trainable_params"] < metrics["train"]["total_params"]
    assert metrics["train"]["method"]["adapter_dtype"].startswith("created and saved in the base dtype")
    # an fp32 base on the CPU: trained as it is, no autocast
    assert (metrics["train"]["master_weights"], metrics["train"]["autocast"]) == ("float32", None)
    assert metrics["spectral"]["matrices"] == 4 * 7
    assert set(metrics["spectral"]["epsilon_sweep"]) == {"0.3", "0.5", "0.9"}
    full = json.loads((experiment / "full-s0" / "metrics.json").read_text())
    assert "unmerged_tokens_per_s" not in full["latency"]
    assert full["train"]["trainable_params"] == full["train"]["total_params"]


def test_robustness_is_scored_per_perturbation_family(experiment):
    metrics = json.loads((experiment / "lora-r2-s0" / "metrics.json").read_text())
    robustness = metrics["suites"]["test"]["robustness"]
    assert set(robustness) == {"docstring", "function_name"}
    for family in robustness.values():
        assert family["s"] == 2 and 0 <= family["robust_pass@1"] <= 1
        assert 0 <= family["robust_relative@1"] <= 1
    records = read_jsonl(experiment / "lora-r2-s0" / "samples.jsonl")
    renamed = [r for r in records if r.get("perturbation") == "function_name"]
    assert len(renamed) == 4 * 2 and {r["variant"] for r in renamed} == {0, 1}
    assert all(r["suite"] == "test~function_name" and r["mode"] == "greedy" for r in renamed)


def test_representational_drift_per_layer(experiment):
    lora = json.loads((experiment / "lora-r2-s0" / "representations.json").read_text())["probes"]
    full = json.loads((experiment / "full-s0" / "representations.json").read_text())["probes"]
    assert set(lora) == {"task", "pretraining"}
    for probes in (lora, full):
        for probe in probes.values():
            assert len(probe["cka"]) == 4 + 1 and len(probe["attention_js"]) == 4
            assert all(0 <= value <= 1 + 1e-9 for value in probe["cka"])
            assert all(value >= 0 for value in probe["attention_js"])
    # LoRA on the linear layers leaves the embeddings alone; full FT trains them
    assert lora["task"]["cka"][0] == pytest.approx(1.0, abs=1e-6)
    assert full["task"]["cka"][0] < 1 - 1e-6
    metrics = json.loads((experiment / "lora-r2-s0" / "metrics.json").read_text())
    assert set(metrics["representations"]) == {"task_mean_cka", "pretraining_mean_cka", "wall_s"}
    assert set(metrics["stage_s"]) == {"train", "evaluate", "spectral", "representations"}


def test_samples_are_auditable(experiment):
    records = [r for r in read_jsonl(experiment / "lora-r2-s0" / "samples.jsonl") if "perturbation" not in r]
    # (4 + 3 problems) × (1 greedy + 2 sampled)
    assert len(records) == 7 * 3
    for record in records:
        assert {"prompt", "completion", "extracted_code", "status", "passed", "program"} <= set(record)
        assert record["program"].startswith(record["prompt"] + record["extracted_code"])
        assert record["passed"] == (record["status"] == "passed")


def test_weights_reload(experiment, tiny_base):
    directory, _ = tiny_base
    base = AutoModelForCausalLM.from_pretrained(directory)
    base_params = sum(p.numel() for p in base.parameters())
    adapter = PeftModel.from_pretrained(base, experiment / "lora-r2-s0" / "weights")
    assert any("lora_" in name for name, _ in adapter.named_parameters())
    full = AutoModelForCausalLM.from_pretrained(experiment / "full-s0" / "weights")
    assert sum(p.numel() for p in full.parameters()) == base_params


def test_base_svds_are_computed_once_per_base(experiment):
    svd_files = list((experiment / "_base" / "svd").rglob("*.safetensors"))
    assert len(svd_files) == 4 * 7  # one per matrix, shared by both runs


def test_report_renders_from_records(experiment):
    html = (experiment / "report.html").read_text()
    markdown = (experiment / "report.md").read_text()
    assert html.count("data:image/png;base64,") >= 6
    assert "Representational drift" in html
    assert "LoRA r=2" in markdown and "full FT" in markdown
    assert "## Per suite" in markdown and "| lora-r2-s0 | ood | no |" in markdown
    assert "## Paired comparisons (greedy)" in markdown and "<h2>Paired comparisons (greedy)</h2>" in html
    paired = [line for line in markdown.splitlines() if line.startswith(("| lora-r2-s0 | base |", "| lora-r2-s0 | full FT |"))]
    assert len(paired) == 2 and all("↑" in line and "p " in line for line in paired)
    # which sandbox scored the programs: every sample counted in each suite's metrics, and named in the report
    greedy = json.loads((experiment / "lora-r2-s0" / "metrics.json").read_text())["suites"]["test"]["greedy"]
    isolation, programs = next(iter(greedy["isolation_counts"].items()))
    assert len(greedy["isolation_counts"]) == 1 and isolation in ("bubblewrap", "fallback") and programs > 0
    assert f"Generated programs ran in the sandbox under {isolation}: " in markdown
    metrics = json.loads((experiment / "lora-r2-s0" / "metrics.json").read_text())
    greedy = metrics["suites"]["test"]["greedy"]
    assert len(greedy["per_problem_pass@1"]) == greedy["problems"] and greedy["stderr"]["pass@1"] is not None
    assert "## Robustness" in markdown and "| lora-r2-s0 | test | function_name | 2 |" in markdown
    assert "<h2>Robustness (ReCode, greedy)</h2>" in html
    assert (experiment / "figures" / "accuracy_vs_rank.png").stat().st_size > 1000
    (experiment / "report.html").unlink()
    result = CliRunner().invoke(app, ["report", str(experiment)])
    assert result.exit_code == 0, result.output
    assert (experiment / "report.html").is_file()


def test_a_partial_report_names_the_unfinished_and_the_retrained_runs(experiment, tmp_path):
    import shutil

    from ftcompare.report.render import render_report

    copy = tmp_path / "e2e"
    shutil.copytree(experiment, copy, ignore=shutil.ignore_patterns("weights", "svd"))
    for name in ("metrics.json", "done.json"):
        (copy / "lora-r2-s0" / name).unlink()
    full = json.loads((copy / "full-s0" / "metrics.json").read_text())
    full["train"]["retrained_without_saved_weights"] = True
    (copy / "full-s0" / "metrics.json").write_text(json.dumps(full))
    markdown, html, _ = render_report(copy)
    for text in (markdown.read_text(), html.read_text()):
        assert "Partial report:" in text and "1 of 2 runs have not finished and are not in it: lora-r2-s0" in text
        assert "Retrained after their saved weights were lost" in text and "model): full-s0" in text
    assert "Partial report" not in (experiment / "report.md").read_text()


def test_the_report_says_which_weights_and_warns_of_gpu_nondeterminism_on_gpus_only(experiment, tmp_path):
    import shutil

    from ftcompare.report.render import render_report

    caveat = "Seeds fix initialisation and data order, not GPU arithmetic"
    assert caveat not in (experiment / "report.md").read_text()  # this study ran on the CPU
    copy = tmp_path / "on-gpu"
    shutil.copytree(experiment, copy, ignore=shutil.ignore_patterns("weights", "svd"))
    study = json.loads((copy / "study.json").read_text())
    study["device"] = "cuda:0"
    study["base"]["provenance"] = {
        "source": "local GGUF file",
        "quantization": "Q4_1 GGUF, dequantized to float32",
        "note": "weights are a 4-bit quantization, not the upstream model's",
    }
    (copy / "study.json").write_text(json.dumps(study))
    markdown, html, _ = render_report(copy)
    for text in (markdown.read_text(), html.read_text()):
        assert caveat in text
        assert "Weights: local GGUF file; Q4_1 GGUF, dequantized to float32. Note: weights are a 4-bit" in text


def test_rerun_skips_finished_and_resumes_unfinished(experiment):
    output = experiment.parent
    lora = experiment / "lora-r2-s0"
    train_mtime = (lora / "train.json").stat().st_mtime_ns
    full_metrics = (experiment / "full-s0" / "metrics.json").read_text()
    for name in ("done.json", "metrics.json", "eval.json", "spectral.json"):  # as if interrupted while evaluating
        (lora / name).unlink()
    run_study(parse_config(STUDY), output)
    assert (lora / "done.json").is_file() and (lora / "eval.json").is_file()
    assert (lora / "train.json").stat().st_mtime_ns == train_mtime  # not trained again
    assert (experiment / "full-s0" / "metrics.json").read_text() == full_metrics


def test_a_run_whose_weights_were_lost_is_trained_again_and_says_so(experiment):

    lora = experiment / "lora-r2-s0"
    assert "retrained_without_saved_weights" not in json.loads((lora / "train.json").read_text())
    for name in ("done.json", "metrics.json", "spectral.json"):  # interrupted after evaluating, moved without weights
        (lora / name).unlink()
    stale = {**json.loads((lora / "eval.json").read_text()), "measured_on_the_lost_model": True}
    (lora / "eval.json").write_text(json.dumps(stale))
    for tensors in (lora / "weights").glob("*.safetensors"):  # copied without its tensors: the configs stay
        tensors.unlink()
    assert (lora / "weights" / "adapter_config.json").is_file()
    run_study(parse_config(STUDY), experiment.parent)
    assert json.loads((lora / "train.json").read_text())["retrained_without_saved_weights"] is True
    assert "measured_on_the_lost_model" not in json.loads((lora / "eval.json").read_text())  # evaluated again
    assert (lora / "done.json").is_file() and (lora / "spectral.json").is_file()


def test_a_changed_config_is_refused_before_training(experiment):
    changed = {**STUDY, "methods": [{"kind": "full", "lr": 5e-4}]}
    before = sorted(p.name for p in experiment.iterdir())
    with pytest.raises(StudyMismatch, match="full-s0"):
        run_study(parse_config(changed), experiment.parent)
    assert sorted(p.name for p in experiment.iterdir()) == before


def test_intervention_at_lambda_one_is_the_tuned_model(experiment):
    result = CliRunner().invoke(app, ["intervene", str(experiment / "lora-r2-s0"), "--lambdas", "0,1"])
    assert result.exit_code == 0, result.output
    record = json.loads((experiment / "lora-r2-s0" / "intervene.json").read_text())
    rows = {(row["lambda"], row["directions"]): row for row in record["rows"]}
    assert list(rows) == [(0.0, "intruders"), (0.0, "control"), (1.0, "intruders"), (1.0, "control")]
    evaluation = json.loads((experiment / "lora-r2-s0" / "eval.json").read_text())
    for kind in ("intruders", "control"):
        assert rows[1.0, kind]["heldout_loss"] == pytest.approx(evaluation["forgetting"]["heldout_loss"], abs=1e-5)
        assert rows[1.0, kind]["pass@1"] == evaluation["suites"]["test"]["greedy"]["pass@1"]
        assert rows[0.0, kind]["scaled"] == rows[0.0, "intruders"]["intruders"]  # the control matches the count
        if rows[0.0, kind]["scaled"]:  # removing directions changes the model
            assert rows[0.0, kind]["heldout_loss"] != pytest.approx(rows[1.0, kind]["heldout_loss"], abs=1e-7)
    assert (experiment / "lora-r2-s0" / "intervene.png").stat().st_size > 1000


@pytest.mark.parametrize("args, message", [(["--lambdas", "a,b"], "--lambdas"), (["--lambdas", "-1"], "≥ 0")])
def test_intervention_arguments_are_checked(experiment, args, message):
    result = CliRunner().invoke(app, ["intervene", str(experiment / "lora-r2-s0"), *args])
    assert result.exit_code == 2 and message in result.output


def test_report_of_a_missing_folder_fails_clearly(tmp_path):
    result = CliRunner().invoke(app, ["report", str(tmp_path / "nope")])
    assert result.exit_code == 2
    assert "no such experiment folder" in result.output


def test_each_run_records_its_recipe_and_both_throughputs(experiment):
    train = json.loads((experiment / "lora-r2-s0" / "train.json").read_text())
    assert train["recipe"] == {
        "optimizer": "AdamW",
        "lr": train["lr"],
        "betas": [0.9, 0.95],
        "eps": 1e-8,
        "weight_decay": 0.0,
        "schedule": "cosine",
        "warmup_steps": 0,
        "warmup_ratio": 0.05,
        "steps": 4,
        "grad_clip": 1.0,
    }
    assert train["steady_skipped_steps"] == 2 and train["steady_tokens"] < train["tokens"]  # half of the 4 steps
    assert train["steady_tokens_per_s"] > 0 and train["tokens_per_s"] > 0
    metrics = json.loads((experiment / "lora-r2-s0" / "metrics.json").read_text())
    assert metrics["train"]["recipe"] == train["recipe"]


def test_fields_added_at_their_old_behaviour_keep_recorded_folders_resumable():
    from ftcompare.study import run_record

    def fingerprint_of(training):
        config = parse_config({**STUDY, "training": {**STUDY["training"], **training}})
        return run_record(expand_first(config), config)["fingerprint"]

    written_out = fingerprint_of({"adam_betas": [0.9, 0.95], "adam_eps": 1e-8})
    assert written_out == fingerprint_of({})  # as before the fields existed
    at_defaults = {"gradient_accumulation_steps": 1, "activation_checkpointing": False, "distributed": {"strategy": "fsdp2"}}
    assert fingerprint_of(at_defaults) == written_out
    assert fingerprint_of({"gradient_accumulation_steps": 2}) != written_out
    assert fingerprint_of({"adam_betas": [0.9, 0.999]}) != written_out
    assert fingerprint_of({"schedule": "linear", "warmup_ratio": 0.06}) != written_out
    assert fingerprint_of({"evaluate_all_lrs": False}) == written_out
    choosing = fingerprint_of({"select_lr_on": "ood"})
    assert fingerprint_of({"select_lr_on": "ood", "evaluate_all_lrs": True}) != choosing  # other results: not resumed


def test_the_control_of_the_causal_test_keeps_folders_recorded_before_it_resumable(monkeypatch):
    from ftcompare import study

    recorded = []  # what each run record fingerprints
    monkeypatch.setattr(study, "fingerprint", lambda value: recorded.append(value) or str(len(recorded)))
    for intervene in ({"lambdas": [0, 1]}, {"lambdas": [0, 1], "control": True}, {"lambdas": [0, 1], "control": False}):
        config = parse_config({**STUDY, "analyses": {**STUDY["analyses"], "intervene": intervene}})
        study.run_record(expand_first(config), config)
    default, explicit, without = (shared["analyses"]["intervene"] for _, shared in recorded)
    # as ftcompare wrote it before the field existed: a folder recorded then resumes under the default
    assert default == explicit == {"lambdas": [0.0, 1.0], "include_full": True, "runs": None}
    assert without == {**default, "control": False}
    recorded.clear()
    config = parse_config(STUDY)  # no causal test: the section stays null
    study.run_record(expand_first(config), config)
    assert recorded[0][1]["analyses"]["intervene"] is None


def test_silent_defaults_drop_top_level_and_dotted_keys_at_their_values_only():
    from ftcompare.study import without_silent_defaults

    silent = {"vllm": {"a": 1}, "lm_eval": None, "intervene.control": True}
    assert without_silent_defaults({"vllm": {"a": 1}, "lm_eval": None, "n": 2}, silent) == {"n": 2}  # a mapping dropped whole
    assert without_silent_defaults({"vllm": {"a": 2}, "lm_eval": {}}, silent) == {"vllm": {"a": 2}, "lm_eval": {}}
    assert without_silent_defaults({"intervene": {"control": True, "runs": None}}, silent) == {"intervene": {"runs": None}}
    assert without_silent_defaults({"intervene": {"control": False}}, silent) == {"intervene": {"control": False}}
    assert without_silent_defaults({"intervene": None}, silent) == {"intervene": None}


def expand_first(config):
    from ftcompare.matrix import expand

    return expand(config)[0]


def test_checking_a_folder_against_a_config_writes_nothing(tmp_path):
    from ftcompare.study import check_runs_match

    experiment = check_runs_match(parse_config(STUDY), tmp_path / "runs")
    assert experiment == tmp_path / "runs" / "e2e" and not (tmp_path / "runs").exists()


def test_the_static_caches_budget_at_its_default_keeps_folders_recorded_before_it_resumable(monkeypatch):
    from ftcompare import study

    recorded = []  # what each run record fingerprints
    monkeypatch.setattr(study, "fingerprint", lambda value: recorded.append(value) or str(len(recorded)))
    for budget in (None, 4096):
        config = parse_config(
            {**STUDY, "evaluation": {**STUDY["evaluation"], "backend": "static", "static_cache_tokens": budget}}
        )
        study.run_record(expand_first(config), config)
    default, set_ = (shared["evaluation"] for _, shared in recorded)
    assert "static_cache_tokens" not in default  # as before the field existed
    assert set_["static_cache_tokens"] == 4096


def _user_task(folder, test_asserts="assert f(1) == 1"):
    """A config on a JSONL task in `folder` (its data beside it), its path."""
    folder.mkdir(parents=True, exist_ok=True)
    problem = {"task_id": "p", "prompt": "def f(x):\n", "completion": "    return x\n"}
    (folder / "train.jsonl").write_text(json.dumps({**problem, "tests": ["assert f(2) == 2"]}) + "\n")
    (folder / "test.jsonl").write_text(json.dumps({**problem, "tests": [test_asserts]}) + "\n")
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump({**STUDY, "task": {"kind": "jsonl", "train": "train.jsonl", "test": "test.jsonl"}}))
    return path


def test_a_run_is_the_same_run_wherever_its_data_lies_and_another_when_the_data_changed(tmp_path, monkeypatch):
    from ftcompare.config import load_config
    from ftcompare.study import run_record

    def fingerprint_of(path):
        config = load_config(path)
        return run_record(expand_first(config), config)["fingerprint"]

    here = _user_task(tmp_path / "here")
    monkeypatch.chdir(tmp_path)
    by_relative_path = fingerprint_of(here.relative_to(tmp_path))  # as the CLI's driver loads it
    assert fingerprint_of(here) == by_relative_path  # as the Ray executor's slots load it: resolved
    assert fingerprint_of(_user_task(tmp_path / "elsewhere")) == by_relative_path  # the same data copied
    assert fingerprint_of(_user_task(tmp_path / "changed", "assert f(3) == 3")) != by_relative_path


def test_a_run_recorded_by_its_data_path_resumes_and_its_record_is_rewritten(tmp_path, monkeypatch):
    from ftcompare.config import fingerprint, load_config
    from ftcompare.runs.store import RunDir
    from ftcompare.study import bind_run_dir, fingerprinted, run_record

    config = load_config(_user_task(tmp_path / "study"))
    run = expand_first(config)
    run_dir = RunDir(tmp_path / "runs" / run.run_id)
    run_dir.path.mkdir(parents=True)
    (run_dir.path / "train.json").write_text("{}")  # not a stub: results another config made would be lost
    spec, shared = fingerprinted(run, config)
    by_path = {"run": spec, "fingerprint": fingerprint([spec, shared])}  # what ftcompare recorded before
    assert shared["task"]["test"] == str(tmp_path / "study" / "test.jsonl")
    (run_dir.path / "run.json").write_text(json.dumps(by_path))
    bind_run_dir(run, run_dir, config)
    assert json.loads((run_dir.path / "run.json").read_text()) == run_record(run, config) != by_path
    shared["task"]["test"] = "/another/machine/test.jsonl"  # recorded by another spelling: not this run, as before
    (run_dir.path / "run.json").write_text(json.dumps({"run": spec, "fingerprint": fingerprint([spec, shared])}))
    with pytest.raises(StudyMismatch, match=run.run_id):
        bind_run_dir(run, run_dir, config)


def test_a_data_folder_is_identified_by_its_files_and_a_missing_one_is_named(tmp_path):
    from ftcompare.schema import InputError
    from ftcompare.study import data_digest

    for name in ("a", "b"):
        (tmp_path / name / "sub").mkdir(parents=True)
        (tmp_path / name / "task.yaml").write_text("task: t\n")
        (tmp_path / name / "sub" / "data.jsonl").write_text("{}\n")
    assert data_digest(tmp_path / "a") == data_digest(tmp_path / "b") != data_digest(tmp_path / "a" / "task.yaml")
    (tmp_path / "b" / "sub" / "data.jsonl").write_text("{}\n{}\n")  # a file inside changed
    assert data_digest(tmp_path / "a") != data_digest(tmp_path / "b")
    (tmp_path / "b" / "sub" / "data.jsonl").rename(tmp_path / "b" / "sub" / "renamed.jsonl")
    (tmp_path / "b" / "sub" / "renamed.jsonl").write_text("{}\n")  # the same bytes under another name
    assert data_digest(tmp_path / "a") != data_digest(tmp_path / "b")
    with pytest.raises(InputError, match="missing.jsonl: cannot read it"):
        data_digest(tmp_path / "missing.jsonl")
