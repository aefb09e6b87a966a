import gzip
import json
import math
import re

import pytest
from typer.testing import CliRunner

from ftcompare.cli import app
from ftcompare.evaluate.rescore import RecordsDisagree, rescore_experiment, rescored_suites
from ftcompare.evaluate.scoring import pass_at_k_table
from ftcompare.runs.store import write_json, write_jsonl


def _records(suite: str, mode: str, verdicts: dict[str, list[bool]]) -> list[dict]:
    return [
        {"suite": suite, "mode": mode, "task_id": task, "passed": passed}
        for task, outcomes in verdicts.items()
        for passed in outcomes
    ]


# greedy: 2 of 4 problems pass; sampled (n=3): problem a passes 2 of 3, b 0 of 3
RECORDS = _records("test", "greedy", {"a": [True], "b": [False], "c": [True], "d": [False]}) + _records(
    "test", "sampled", {"a": [True, False, True], "b": [False, False, False]}
)
# what an older ftcompare stored: the means only
OLD_SUITES = {
    "test": {
        "greedy": {"pass@1": 0.5, "problems": 4, "mean_new_tokens": 12.0},
        "sampled": {"pass@1": 1 / 3, "pass@3": 0.5, "n": 3},
        "in_domain": True,
    },
    "ood": {"greedy": {"pass@1": 0.25}},
}  # no records for this suite: kept as it is


def test_rescoring_adds_standard_errors_and_per_problem_scores_and_keeps_the_rest():
    suites = rescored_suites(OLD_SUITES, RECORDS)
    greedy = suites["test"]["greedy"]
    assert greedy["pass@1"] == 0.5 and greedy["mean_new_tokens"] == 12.0 and greedy["problems"] == 4
    assert greedy["stderr"]["pass@1"] == pytest.approx(math.sqrt(1 / 3 / 4))  # sd of (1,0,1,0) over √4
    assert greedy["per_problem_pass@1"] == {"a": 1.0, "b": 0.0, "c": 1.0, "d": 0.0}
    sampled = suites["test"]["sampled"]
    assert set(sampled["stderr"]) == {"pass@1", "pass@3"}  # the k it already reported, no more
    assert sampled["per_problem_pass@1"] == {"a": pytest.approx(2 / 3), "b": 0.0}
    assert suites["test"]["in_domain"] is True and suites["ood"] == OLD_SUITES["ood"]


def test_records_that_give_another_pass_rate_are_refused_naming_the_suite():
    disagreeing = {"test": {"greedy": {"pass@1": 0.75}}}
    with pytest.raises(RecordsDisagree, match=r"test greedy pass@1: the metrics say 0.75, the per-sample records give 0.5"):
        rescored_suites(disagreeing, RECORDS)


def _experiment(tmp_path, suites: dict) -> tuple:
    experiment = tmp_path / "study"
    base, run, unevaluated = experiment / "_base", experiment / "lora-r4-s0", experiment / "lora-r4-x10-s0"
    write_json(base / "eval.json", {"suites": OLD_SUITES})  # evaluated, its samples not kept
    write_json(run / "eval.json", {"suites": suites, "forgetting": {"increase": 0.1}})
    write_json(run / "metrics.json", {"run_id": "lora-r4-s0", "suites": suites})
    write_jsonl(run / "samples.jsonl", RECORDS)
    write_json(unevaluated / "selection.json", {"greedy": {"pass@1": 0.0}})
    return experiment, run


def test_an_experiment_is_rescored_run_by_run_in_both_files(tmp_path):
    experiment, run = _experiment(tmp_path, OLD_SUITES)
    outcomes = {o.run_id: o.outcome for o in rescore_experiment(experiment)}
    assert outcomes == {"_base": "no per-sample records", "lora-r4-s0": "rescored", "lora-r4-x10-s0": "no evaluation"}
    assert not any(o.refused for o in rescore_experiment(experiment))  # rescoring again changes nothing
    for name in ("eval.json", "metrics.json"):
        payload = json.loads((run / name).read_text())
        assert payload["suites"]["test"]["greedy"]["per_problem_pass@1"]["c"] == 1.0, name
    assert json.loads((run / "eval.json").read_text())["forgetting"] == {"increase": 0.1}


def test_a_run_whose_records_disagree_is_left_as_it_was_and_the_command_fails(tmp_path):
    experiment, run = _experiment(tmp_path, {"test": {"greedy": {"pass@1": 0.75}}})
    before = {name: (run / name).read_bytes() for name in ("eval.json", "metrics.json")}
    assert [o.run_id for o in rescore_experiment(experiment) if o.refused] == ["lora-r4-s0"]
    result = CliRunner().invoke(app, ["rescore", str(experiment)])
    assert result.exit_code == 1
    assert "lora-r4-s0: left as it was: test greedy pass@1" in result.output
    assert {name: (run / name).read_bytes() for name in before} == before


