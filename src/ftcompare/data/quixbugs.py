"""QuixBugs (Python): 40 small programs with one bug each, as program-repair problems.

The data is read from the shared files at run time (never copied here): `quixbugs.jsonl`, one program a
line with its buggy and correct source, JSON test cases and the text of its upstream pytest test case,
and `quixbugs_support.json`, which holds upstream's `node.py` (the `Node` class the graph tests build).

Each program gets a harness of plain Python, run after the candidate program in the sandbox:

- "json" programs (31): one assert per JSON case, comparing `NAME(*args)` with the expected output as
  the program's pytest test case does. Most tests use `==`; the exceptions are in COMPARISON_RULES, and
  load_quixbugs checks each rule against the pytest text, so an upstream change cannot go unnoticed.
  Cases the pytest test skips (too slow to pass) are left out and listed in `skipped_cases`.
- "graph" programs (9, no JSON cases): the pytest test case itself, translated: imports and the
  correct/buggy import switch dropped, its module-level fixtures (graphs of `Node`s) kept as setup, and
  each `testN` function become one check, `def testN(): ...` then `testN()`, run in file order as
  pytest runs them (detect_cycle's tests share and mutate module-level nodes).

A program that cannot be harnessed is kept with `excluded` set to the reason (see excluded_programs).
Time limits: every correct program passes its harness in under 3 s, but levenshtein's takes ~2 s of CPU
(upstream's 'rosettacode' case), so score with a timeout of 5 s or more; buggy bitcount and sqrt never end.
"""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from ftcompare.data.problems import Problem, SuiteInfo
from ftcompare.data.suites import SuiteSettings, register_benchmark, register_suite
from ftcompare.schema import existing_file

HARNESS_KINDS = ("json", "graph")

# How a program's pytest test compares output with the expected value, where it is not
# `assert NAME(*input_data) == expected` ("=="). Checked against each pytest text at load.
COMPARISON_RULES = {
    # test_flatten: flatten is a generator; the test compares list(flatten(*input_data)) == expected
    "flatten": "list",
    # test_kheapsort: kheapsort is a generator too, materialised the same way
    "kheapsort": "list",
    # test_hanoi: JSON stores each move as a list; the test turns the expected moves into tuples first
    "hanoi": "tuples",
    # test_sqrt: == pytest.approx(expected, abs=input_data[-1]): the epsilon argument is an absolute
    # tolerance and no relative one applies (approx with abs= only), i.e. |actual - expected| <= epsilon
    "sqrt": "approx",
}

# The assert each rule expects in `test_NAME`, and any rewriting of `testdata` it expects at module level.
_RULE_ASSERTS = {
    "==": "assert {name}(*input_data) == expected",
    "list": "assert list({name}(*input_data)) == expected",
    "tuples": "assert {name}(*input_data) == expected",
    "approx": "assert {name}(*input_data) == pytest.approx(expected, abs=input_data[-1])",
}
_LOAD_TESTDATA = "testdata = load_json_testcases({name}.__name__)"
_TUPLES_TESTDATA = "testdata = [[inp, [tuple(x) for x in out]] for inp, out in testdata]"

PROMPT_STYLES = {
    "repair": (
        "The following Python program has a bug. Fix it, changing as little as possible, and reply with "
        "the complete corrected program.\n\n```python\n{buggy}\n```\n{hint}"
    ),
}
_HINT = {
    "failed": "\nIt fails this check:\n```python\n{check}\n```\n",
    "timeout": "\nThis check does not finish within {timeout_s:g} s:\n```python\n{check}\n```\n",
}


