"""Experiment tracking: each run of a study is a TensorBoard run named by its run id, with its config as
hyperparameters, its training log step by step and its final metrics; a resumed run logs no step twice, a
finished one nothing; a tracker that is unknown or not installed fails at load."""

import json
from pathlib import Path

import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2
from typer.testing import CliRunner

import ftcompare.study
import ftcompare.train.stage
from ftcompare.cli import app
from ftcompare.config import parse_config
from ftcompare.console import console
from ftcompare.runs import tracking
from ftcompare.runs.store import read_json, read_jsonl
from ftcompare.schema import ConfigError
from ftcompare.study import run_study
from tests.conftest import TINY_BUILTIN

STUDY = {
    "experiment": "tracked",
    "base": {"model": "builtin:tiny-code", "builtin": TINY_BUILTIN},
    "task": {"kind": "generated", "n_train": 16, "n_test": 2, "n_ood": 0},
    "methods": [{"kind": "full", "lr": 1e-3}, {"kind": "lora", "rank": 2, "lr": 1e-3}],
    "training": {"max_steps": 3, "batch_size": 4, "log_every": 2},  # logged at steps 2 and 3 (the last)
    "evaluation": {
        "n_samples": 0,
        "k": [1],
        "max_new_tokens": 4,
        "forgetting": {"n_chunks": 2, "chunk_tokens": 32},
        "latency": {"batch_size": 2, "new_tokens": 2, "repeats": 1},
    },
    "analyses": {"spectral": {"k": 2, "epsilons": [0.5]}},
    "tracking": {"trackers": ["tensorboard"]},
}
# one run, a log record at every step, nothing measured but pass@1: for the resume and the switched-off cases
ONE_RUN = {
    **STUDY,
    "methods": [{"kind": "lora", "rank": 2, "lr": 1e-3}],
    "training": {"max_steps": 4, "batch_size": 4, "log_every": 1},
    "evaluation": {"n_samples": 0, "k": [1], "max_new_tokens": 4, "forgetting": None, "latency": None},
    "analyses": {"spectral": None},
}