def test_rescoring_a_missing_folder_says_so(tmp_path):
    result = CliRunner().invoke(app, ["rescore", str(tmp_path / "nowhere")])
    assert result.exit_code != 0 and "no experiment folder" in result.output


# what the current ftcompare stores: the means and every problem's own score
CURRENT_SUITES = rescored_suites(OLD_SUITES, RECORDS)


def _swap_verdicts(records, a, b):
    """Problem a gets b's verdicts and b gets a's: every mean stays the same."""
    verdicts = {task: [r["passed"] for r in records if r["task_id"] == task and r["mode"] == "greedy"] for task in (a, b)}
    swapped, seen = [], {a: 0, b: 0}
    for record in records:
        task = record["task_id"]
        if record["mode"] == "greedy" and task in seen:
            other = b if task == a else a
            record = {**record, "passed": verdicts[other][seen[task]]}
            seen[task] += 1
        swapped.append(record)
    return swapped


def _rotate_ids(records, mode):
    order = sorted({r["task_id"] for r in records if r["mode"] == mode})
    shift = dict(zip(order, order[1:] + order[:1]))
    return [{**r, "task_id": shift[r["task_id"]]} if r["mode"] == mode else r for r in records]


@pytest.mark.parametrize(
    "records, message",
    [
        (
            _swap_verdicts(RECORDS, "a", "b"),
            "test greedy per-problem pass@1 of 'a': the metrics say 1.0, the per-sample records give 0.0",
        ),
        (_rotate_ids(RECORDS, "greedy"), "test greedy per-problem pass@1 of 'a'"),
        ([{**r, "task_id": r["task_id"].upper()} for r in RECORDS], "test greedy: the task ids differ"),
        ([r for r in RECORDS if r["task_id"] != "d"] + [{**RECORDS[3], "task_id": "e"}], "test greedy: the task ids differ"),
    ],
)
def test_records_with_the_same_means_but_other_problems_are_refused(records, message):
    assert pass_at_k_table([r for r in records if r["mode"] == "greedy"], [1])["pass@1"] == 0.5  # the mean alone agrees
    with pytest.raises(RecordsDisagree, match=re.escape(message)):
        rescored_suites(CURRENT_SUITES, records)


def test_without_stored_per_problem_scores_the_problem_count_and_samples_are_checked():
    halved = [r for r in RECORDS if r["task_id"] in ("a", "b")]  # greedy 1 of 2 passes: the same mean as 2 of 4
    with pytest.raises(RecordsDisagree, match="test greedy: the metrics count 4 problems, the records 2"):
        rescored_suites(OLD_SUITES, halved)
    with pytest.raises(RecordsDisagree, match="the metrics say 2 samples per problem, the records hold 6 samples of 2"):
        rescored_suites({"test": {"sampled": {"pass@1": 1 / 3, "n": 2}}}, RECORDS)


def test_ids_rotated_in_one_mode_only_show_as_two_prompts_for_one_id():
    records = [{**r, "prompt": f"prompt of {r['task_id']}"} for r in RECORDS]
    with pytest.raises(RecordsDisagree, match="test: task id 'b' is recorded with two different prompts"):
        rescored_suites(
            OLD_SUITES, [{**r, "task_id": {"a": "b", "b": "a"}[r["task_id"]]} if r["mode"] == "sampled" else r for r in records]
        )


def test_the_cli_refuses_swapped_verdicts_and_leaves_the_run_as_it_was(tmp_path):
    experiment, run = _experiment(tmp_path, CURRENT_SUITES)
    write_jsonl(run / "samples.jsonl", _swap_verdicts(RECORDS, "a", "b"))
    before = {name: (run / name).read_bytes() for name in ("eval.json", "metrics.json")}
    result = CliRunner().invoke(app, ["rescore", str(experiment)])
    assert result.exit_code == 1 and "lora-r4-s0: left as it was: test greedy per-problem pass@1 of 'a'" in result.output
    assert {name: (run / name).read_bytes() for name in before} == before


def test_committed_records_with_gzipped_samples_are_rescored_as_they_are(tmp_path):
    experiment, run = _experiment(tmp_path, OLD_SUITES)
    samples = run / "samples.jsonl"
    (run / "samples.jsonl.gz").write_bytes(gzip.compress(samples.read_bytes()))
    samples.unlink()
    outcomes = {o.run_id: o.outcome for o in rescore_experiment(experiment)}
    assert outcomes["lora-r4-s0"] == "rescored"
    assert json.loads((run / "metrics.json").read_text())["suites"] == CURRENT_SUITES