@dataclass(frozen=True)
class QuixBugsProgram:
    """One QuixBugs program and its harness.

    cases: the JSON cases as (args, expected) (empty for graph programs), skipped ones included.
    checks: the harness, one Python snippet a check, run in order after `setup`; empty if excluded.
    setup: code the checks need, run after the candidate program (the Node class, graph fixtures).
    comparison: the rule of COMPARISON_RULES ("==" by default; "graph" for graph programs).
    skipped_cases: (index into cases, reason) of cases the pytest test skips, which have no check.
    excluded: why the program has no harness, or None.
    """

    name: str
    buggy: str
    correct: str
    cases: tuple[tuple[list, object], ...]
    harness_kind: str
    checks: tuple[str, ...]
    setup: str = ""
    comparison: str = "=="
    skipped_cases: tuple[tuple[int, str], ...] = ()
    excluded: str | None = None

    def __post_init__(self) -> None:
        if self.harness_kind not in HARNESS_KINDS:
            raise ValueError(f"{self.name}: harness_kind must be one of {HARNESS_KINDS}, got {self.harness_kind!r}")
        if not self.checks and self.excluded is None:
            raise ValueError(f"{self.name}: a program without checks must say why it is excluded")


def load_quixbugs(path: Path, support: Path | None = None) -> list[QuixBugsProgram]:
    """Every program of quixbugs.jsonl at `path`, in file order, each with its harness.

    support: quixbugs_support.json (for node.py); by default the file of that name beside `path`. Graph
    programs whose tests need `Node` are marked excluded if it cannot be found.
    Raises ValueError (naming the file, line and program) if a record or its pytest text is not as expected.
    """
    path = Path(path)
    support = Path(support) if support is not None else path.with_name("quixbugs_support.json")
    node_source = json.loads(support.read_text())["node.py"] if support.is_file() else None
    programs = []
    for line_number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            programs.append(_program(record, node_source))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, SyntaxError) as error:
            raise ValueError(f"{path}:{line_number}: not a QuixBugs record as expected ({error})") from None
    if not programs:
        raise ValueError(f"{path}: no programs")
    return programs


def excluded_programs(programs: list[QuixBugsProgram]) -> dict[str, str]:
    """{name: reason} of the programs that have no harness."""
    return {p.name: p.excluded for p in programs if p.excluded is not None}


def to_problem(
    program: QuixBugsProgram,
    *,
    prompt_style: str = "repair",
    include_failing_test: bool = False,
    timeout_s: float = 3.0,
    memory_mb: int = 512,
) -> Problem:
    """The repair problem: the prompt shows the buggy program (and, with include_failing_test, the first
    check it fails, found by running it in the sandbox with timeout_s and memory_mb); the completion is
    the correct program, a whole program (code_prefix is empty); setup and tests are the harness."""
    if program.excluded is not None:
        raise ValueError(f"{program.name} is excluded: {program.excluded}")
    if prompt_style not in PROMPT_STYLES:
        raise ValueError(f"prompt_style must be one of {sorted(PROMPT_STYLES)}, got {prompt_style!r}")
    hint = ""
    if include_failing_test:
        failing = first_failing_check(program, timeout_s=timeout_s, memory_mb=memory_mb)
        if failing is not None:
            check, status = failing
            hint = _HINT["timeout" if status == "timeout" else "failed"].format(check=check, timeout_s=timeout_s)
    prompt = PROMPT_STYLES[prompt_style].format(buggy=program.buggy.strip("\n"), hint=hint)
    return Problem(
        task_id=f"quixbugs/{program.name}",
        prompt=prompt,
        completion=program.correct,
        tests=program.checks,
        entry_point=program.name,
        family="quixbugs",
        code_prefix="",
        setup=program.setup,
        meta={
            "name": program.name,
            "buggy": program.buggy,
            "correct": program.correct,
            "harness_kind": program.harness_kind,
            "skipped_cases": [list(case) for case in program.skipped_cases],
        },
    )


def first_failing_check(program: QuixBugsProgram, *, timeout_s: float = 3.0, memory_mb: int = 512) -> tuple[str, str] | None:
    """(the first check the buggy program does not pass, the sandbox status) or None if it passes all.

    Runs the buggy program with the first 1, 2, ... checks until a run does not pass, so a check that
    depends on the ones before it (shared fixtures) sees the same state as in the full harness."""
    from ftcompare.evaluate.sandbox import run_program  # here: data loading needs no sandbox otherwise

    for count in range(1, len(program.checks) + 1):
        source = Problem(
            task_id=program.name,
            prompt="",
            completion="",
            tests=program.checks[:count],
            entry_point=program.name,
            setup=program.setup,
        ).program(program.buggy)
        result = run_program(source, timeout_s=timeout_s, memory_mb=memory_mb)
        if not result.passed:
            return program.checks[count - 1], result.status
    return None


