import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from ftcompare.cli import app
from ftcompare.config import parse_config
from ftcompare.data.suites import load_task
from ftcompare.data.tasks import finetune_examples, load_study_tasks
from ftcompare.study import run_study
from ftcompare.train.loop import IGNORE_INDEX
from tests.conftest import TINY_BUILTIN

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
pytestmark = pytest.mark.skipif(not (SHARED / "mbpp.jsonl").is_file(), reason="../shared/data is not beside the repository")


def _config(**overrides):
    return parse_config(
        {
            "experiment": "t",
            "methods": [{"kind": "full"}],
            "task": {"kind": "mbpp", "data": str(SHARED / "mbpp.jsonl"), "format": "austin3shot"},
            "extra_suites": [{"kind": "quixbugs", "data": str(SHARED / "quixbugs.jsonl")}],
            **overrides,
        }
    )


def test_mbpp_task_trains_on_train_and_evaluates_on_test_with_quixbugs_out_of_domain():
    config = _config()
    _, task = load_study_tasks(config)
    assert len(task.train) == 374 and len(task.suites["test"]) == 500 and len(task.suites["quixbugs"]) == 40
    assert all(p.completion.endswith("\n[DONE]") for p in task.train)
    assert task.suite_info("test").in_domain and task.suite_info("test").stop_strings == ("[DONE]",)
    assert task.suite_info("test").extraction == "auto"
    quix = task.suite_info("quixbugs")
    assert (quix.in_domain, quix.scoring, quix.extraction) == (False, "repair", "auto")


class _CharTokenizer:
    eos_token_id = 0

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [[ord(c) for c in text] for text in texts]}


def test_long_prompts_lose_their_start_not_their_target():
    task = load_task(_config().task)
    problem = min(task.train, key=lambda p: len(p.completion))
    target = [ord(c) for c in problem.completion] + [0]
    limit = len(target) + 50
    assert len(problem.prompt) > 50  # so the prompt really is cut
    ids, labels = finetune_examples([problem], _CharTokenizer(), max_length=limit)[0]
    assert len(ids) == limit and ids[-len(target) :] == target and ids[:50] == [ord(c) for c in problem.prompt[-50:]]
    assert labels[-len(target) :] == target and labels[:50] == [IGNORE_INDEX] * 50


def test_dry_run_of_the_mbpp_example_counts_the_cost_offline():
    example = Path(__file__).resolve().parents[2] / "examples" / "mbpp_lora_vs_full.yaml"
    result = CliRunner().invoke(app, ["run", str(example), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "lora-r64-s0" in result.output and "374" in result.output and "5940" in result.output


@pytest.mark.slow
def test_a_study_on_mbpp_and_quixbugs_runs_end_to_end(tmp_path, tiny_base, cache_dir, monkeypatch):
    monkeypatch.setenv("FTCOMPARE_CACHE", str(cache_dir))
    config = _config(
        base={"model": "builtin:tiny-code", "builtin": TINY_BUILTIN},
        training={"max_steps": 2, "batch_size": 2, "max_length": 256},
        evaluation={
            "n_samples": 0,
            "k": [1],
            "max_new_tokens": 8,
            "limit": 2,
            "timeout_s": 5,
            "forgetting": None,
            "latency": None,
            "robustness": {"s": 1, "perturbations": ["code_syntax", "function_name"]},
        },
        analyses={"spectral": None},
    )
    experiment = run_study(config, tmp_path)
    metrics = yaml.safe_load((experiment / "full-s0" / "metrics.json").read_text())
    # code_syntax renames variables of the target's code: MBPP's prompt shows none, so it is not applicable
    # (recorded, never scored as the unperturbed prompt); function_name perturbs both problems
    robustness = metrics["suites"]["test"]["robustness"]
    assert robustness["code_syntax"]["problems"] == 0 and robustness["code_syntax"]["robust_pass@1"] is None
    assert sorted(robustness["code_syntax"]["not_applicable"]) == ["mbpp/11", "mbpp/12"]
    assert robustness["function_name"]["problems"] == 2 and robustness["function_name"]["not_applicable"] == {}
    assert set(metrics["suites"]) == {"test", "quixbugs"}
    assert metrics["suites"]["test"]["in_domain"] and not metrics["suites"]["quixbugs"]["in_domain"]
    repair = metrics["suites"]["quixbugs"]["greedy"]
    assert {
        "pass@1",
        "token_f1",
        "line_edit_f1",
        "token_precision",
        "token_recall",
        "mean_reasoning_tokens",
        "seconds_per_problem",
    } <= set(repair)
    assert sum(repair["status_counts"].values()) == 2


def test_a_task_file_broken_after_the_config_loaded_still_fails_as_one_named_line(tmp_path):
    from ftcompare.schema import InputError

    problem = {"prompt": "def f(x):\n", "completion": "    return x\n", "tests": ["assert f(1) == 1"]}
    for name in ("train.jsonl", "test.jsonl"):
        (tmp_path / name).write_text(json.dumps(problem) + "\n")
    config = parse_config(
        {
            "experiment": "t",
            "methods": [{"kind": "full"}],
            "task": {"kind": "jsonl", "train": str(tmp_path / "train.jsonl"), "test": str(tmp_path / "test.jsonl")},
        }
    )
    assert len(load_task(config.task).train) == 1
    (tmp_path / "test.jsonl").write_text(json.dumps({**problem, "tests": "assert f(1) == 1"}) + "\n")
    with pytest.raises(InputError, match=r"test\.jsonl:1: tests: must be a list of assert statements, got one string"):
        load_task(config.task)


def test_a_jsonl_problem_is_checked_on_plain_data_like_every_suite(tmp_path):
    from ftcompare.data.problems import load_jsonl_problems
    from ftcompare.evaluate.sandbox import run_programs

    path = tmp_path / "test.jsonl"
    path.write_text(
        json.dumps(
            {
                "prompt": "def f(x):\n",
                "completion": "    return x + 1\n",
                "code_prefix": "def f(x):\n",
                "tests": ["assert f(1) == 2"],
            }
        )
        + "\n"
    )
    (problem,) = load_jsonl_problems(path, "test")
    always_equal = "    class Same:\n        __eq__ = lambda self, other: True\n    return Same()\n"
    right, wrong = run_programs([problem.program(problem.completion), problem.program(always_equal)], timeout_s=10, memory_mb=512)
    assert right.passed and right.checks["plain_data"] == 1
    assert not wrong.passed and "not plain data" in wrong.exception
