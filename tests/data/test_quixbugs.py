import ast
import json
import time
from pathlib import Path

import pytest

from ftcompare.data.problems import TESTS_MARKER
from ftcompare.data.quixbugs import (
    QuixBugsProgram,
    excluded_programs,
    first_failing_check,
    load_quixbugs,
    to_problem,
)
from ftcompare.evaluate.sandbox import run_programs

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
QUIXBUGS = DATA / "quixbugs.jsonl"
needs_data = pytest.mark.skipif(not QUIXBUGS.is_file(), reason=f"QuixBugs data not found at {QUIXBUGS}")

GRAPH_PROGRAMS = {
    "breadth_first_search",
    "depth_first_search",
    "detect_cycle",
    "minimum_spanning_tree",
    "reverse_linked_list",
    "shortest_path_length",
    "shortest_path_lengths",
    "shortest_paths",
    "topological_ordering",
}
NODE_FREE_GRAPH_PROGRAMS = {"minimum_spanning_tree", "shortest_path_lengths", "shortest_paths"}
LOOPING_BUGGY = {"bitcount", "sqrt"}  # their buggy versions never return on the first case


@pytest.fixture(scope="module")
def programs() -> dict[str, QuixBugsProgram]:
    return {program.name: program for program in load_quixbugs(QUIXBUGS)}


@needs_data
def test_every_program_loads_with_a_harness(programs):
    assert len(programs) == 40
    assert {n for n, p in programs.items() if p.harness_kind == "graph"} == GRAPH_PROGRAMS
    assert excluded_programs(list(programs.values())) == {}
    for program in programs.values():
        assert program.checks
        if program.cases:  # one assert per JSON case the pytest test does not skip
            assert len(program.checks) == len(program.cases) - len(program.skipped_cases)
    # graph checks: one per pytest test function, in file order
    assert [c.splitlines()[-1] for c in programs["detect_cycle"].checks] == [f"test{i}()" for i in range(1, 7)]
    assert "class Node" in programs["detect_cycle"].setup and "node5 = Node(5, node4)" in programs["detect_cycle"].setup
    assert programs["shortest_paths"].setup == ""


@needs_data
def test_comparisons_follow_the_pytest_test_cases(programs):
    rules = {name: p.comparison for name, p in programs.items() if p.comparison not in ("==", "graph")}
    assert rules == {"flatten": "list", "kheapsort": "list", "hanoi": "tuples", "sqrt": "approx"}
    assert all(c.startswith("assert list(flatten(") for c in programs["flatten"].checks)
    assert programs["sqrt"].checks[0] == "assert abs(sqrt(2, 0.01) - 1.4166666666666665) <= 0.01"
    for check in programs["hanoi"].checks:
        expected = ast.literal_eval(check.rsplit(" == ", 1)[1])
        assert all(isinstance(move, tuple) for move in expected)
    assert programs["gcd"].checks[0] == "assert gcd(17, 0) == 17"


@needs_data
def test_cases_skipped_upstream_are_listed_not_checked(programs):
    skipped = {name: p.skipped_cases for name, p in programs.items() if p.skipped_cases}
    assert set(skipped) == {"knapsack", "levenshtein"}
    ((index, reason),) = skipped["knapsack"]
    assert "--runslow" in reason
    assert programs["knapsack"].cases[index][0][0] == 6404180
    assert not any("6404180" in check for check in programs["knapsack"].checks)


@needs_data
def test_a_pytest_text_unlike_its_rule_is_rejected(tmp_path):
    record = json.loads(QUIXBUGS.read_text().splitlines()[0])
    assert record["name"] == "bitcount"
    record["pytest_testcase"] = record["pytest_testcase"].replace("assert bitcount(", "assert sorted(bitcount(") + ")"
    path = tmp_path / "quixbugs.jsonl"
    path.write_text(json.dumps(record) + "\n")
    with pytest.raises(ValueError, match=r"quixbugs.jsonl:1: .*bitcount"):
        load_quixbugs(path, DATA / "quixbugs_support.json")