# ---- building the harness from a record -------------------------------------------------------------


def _program(record: dict, node_source: str | None) -> QuixBugsProgram:
    name = record["name"]
    cases = tuple((list(args), expected) for args, expected in record["tests"] or ())
    common = {"name": name, "buggy": record["buggy_program"], "correct": record["correct_program"], "cases": cases}
    if cases:
        if record.get("needs_custom_harness"):
            raise ValueError(f"{name}: has JSON cases yet needs_custom_harness")
        return _json_program(common, record["pytest_testcase"])
    return _graph_program(common, record["pytest_testcase"], node_source)


def _json_program(common: dict, pytest_text: str) -> QuixBugsProgram:
    name, cases = common["name"], common["cases"]
    rule = COMPARISON_RULES.get(name, "==")
    test_function, skips = _check_json_test_case(name, rule, ast.parse(pytest_text))
    skipped = []
    for condition, reason in skips:
        matching = [i for i, (args, _) in enumerate(cases) if args == condition]
        if len(matching) != 1:
            raise ValueError(f"{name}: the case that {test_function} skips matches {len(matching)} JSON cases")
        skipped.append((matching[0], reason))
    skipped_indices = {index for index, _ in skipped}
    checks = tuple(
        _json_check(name, rule, args, expected) for i, (args, expected) in enumerate(cases) if i not in skipped_indices
    )
    return QuixBugsProgram(**common, harness_kind="json", checks=checks, comparison=rule, skipped_cases=tuple(skipped))


def _json_check(name: str, rule: str, args: list, expected: object) -> str:
    call = f"{name}({', '.join(repr(arg) for arg in args)})"
    if rule == "list":
        return f"assert list({call}) == {expected!r}"
    if rule == "tuples":
        return f"assert {call} == {[tuple(move) for move in expected]!r}"
    if rule == "approx":
        return f"assert abs({call} - {expected!r}) <= {args[-1]!r}"
    return f"assert {call} == {expected!r}"


def _check_json_test_case(name: str, rule: str, module: ast.Module) -> tuple[str, list[tuple[list, str]]]:
    """Check that the pytest text compares outputs as `rule` says; return the test function's name and the
    cases it skips, as (input_data it skips, reason)."""
    expected_assert = _dump(_RULE_ASSERTS[rule].format(name=name))
    allowed_assignments = {_dump(_LOAD_TESTDATA.format(name=name))}
    if rule == "tuples":
        allowed_assignments.add(_dump(_TUPLES_TESTDATA))
    functions, assignments = [], set()
    for statement in module.body:
        if isinstance(statement, ast.FunctionDef):
            functions.append(statement)
        elif isinstance(statement, ast.Assign):
            assignments.add(ast.dump(statement))
    if assignments != allowed_assignments:
        raise ValueError(f"{name}: the pytest test case prepares testdata unlike rule {rule!r}")
    if len(functions) != 1:
        raise ValueError(f"{name}: expected one test function in the pytest test case, found {len(functions)}")
    *skips, last = functions[0].body
    if ast.dump(last) != expected_assert:
        raise ValueError(f"{name}: the pytest test compares unlike rule {rule!r}: {ast.unparse(last)}")
    return functions[0].name, [_skipped_input(name, statement) for statement in skips]


def _skipped_input(name: str, statement: ast.stmt) -> tuple[list, str]:
    """(input_data, reason) of `if ... input_data == LITERAL ...: pytest.skip(REASON)`."""
    if not (
        isinstance(statement, ast.If)
        and len(statement.body) == 1
        and not statement.orelse
        and ast.unparse(statement.body[0]).startswith("pytest.skip(")
    ):
        raise ValueError(f"{name}: unexpected statement in the test function: {ast.unparse(statement)}")
    literal = None
    for node in ast.walk(statement.test):
        if (
            isinstance(node, ast.Compare)
            and ast.unparse(node.left) == "input_data"
            and isinstance(node.ops[0], ast.Eq)
            and len(node.ops) == 1
        ):
            literal = ast.literal_eval(node.comparators[0])
    if literal is None:
        raise ValueError(f"{name}: cannot tell which case is skipped: {ast.unparse(statement.test)}")
    reason = ast.literal_eval(statement.body[0].value.args[0])
    if "run_slow" in ast.unparse(statement.test):
        reason += " (upstream runs it only with --runslow)"
    return literal, f"skipped upstream: {reason}"


