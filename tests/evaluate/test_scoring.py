import pytest

from ftcompare.data.codegen import generate_task
from ftcompare.evaluate import scoring
from ftcompare.evaluate.generation import Generation
from ftcompare.evaluate.scoring import SandboxSettings, execute_records, pass_at_k_table, sample_records

SETTINGS = SandboxSettings(timeout_s=3, memory_mb=256, workers=2)


def _records(passes: dict[str, list[bool]]) -> list[dict]:
    return [{"task_id": task, "passed": p} for task, values in passes.items() for p in values]


def test_pass_at_k_table_averages_the_unbiased_estimator_over_problems():
    table = pass_at_k_table(_records({"a": [True, False, False, False], "b": [False] * 4}), [1, 2, 4])
    assert table["pass@1"] == pytest.approx((1 / 4 + 0) / 2)
    assert table["pass@2"] == pytest.approx((1 - 3 / 6 + 0) / 2)  # 1 - C(3,2)/C(4,2)
    assert table["pass@4"] == pytest.approx(0.5)


def test_pass_at_k_table_gives_each_means_stderr_and_every_problems_own_score():
    table = pass_at_k_table(_records({"a": [True, True], "b": [True, False], "c": [False, False]}), [1, 2])
    assert table["per_problem_pass@1"] == {"a": 1.0, "b": 0.5, "c": 0.0}
    assert table["stderr"]["pass@1"] == pytest.approx(0.5 / 3**0.5)  # sample sd 0.5 over √3 problems
    assert table["stderr"]["pass@2"] == pytest.approx(1 / 3)  # per problem 1, 1, 0: sd √(1/3), over √3


def test_pass_at_k_table_skips_k_beyond_the_samples():
    table = pass_at_k_table(_records({"a": [True]}), [1, 5])
    assert {key for key in table if key.startswith("pass@")} == {"pass@1"} and set(table["stderr"]) == {"pass@1"}


def test_reference_completions_pass_and_wrong_ones_fail():
    problems = generate_task(seed=0, n_train=1, n_test=3, n_ood=0).suites["test"]
    generations = [[Generation(p.completion, 5, False), Generation("    return None\n", 4, False)] for p in problems]
    scored = execute_records(sample_records(problems, generations, suite="test", mode="sampled"), SETTINGS)
    assert [r["passed"] for r in scored] == [True, False] * 3
    assert {r["status"] for r in scored[1::2]} == {"failed"}
    table = pass_at_k_table(scored, [1, 2])
    assert (table["pass@1"], table["pass@2"]) == (0.5, 1.0)


def test_each_distinct_program_runs_once(monkeypatch):
    calls = []
    real = scoring.run_programs

    def counting(sources, **kwargs):
        calls.append(list(sources))
        return real(sources, **kwargs)

    monkeypatch.setattr(scoring, "run_programs", counting)
    problem = generate_task(seed=0, n_train=1, n_test=1, n_ood=0).suites["test"][0]
    generations = [[Generation(problem.completion, 5, False)] * 4 + [Generation("    return 0\n", 3, False)]]
    scored = execute_records(sample_records([problem], generations, suite="test", mode="sampled"), SETTINGS)
    assert len(calls) == 1 and len(calls[0]) == 2
    assert [r["passed"] for r in scored] == [True] * 4 + [False]


def test_a_truncated_completion_code_is_extracted_before_running():
    problem = generate_task(seed=0, n_train=1, n_test=1, n_ood=0).suites["test"][0]
    text = problem.completion + "def junk(:\n"  # a broken top-level line after the body is cut away
    (record,) = execute_records(sample_records([problem], [[Generation(text, 9, True)]], suite="test", mode="greedy"), SETTINGS)
    assert record["passed"] and record["hit_budget"]


def test_each_record_says_how_its_tests_were_checked():
    problem = generate_task(seed=0, n_train=1, n_test=1, n_ood=0).suites["test"][0]
    always_equal = "    class Same:\n        __eq__ = lambda self, other: True\n    return Same()\n"
    generations = [[Generation(problem.completion, 5, False), Generation(always_equal, 9, False)]]
    right, cheat = execute_records(sample_records([problem], generations, suite="test", mode="sampled"), SETTINGS)
    assert right["passed"] and right["checks"] == {"tests": "split", "plain_data": 3, "in_process": 0}
    assert not cheat["passed"] and "not plain data" in cheat["exception"]
    assert right["isolation"] in ("bubblewrap", "fallback")