@needs_data
def test_graph_programs_without_node_are_excluded_explicitly(programs, tmp_path):
    loaded = load_quixbugs(QUIXBUGS, support=tmp_path / "missing.json")
    excluded = excluded_programs(loaded)
    assert set(excluded) == GRAPH_PROGRAMS - NODE_FREE_GRAPH_PROGRAMS
    assert all("node.py" in reason for reason in excluded.values())
    detect_cycle = next(p for p in loaded if p.name == "detect_cycle")
    with pytest.raises(ValueError, match="excluded"):
        to_problem(detect_cycle)


@needs_data
def test_correct_programs_pass_and_buggy_programs_fail(programs):
    problems = [to_problem(p) for p in programs.values()]
    # 10 s for the correct ones: upstream's levenshtein('rosettacode', ...) case alone takes ~2 s of CPU
    correct = run_programs([q.program(q.completion) for q in problems], timeout_s=10, memory_mb=512, workers=2)
    assert {q.entry_point: r.status for q, r in zip(problems, correct) if not r.passed} == {}
    started = time.monotonic()
    buggy = run_programs([q.program(q.meta["buggy"]) for q in problems], timeout_s=3, memory_mb=512, workers=2)
    elapsed_s = time.monotonic() - started
    statuses = {q.entry_point: r.status for q, r in zip(problems, buggy)}
    assert not any(r.passed for r in buggy)
    assert {name for name, status in statuses.items() if status == "timeout"} == LOOPING_BUGGY
    assert set(statuses.values()) <= {"failed", "timeout"}
    assert elapsed_s < 40  # two 3 s timeouts among 40 short runs, two at a time


@needs_data
def test_problem_assembly(programs):
    gcd = programs["gcd"]
    problem = to_problem(gcd)
    assert problem.task_id == "quixbugs/gcd" and problem.entry_point == "gcd"
    assert problem.completion == gcd.correct and problem.code_prefix == ""
    assert problem.tests == gcd.checks and problem.setup == ""
    assert problem.meta == {
        "name": "gcd",
        "buggy": gcd.buggy,
        "correct": gcd.correct,
        "harness_kind": "json",
        "skipped_cases": [],
    }
    assert gcd.buggy.strip("\n") in problem.prompt
    assert problem.program(gcd.correct) == gcd.correct + "\n\n" + TESTS_MARKER + "\n\n" + "\n".join(gcd.checks) + "\n"
    graph = to_problem(programs["detect_cycle"])
    assert graph.program("X").startswith(f"X\n\n{TESTS_MARKER}\n\nclass Node:")


@needs_data
def test_failing_test_hint_names_the_first_failing_check(programs):
    gcd = programs["gcd"]
    # gcd(17, 0) == 17 holds for the buggy gcd too; gcd(13, 13) recurses without end
    assert first_failing_check(gcd, timeout_s=3) == ("assert gcd(13, 13) == 13", "failed")
    prompt = to_problem(gcd, include_failing_test=True).prompt
    assert prompt.endswith("\nIt fails this check:\n```python\nassert gcd(13, 13) == 13\n```\n")
    prompt = to_problem(programs["bitcount"], include_failing_test=True, timeout_s=1).prompt
    assert prompt.endswith("\nThis check does not finish within 1 s:\n```python\nassert bitcount(127) == 7\n```\n")


def test_prompt_rendering_golden():
    program = QuixBugsProgram(
        name="add",
        buggy='\ndef add(a, b):\n    return a - b\n\n"""\nAdd\n"""\n',
        correct="def add(a, b):\n    return a + b\n",
        cases=(([1, 2], 3),),
        harness_kind="json",
        checks=("assert add(1, 2) == 3",),
    )
    assert to_problem(program).prompt == (
        "The following Python program has a bug. Fix it, changing as little as possible, and reply with the "
        "complete corrected program.\n"
        "\n"
        "```python\n"
        "def add(a, b):\n"
        "    return a - b\n"
        "\n"
        '"""\n'
        "Add\n"
        '"""\n'
        "```\n"
    )
    with pytest.raises(ValueError, match="prompt_style"):
        to_problem(program, prompt_style="chat")


def test_a_program_without_checks_must_be_excluded():
    with pytest.raises(ValueError, match="excluded"):
        QuixBugsProgram(name="x", buggy="", correct="", cases=(), harness_kind="graph", checks=())