def _graph_program(common: dict, pytest_text: str, node_source: str | None) -> QuixBugsProgram:
    module = ast.parse(pytest_text)
    fixtures, checks, needs_node = [], [], False
    for statement in module.body:
        if isinstance(statement, (ast.Import, ast.ImportFrom)):
            needs_node |= isinstance(statement, ast.ImportFrom) and statement.module == "node"
        elif isinstance(statement, ast.If) and ast.unparse(statement.test) == "pytest.use_correct":
            continue  # imports the correct or the buggy program: here the candidate comes first instead
        elif isinstance(statement, ast.FunctionDef) and statement.name.startswith("test"):
            if statement.decorator_list or statement.args.args:
                return _excluded(common, f"{statement.name} is parametrized or takes fixtures")
            checks.append(f"{ast.get_source_segment(pytest_text, statement)}\n{statement.name}()")
        else:
            fixtures.append(ast.get_source_segment(pytest_text, statement))
    harness = "\n".join(fixtures + checks)
    if any(isinstance(node, ast.Name) and node.id == "pytest" for node in ast.walk(ast.parse(harness))):
        return _excluded(common, "its test uses pytest beyond plain asserts")
    if not checks:
        return _excluded(common, "its pytest test case has no test functions")
    if needs_node and node_source is None:
        return _excluded(common, "its tests build Node graphs and node.py (quixbugs_support.json) was not found")
    setup = "\n\n".join(part for part in [node_source.strip("\n") if needs_node else "", "\n".join(fixtures)] if part)
    return QuixBugsProgram(**common, harness_kind="graph", checks=tuple(checks), setup=setup, comparison="graph")


def _excluded(common: dict, reason: str) -> QuixBugsProgram:
    return QuixBugsProgram(**common, harness_kind="graph", checks=(), comparison="graph", excluded=reason)


def _dump(source: str) -> str:
    return ast.dump(ast.parse(source).body[0])


@register_suite
class QuixBugsSuite(SuiteSettings):
    """QuixBugs program repair (Lin et al. 2017) as an evaluation suite: pass@k of the repaired program and token
    F1 of the fix against the reference fix."""

    kind: Literal["quixbugs"] = Field(default="quixbugs", description="Selects this suite: QuixBugs program repair.")
    name: str = Field(default="quixbugs", description="The suite's name in records and reports.")
    data: Path = Field(description="quixbugs.jsonl (relative paths: from the config's folder).")
    support: Path | None = Field(
        default=None,
        description="quixbugs_support.json (the Node class of the graph programs); None: the file of that name beside `data`.",
    )
    include_failing_test: bool = Field(default=False, description="Show the first check the buggy program fails in the prompt.")

    _files = field_validator("data", "support")(existing_file)

    def load(self, tokenizer=None) -> tuple[tuple[Problem, ...], SuiteInfo]:
        programs = [p for p in load_quixbugs(self.data, self.support) if p.excluded is None]
        problems = tuple(to_problem(p, include_failing_test=self.include_failing_test) for p in programs)
        return problems, SuiteInfo(in_domain=self.in_domain, extraction="auto", scoring="repair")

    def count(self) -> int:
        return sum(p.excluded is None for p in load_quixbugs(self.data, self.support))

    @classmethod
    def reference_problems(cls, data: Path | None) -> tuple[list[Problem], dict[str, str]]:
        """Every harnessed program with its correct version (and its buggy one in `meta["buggy"]`), and the
        programs left out with why."""
        if data is None:
            raise ValueError("quixbugs: give the path to quixbugs.jsonl (quixbugs_support.json beside it)")
        programs = load_quixbugs(data)
        excluded = excluded_programs(programs)
        return [to_problem(p) for p in programs if p.name not in excluded], excluded


register_benchmark("quixbugs", QuixBugsSuite)