def scalars(run_folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series TensorBoard shows for a run folder, as (step, value) pairs in the order read."""
    events = EventAccumulator(str(run_folder), size_guidance={"scalars": 0})  # 0: keep every point
    events.Reload()
    return {tag: [(point.step, point.value) for point in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def hyperparameters(run_folder: Path) -> list[dict]:
    """The hyperparameter sessions recorded for a run (accelerate writes each in a sub-folder of the run's)."""
    sessions = []
    for folder in sorted(p for p in run_folder.iterdir() if p.is_dir() and any(p.glob("events.*"))):
        events = EventAccumulator(str(folder))
        events.Reload()
        data = plugin_data_pb2.HParamsPluginData.FromString(events.PluginTagToContent("hparams")["_hparams_/session_start_info"])
        sessions.append({k: v.string_value or v.number_value for k, v in data.session_start_info.hparams.items()})
    return sessions


@pytest.fixture(scope="module")
def experiment(tmp_path_factory, tiny_base, cache_dir) -> Path:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FTCOMPARE_CACHE", str(cache_dir))
        return run_study(parse_config(STUDY), tmp_path_factory.mktemp("runs"))


@pytest.mark.slow
def test_each_run_is_a_tensorboard_run_named_by_its_run_id_with_its_config(experiment):
    folder = experiment / "_tracking"
    assert sorted(p.name for p in folder.iterdir()) == ["full-s0", "lora-r2-s0"]
    for run_id, method in (("full-s0", "full"), ("lora-r2-s0", "lora")):
        (session,) = hyperparameters(folder / run_id)
        assert session["run/run_id"] == run_id and session["run/method"] == method
        assert session["config/experiment"] == "tracked" and session["config/training/max_steps"] == 3
    assert session["run/rank"] == 2 and session["config/methods/1/kind"] == "lora"
    recorded = read_json(experiment / "study.json")["tracking"]
    assert recorded == {"trackers": ["tensorboard"], "project": "tracked", "dir": str(folder)}


@pytest.mark.slow
def test_the_training_log_is_logged_at_every_logging_step(experiment):
    for run_id in ("full-s0", "lora-r2-s0"):
        log = read_jsonl(experiment / run_id / "train_log.jsonl")
        assert [record["step"] for record in log] == [2, 3]
        series = scalars(experiment / "_tracking" / run_id)
        for name in ("loss", "lr", "grad_norm", "tokens_per_s", "peak_memory_mb"):
            expected = [(record["step"], pytest.approx(record[name], rel=1e-6)) for record in log]
            assert series[f"train/{name}"] == expected, name
        assert all(record["grad_norm"] > 0 for record in log)


@pytest.mark.slow
def test_the_final_metrics_are_logged_at_the_last_step(experiment):
    for run_id in ("full-s0", "lora-r2-s0"):
        metrics = read_json(experiment / run_id / "metrics.json")
        series = scalars(experiment / "_tracking" / run_id)
        final = {tag: points for tag, points in series.items() if tag.startswith("final/")}
        assert all(points == [(3, points[0][1])] for points in final.values())  # one point each, at the last step
        for name, value in (
            ("suites/test/greedy/pass_at_1", metrics["suites"]["test"]["greedy"]["pass@1"]),
            ("forgetting/heldout_loss", metrics["forgetting"]["heldout_loss"]),
            ("latency/merged_tokens_per_s", metrics["latency"]["merged_tokens_per_s"]),
            ("spectral/total_intruders", metrics["spectral"]["total_intruders"]),
            ("train/final_loss", metrics["train"]["final_loss"]),
        ):
            assert final[f"final/{name}"][0][1] == pytest.approx(value, rel=1e-6), name
        assert "final/rank" not in final and not any("per_problem" in tag for tag in final)  # parameters, per-sample


@pytest.mark.slow
def test_a_finished_study_run_again_logs_nothing(experiment):
    before = sorted(p for p in (experiment / "_tracking").rglob("*") if p.is_file())
    run_study(parse_config(STUDY), experiment.parent)
    assert sorted(p for p in (experiment / "_tracking").rglob("*") if p.is_file()) == before


class Stop(Exception):
    """A session killed mid-stage."""


@pytest.mark.slow
def test_a_resumed_run_logs_each_step_and_its_final_metrics_once(tmp_path, tiny_base, monkeypatch):
    config = parse_config(ONE_RUN)
    train = ftcompare.train.stage.train

    def stopped_after_two_steps(*args, on_step, **kwargs):
        def step(number, loss):
            if number == 2:
                raise Stop
            on_step(number, loss)

        return train(*args, on_step=step, **kwargs)

    def stopped_while_evaluating(*args, **kwargs):
        raise Stop

    with monkeypatch.context() as patch:  # killed in training after logging two steps: trained again from the start
        patch.setattr(ftcompare.train.stage, "train", stopped_after_two_steps)
        with pytest.raises(Stop):
            run_study(config, tmp_path)
    run = tmp_path / "tracked" / "lora-r2-s0"
    folder = tmp_path / "tracked" / "_tracking" / "lora-r2-s0"
    assert [step for step, _ in scalars(folder)["train/loss"]] == [1, 2]
    with monkeypatch.context() as patch:  # killed while evaluating: the training is reused, not logged again
        patch.setattr(ftcompare.study, "evaluate_stage", stopped_while_evaluating)
        with pytest.raises(Stop):
            run_study(config, tmp_path)
    trained = run.joinpath("train_log.jsonl").read_text()
    run_study(config, tmp_path)
    assert run.joinpath("train_log.jsonl").read_text() == trained and (run / "done.json").is_file()
    series = scalars(folder)
    log = read_jsonl(run / "train_log.jsonl")
    assert series["train/loss"] == [(r["step"], pytest.approx(r["loss"], rel=1e-6)) for r in log]  # steps 1-4, once each
    assert [step for step, _ in series["final/suites/test/greedy/pass_at_1"]] == [4]


@pytest.mark.slow
def test_tracking_switched_off_writes_nothing(tmp_path, tiny_base):
    experiment = run_study(parse_config({**ONE_RUN, "training": {"max_steps": 1}, "tracking": {"trackers": []}}), tmp_path)
    assert (experiment / "lora-r2-s0" / "done.json").is_file() and not (experiment / "_tracking").exists()
    assert read_json(experiment / "study.json")["tracking"] == "none (tracking.trackers: [])"


def test_an_unknown_tracker_fails_at_load_naming_the_field():
    with pytest.raises(ConfigError, match=r"tracking\.trackers\.0: .*'tensorboard', 'mlflow' or 'wandb'"):
        parse_config({**STUDY, "tracking": {"trackers": ["tensorbored"]}})


def test_a_named_tracker_that_is_not_installed_is_one_line_naming_the_package(tmp_path, monkeypatch):
    monkeypatch.setattr(tracking, "tracker_installed", lambda name: name != "mlflow")
    with pytest.raises(ConfigError, match=r"tracking\.trackers: mlflow is not installed: pip install mlflow"):
        parse_config({**STUDY, "tracking": {"trackers": ["tensorboard", "mlflow"]}})
    (tmp_path / "study.yaml").write_text(yaml.safe_dump({**STUDY, "tracking": {"trackers": ["mlflow"]}}))
    result = CliRunner().invoke(app, ["run", str(tmp_path / "study.yaml"), "--dry-run"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    (error,) = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert "tracking.trackers: mlflow is not installed: pip install mlflow" in error


def test_the_default_is_tensorboard_when_installed_and_none_said_loudly_when_not(tmp_path, monkeypatch):
    config = parse_config({**STUDY, "tracking": {}})
    with console.capture() as said:
        assert tracking.announce_tracking(config, tmp_path, console)["trackers"] == ["tensorboard"]
    assert f"tensorboard --logdir {tmp_path / '_tracking'}" in said.get()
    monkeypatch.setattr(tracking, "tracker_installed", lambda name: False)
    with console.capture() as said:
        assert tracking.announce_tracking(config, tmp_path, console) == "none (tensorboard not installed)"
    (line,) = said.get().strip().splitlines()
    assert line.startswith("warning: tracking: none (tensorboard not installed)") and "ftcompare[tracking]" in line


def test_final_scalars_are_the_numbers_of_the_summary_under_names_every_tracker_takes():
    metrics = {
        "run_id": "lora-r2-s0",
        "rank": 2,
        "merged_for_evaluation": True,
        "suites": {"ints/test": {"greedy": {"pass@1": 0.5, "per_problem_pass@1": {"ints/test/0": 1.0}, "in_domain": True}}},
        "sequence": {"pass@1": [[0.0, 0.5]]},
    }
    assert tracking.final_scalars(metrics, {"run_id", "rank"}) == {
        "final/suites/ints/test/greedy/pass_at_1": 0.5,
        "final/sequence/pass_at_1/0/0": 0.0,
        "final/sequence/pass_at_1/0/1": 0.5,
    }


def test_training_records_carry_the_gradient_norm_to_the_tracker(tmp_path):
    from ftcompare.train.loop import TrainSettings, epoch_batches, train
    from tests.helpers import copy_examples, tiny_llama

    heard = []
    batches = epoch_batches(copy_examples(), batch_size=8, pad_id=0, max_length=8, seed=0)
    settings = TrainSettings(lr=1e-2, steps=4, log_every=2, grad_clip=None)  # measured without clipping too
    train(tiny_llama(), batches, settings, log_path=tmp_path / "log.jsonl", on_log=heard.append)
    assert heard == [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in heard] == [2, 4] and all(r["grad_norm"] > 0 for r in heard)
