"""MBPP: loading, splits, the three prompt formats (golden strings), Problem assembly, EvalPlus extra tests,
the hub fallback, and the reference solutions run through the sandbox.

The real data is read from the `shared` folder beside the repository root, never copied here; the golden
strings quote tasks 2, 3, 4 and 11 of MBPP (CC BY 4.0, Austin et al. 2021, Google Research), as
lm-evaluation-harness's own `lm_eval/tasks/mbpp/utils.py` does.
"""

import ast
import json
import sys
import types
import warnings
from pathlib import Path

import pytest

from ftcompare.data.mbpp import (
    AUSTIN_FEW_SHOT_IDS,
    HUB_DATASET,
    MBPP_SPLITS,
    PROMPT_FORMATS,
    MbppRecord,
    called_function,
    extra_tests_from_evalplus,
    load_mbpp,
    render_prompt,
    split,
    stop_sequences,
    to_problem,
    with_extra_tests,
)
from ftcompare.data.problems import TESTS_MARKER
from ftcompare.evaluate.sandbox import run_programs
from tests.helpers import chat_tokenizer

DATA = Path(__file__).parents[2] / ".." / "shared" / "data"
FULL_PATH = DATA / "mbpp.jsonl"
SANITIZED_PATH = DATA / "sanitized-mbpp.json"

# The reference solution of task 123 (sum of amicable numbers up to 9999, quadratic) takes about 5 s alone
# and over 10 s beside other runs on a 2-core machine: correct, but too slow for a 10 s limit under load.
SLOW_REFERENCE_IDS = {123}


@pytest.fixture(scope="module")
def full():
    if not FULL_PATH.exists():
        pytest.skip(f"MBPP data not found at {FULL_PATH.resolve()} (the shared folder beside the repository)")
    return load_mbpp(FULL_PATH)


@pytest.fixture(scope="module")
def sanitized():
    if not SANITIZED_PATH.exists():
        pytest.skip(f"sanitized MBPP not found at {SANITIZED_PATH.resolve()} (the shared folder beside the repository)")
    return load_mbpp(SANITIZED_PATH, sanitized=True)


def by_id(records):
    return {record.task_id: record for record in records}


def record(
    task_id=7,
    text="Write a function to add two numbers.",
    tests=None,
    setup="",
    source="mbpp",
    code="def add(a, b):\n    return a + b",
):
    tests = tests or ("assert add(1, 2) == 3", "assert add(0, 0) == 0", "assert add(-1, 1) == 0")
    return MbppRecord(task_id, text, code, tuple(tests), setup, (), source)


# ---- loading and splits -----------------------------------------------------------------------------------


def test_full_set_splits_have_the_standard_sizes(full):
    assert len(full) == 974 and [r.task_id for r in full] == list(range(1, 975))
    sizes = {name: len(split(full, name)) for name in MBPP_SPLITS}
    assert sizes == {"prompt": 10, "test": 500, "validation": 90, "train": 374}
    assert [r.task_id for r in split(full, "test")][:2] == [11, 12]
    assert all(r.source == "mbpp" for r in full)


def test_sanitized_subset_splits_keep_the_ranges(sanitized):
    assert len(sanitized) == 427
    sizes = {name: len(split(sanitized, name)) for name in MBPP_SPLITS}
    # the hub's "sanitized" config has the same split sizes
    assert sizes == {"prompt": 7, "test": 257, "validation": 43, "train": 120}
    assert all(r.source == "mbpp-sanitized" and r.challenge_test_list == () for r in sanitized)


def test_unknown_split_is_refused(full):
    with pytest.raises(ValueError, match="unknown MBPP split 'dev'"):
        split(full, "dev")


def test_line_ends_are_normalised(full):
    assert not any("\r" in r.code or "\r" in r.test_setup_code for r in full)
    assert by_id(full)[2].code == (
        "def similar_elements(test_tup1, test_tup2):\n  res = tuple(set(test_tup1) & set(test_tup2))\n  return (res) "
    )
    assert by_id(full)[104].code.endswith("return result\n")  # one of four that ended in a lone CR


def test_sanitized_record_fields(sanitized):
    task = by_id(sanitized)[82]
    assert task.text.startswith("Write a function to find the volume of a sphere")  # the `prompt` field
    assert task.test_setup_code == "import math"  # test_imports, joined by newlines
    assert task.test_list[0].startswith("assert math.isclose(volume_sphere(10)")


def test_file_formats_and_errors(tmp_path):
    row = {
        "task_id": 5,
        "text": "t",
        "code": "x = 1\r\ny = 2\r",
        "test_list": ["assert x == 1"],
        "test_setup_code": "",
        "challenge_test_list": ["assert y == 2"],
    }
    jsonl = tmp_path / "mini.jsonl"
    jsonl.write_text(json.dumps({**row, "task_id": 9}) + "\n\n" + json.dumps(row) + "\n")
    loaded = load_mbpp(jsonl)
    assert [r.task_id for r in loaded] == [5, 9]
    assert loaded[0] == MbppRecord(5, "t", "x = 1\ny = 2\n", ("assert x == 1",), "", ("assert y == 2",), "mbpp")

    sanitized_row = {
        "source_file": "f",
        "task_id": 3,
        "prompt": "p",
        "code": "z = 0",
        "test_imports": ["import math", "import re"],
        "test_list": ["assert z == 0"],
    }
    array = tmp_path / "mini.json"
    array.write_text(json.dumps([sanitized_row]))
    assert load_mbpp(array, sanitized=True) == [
        MbppRecord(3, "p", "z = 0", ("assert z == 0",), "import math\nimport re", (), "mbpp-sanitized")
    ]
    with pytest.raises(ValueError, match=r"mini.json: item 0: .*lacks text.*load it with sanitized=True"):
        load_mbpp(array)
    with pytest.raises(ValueError, match=r"mini.jsonl:1: .*lacks prompt.*without sanitized=True"):
        load_mbpp(jsonl, sanitized=True)

    duplicate = tmp_path / "duplicate.jsonl"
    duplicate.write_text(json.dumps(row) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(ValueError, match="duplicate task_id"):
        load_mbpp(duplicate)
    not_a_list = tmp_path / "string.jsonl"
    not_a_list.write_text(json.dumps({**row, "test_list": "assert x == 1"}) + "\n")
    with pytest.raises(ValueError, match="string.jsonl:1: test_list must be a list of strings"):
        load_mbpp(not_a_list)
    broken = tmp_path / "broken.jsonl"
    broken.write_text("{not json\n")
    with pytest.raises(ValueError, match="broken.jsonl: not JSON"):
        load_mbpp(broken)


# ---- the hub, an optional dependency ------------------------------------------------------------------------


def test_missing_datasets_package_gives_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # `import datasets` now raises ImportError
    with pytest.raises(RuntimeError, match=r"needs the `datasets` package: pip install datasets.*--data PATH"):
        load_mbpp()


def test_hub_failure_offline_gives_a_clear_error(monkeypatch):
    def load_dataset(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    with pytest.raises(
        RuntimeError,
        match=r"could not load google-research-datasets/mbpp \(full\).*no network"
        r".*--data PATH",
    ):
        load_mbpp()


def test_hub_sanitized_config_maps_its_prompt_field(monkeypatch):
    calls = []

    def load_dataset(path, name):
        calls.append((path, name))
        row = {"source_file": "f", "prompt": "p", "code": "a = 1\r\n", "test_imports": [], "test_list": ["assert a"]}
        return {"test": [{**row, "task_id": 12}], "prompt": [{**row, "task_id": 2}]}

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    records = load_mbpp(sanitized=True)
    assert calls == [(HUB_DATASET, "sanitized")]
    assert [(r.task_id, r.text, r.code, r.source) for r in records] == [
        (2, "p", "a = 1\n", "mbpp-sanitized"),
        (12, "p", "a = 1\n", "mbpp-sanitized"),
    ]


# ---- prompt formats: golden strings -------------------------------------------------------------------------

EXPERT = "You are an expert Python programmer, and here is your task: "


def test_austin3shot_golden_on_hand_made_records():
    shot = record(
        task_id=2,
        text="Write a function to negate x.",
        code="def neg(x):\n    return -x",
        tests=("assert neg(1) == -1", "assert neg(0) == 0", "assert neg(-2) == 2"),
    )
    prompt = render_prompt(record(), "austin3shot", few_shot=[shot])
    assert prompt == (
        EXPERT + "Write a function to negate x. Your code should pass these tests:\n\n"
        "assert neg(1) == -1\nassert neg(0) == 0\nassert neg(-2) == 2\n[BEGIN]\n"
        "def neg(x):\r\n    return -x\n[DONE]\n\n"
        + EXPERT
        + "Write a function to add two numbers. Your code should pass these tests:\n\n"
        "assert add(1, 2) == 3\nassert add(0, 0) == 0\nassert add(-1, 1) == 0\n[BEGIN]\n"
    )
    # a sanitized few-shot record shows its code as its file has it, with "\n" line ends
    sanitized_shot = replace_source(shot, "mbpp-sanitized")
    assert "def neg(x):\n    return -x\n[DONE]" in render_prompt(record(), "austin3shot", few_shot=[sanitized_shot])


def replace_source(rec, source):
    return MbppRecord(rec.task_id, rec.text, rec.code, rec.test_list, rec.test_setup_code, rec.challenge_test_list, source)


def test_austin3shot_golden_on_task_11_matches_lm_eval(full):
    """The prompt lm-evaluation-harness builds for its `mbpp` task on the first test problem."""
    records = by_id(full)
    prompt = render_prompt(records[11], "austin3shot", few_shot=[records[i] for i in AUSTIN_FEW_SHOT_IDS])
    assert prompt == (
        EXPERT + "Write a function to find the similar elements from the given two tuple lists. "
        "Your code should pass these tests:\n\n"
        "assert similar_elements((3, 4, 5, 6),(5, 7, 4, 10)) == (4, 5)\n"
        "assert similar_elements((1, 2, 3, 4),(5, 4, 3, 7)) == (3, 4)\n"
        "assert similar_elements((11, 12, 14, 13),(17, 15, 14, 13)) == (13, 14)\n[BEGIN]\n"
        "def similar_elements(test_tup1, test_tup2):\r\n  res = tuple(set(test_tup1) & set(test_tup2))\r\n"
        "  return (res) \n[DONE]\n\n"
        + EXPERT
        + "Write a python function to identify non-prime numbers. Your code should pass these tests:\n\n"
        "assert is_not_prime(2) == False\nassert is_not_prime(10) == True\nassert is_not_prime(35) == True\n"
        "[BEGIN]\nimport math\r\ndef is_not_prime(n):\r\n    result = False\r\n"
        "    for i in range(2,int(math.sqrt(n)) + 1):\r\n        if n % i == 0:\r\n            result = True\r\n"
        "    return result\n[DONE]\n\n"
        + EXPERT
        + "Write a function to find the largest integers from a given list of numbers using heap queue "
        "algorithm. Your code should pass these tests:\n\n"
        "assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],3)==[85, 75, 65] \n"
        "assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],2)==[85, 75] \n"
        "assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],5)==[85, 75, 65, 58, 35]\n[BEGIN]\n"
        "import heapq as hq\r\ndef heap_queue_largest(nums,n):\r\n  largest_nums = hq.nlargest(n, nums)\r\n"
        "  return largest_nums\n[DONE]\n\n"
        + EXPERT
        + "Write a python function to remove first and last occurrence of a given character from the "
        "string. Your code should pass these tests:\n\n"
        'assert remove_Occ("hello","l") == "heo"\nassert remove_Occ("abcda","a") == "bcd"\n'
        'assert remove_Occ("PHP","P") == "H"\n[BEGIN]\n'
    )


def test_austin3shot_refuses_bad_few_shot():
    with pytest.raises(ValueError, match="needs few_shot"):
        render_prompt(record(), "austin3shot")
    with pytest.raises(ValueError, match="among its own few-shot"):
        render_prompt(record(), "austin3shot", few_shot=[record()])
    with pytest.raises(ValueError, match="shows three tests, it has 2"):
        render_prompt(
            record(tests=("assert add(1, 2) == 3", "assert add(0, 0) == 0")), "austin3shot", few_shot=[record(task_id=2)]
        )


ADD_INSTRUCTION = (
    "Write a function to add two numbers.\nYour code should pass these tests:\n\n"
    "assert add(1, 2) == 3\nassert add(0, 0) == 0\nassert add(-1, 1) == 0\n\nWrite the Python function."
)
TASK_11_INSTRUCTION = (
    "Write a python function to remove first and last occurrence of a given character from the string.\n"
    'Your code should pass these tests:\n\nassert remove_Occ("hello","l") == "heo"\n'
    'assert remove_Occ("abcda","a") == "bcd"\nassert remove_Occ("PHP","P") == "H"\n\nWrite the Python function.'
)


def test_zeroshot_golden(full):
    assert render_prompt(record(), "zeroshot") == ADD_INSTRUCTION + "\n"
    assert render_prompt(by_id(full)[11], "zeroshot") == TASK_11_INSTRUCTION + "\n"
    # at most three tests are shown, as in austin3shot
    many = record(tests=tuple(f"assert add({i}, 0) == {i}" for i in range(5)))
    assert "assert add(2, 0) == 2\n\nWrite" in render_prompt(many, "zeroshot")
    with pytest.raises(ValueError, match="takes no few-shot"):
        render_prompt(record(), "zeroshot", few_shot=[record(task_id=2)])


def test_chat_golden(full):
    tokenizer = chat_tokenizer()
    assert render_prompt(record(), "chat", tokenizer=tokenizer) == ("<|user|>\n" + ADD_INSTRUCTION + "<|end|>\n<|assistant|>\n")
    assert render_prompt(by_id(full)[11], "chat", tokenizer=tokenizer) == (
        "<|user|>\n" + TASK_11_INSTRUCTION + "<|end|>\n<|assistant|>\n"
    )
    with pytest.raises(ValueError, match="needs a tokenizer"):
        render_prompt(record(), "chat")
    with pytest.raises(ValueError, match="unknown MBPP prompt format 'fewshot'"):
        render_prompt(record(), "fewshot")


def test_stop_sequences():
    assert {fmt: stop_sequences(fmt) for fmt in PROMPT_FORMATS} == {
        "austin3shot": ("[DONE]",),
        "zeroshot": ("\nassert", "\nprint(", "\nif __name__"),
        "chat": (),
    }
    with pytest.raises(ValueError, match="unknown MBPP prompt format"):
        stop_sequences("fewshot")


def test_the_project_extractor_finds_the_code_of_each_format():
    """What a model writes in each format, cut where generation stops, yields the code it wrote."""
    from ftcompare.evaluate.extraction import extract_code

    code = "import math\ndef add(a, b):\n    return a + b"
    completions = {
        "austin3shot": code + "\n[DONE]",  # generation stops once "[DONE]" is produced
        "zeroshot": code + "\n\n\nassert",  # ... once a top-level assert starts
        "chat": "Here you go:\n\n```python\n" + code + "\n```\n\nIt adds a and b.",
    }
    for fmt, completion in completions.items():
        assert any(completion.endswith(stop) for stop in stop_sequences(fmt)) or fmt == "chat"
        assert extract_code(completion, style="auto").code == code + "\n", fmt


# ---- records as Problems ------------------------------------------------------------------------------------


def test_to_problem_assembles_solution_then_setup_then_asserts():
    rec = record(
        setup="root = make()",
        code="def make():\n    return 3\ndef add(a, b):\n    return a + b",
        tests=("assert add(root, 1) == 4", "assert add(0, 0) == 0", "assert add(1, 1) == 2"),
    )
    problem = to_problem(rec, "zeroshot")
    assert problem.task_id == "mbpp/7" and problem.family == "mbpp" and problem.code_prefix == ""
    assert problem.prompt == render_prompt(rec, "zeroshot")
    assert problem.completion == rec.code and problem.tests == rec.test_list
    assert problem.setup == "root = make()"
    assert problem.entry_point == "add"
    assert problem.meta == {"task_id": 7, "source": "mbpp", "format": "zeroshot"}
    assert problem.program(problem.completion) == (
        "def make():\n    return 3\ndef add(a, b):\n    return a + b\n\n"
        f"{TESTS_MARKER}\n\nroot = make()\n\n"  # the sandbox runs setup and tests after the program
        "assert add(root, 1) == 4\nassert add(0, 0) == 0\nassert add(1, 1) == 2\n"
    )


def test_to_problem_sanitized_setup_is_its_test_imports(sanitized):
    problem = to_problem(by_id(sanitized)[82], "zeroshot")
    assert problem.task_id == "mbpp-sanitized/82" and problem.setup == "import math"
    assert problem.entry_point == "volume_sphere"
    program = problem.program(problem.completion)
    assert program.index("def volume_sphere") < program.index("import math\n\nassert") < program.index("assert")


def test_called_function():
    assert called_function("assert add(1, 2) == 3") == "add"
    assert called_function("assert set(similar_elements((3, 4), (4, 5))) == set((4,))") == "similar_elements"
    assert called_function("assert math.isclose(volume_sphere(10), 4188.79, rel_tol=0.001)") == "volume_sphere"
    assert called_function("assert sum(10,15) == 6") == "sum"  # MBPP task 126 names its function `sum`
    with pytest.raises(ValueError, match="no function is called"):
        called_function("assert x == 1")
    with pytest.raises(ValueError, match="not Python"):
        called_function("assert f(")


def test_entry_points_of_every_real_record_are_defined_by_its_reference(full, sanitized):
    for rec in full + sanitized:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SyntaxWarning)  # some references use invalid escapes like "\d"
            warnings.simplefilter("ignore", DeprecationWarning)
            tree = ast.parse(rec.code)
        defined = {node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
        assert to_problem(rec, "zeroshot").entry_point in defined, (rec.source, rec.task_id)


def test_reference_solutions_of_the_first_30_test_problems_pass(full):
    problems = [to_problem(rec, "zeroshot") for rec in split(full, "test")[:30]]
    results = run_programs([p.program(p.completion) for p in problems], timeout_s=10, memory_mb=1024, workers=2)
    failures = [(p.task_id, r.status, r.exception) for p, r in zip(problems, results) if not r.passed]
    assert failures == []


@pytest.mark.slow
def test_reference_solutions_of_every_test_problem_pass(full, sanitized):
    problems = [
        to_problem(rec, "zeroshot")
        for rec in split(full, "test") + split(sanitized, "test")
        if rec.task_id not in SLOW_REFERENCE_IDS
    ]
    results = run_programs([p.program(p.completion) for p in problems], timeout_s=10, memory_mb=1024, workers=2)
    failures = [(p.task_id, r.status, r.exception) for p, r in zip(problems, results) if not r.passed]
    assert failures == []


# ---- EvalPlus (MBPP+) extra tests ---------------------------------------------------------------------------

EVALPLUS_ROWS = [
    {
        "task_id": "Mbpp/7",
        "prompt": '"""\nWrite a function to add two numbers.\nassert add(1, 2) == 3\n"""\n',
        "entry_point": "add",
        "canonical_solution": "def add(a, b):\n    return a + b\n",
        "base_input": [[1, 2], [0, 0]],
        "plus_input": [[10, -3], [[1], [2]]],
        "atol": 0,
        "assertion": "assert add(1, 2) == 3",
    },
    {
        "task_id": "Mbpp/8",
        "prompt": '"""\nWrite a function for the area of a circle.\n"""\n',
        "entry_point": "area",
        "canonical_solution": "import math\ndef area(r):\n    return math.pi * r * r\n",
        "base_input": [[1.0]],
        "plus_input": [[2.5], [0.0]],
        "atol": 0,
        "assertion": "",
    },
]


def test_evalplus_extra_tests(tmp_path):
    path = tmp_path / "MbppPlus.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in EVALPLUS_ROWS))
    extra = extra_tests_from_evalplus(path)
    assert sorted(extra) == [7, 8] and all(len(tests) == 1 for tests in extra.values())

    add = with_extra_tests(to_problem(record(), "zeroshot"), extra[7])
    assert add.tests[:3] == record().test_list and add.meta["extra_tests"] == 1
    area = with_extra_tests(
        to_problem(
            record(task_id=8, tests=("assert area(0) == 0",) * 3, code="def area(r):\n    return 3.14159265 * r * r"), "zeroshot"
        ),
        extra[8],
    )
    candidates = {
        "add right": (add, "def add(a, b):\n    return a + b"),
        "add wrong on a plus input only": (add, "def add(a, b):\n    return a + b if a < 5 else 0"),
        "area within 1e-6": (area, area.completion),
        "area off by 1e-3": (area, "def area(r):\n    return 3.1416 * r * r"),
        "area as an int": (area, "def area(r):\n    return round(3.14159265 * r * r)"),
    }
    results = run_programs(
        [problem.program(code) for problem, code in candidates.values()], timeout_s=10, memory_mb=1024, workers=2
    )
    verdicts = {name: (result.status, result.exception) for name, result in zip(candidates, results)}
    assert verdicts["add right"] == ("passed", None)
    assert verdicts["add wrong on a plus input only"][0] == "failed"
    assert "MBPP+ input 2: got 0, expected 7" in verdicts["add wrong on a plus input only"][1]
    assert verdicts["area within 1e-6"] == ("passed", None)
    assert verdicts["area off by 1e-3"][0] == "failed"
    assert verdicts["area as an int"][0] == "failed"  # a float is expected: an int is never close


def test_evalplus_canonical_solution_that_raises_fails_loudly(tmp_path):
    path = tmp_path / "MbppPlus.jsonl"
    path.write_text(json.dumps({**EVALPLUS_ROWS[0], "plus_input": [["a", 1]]}) + "\n")
    problem = with_extra_tests(to_problem(record(), "zeroshot"), extra_tests_from_evalplus(path)[7])
    [result] = run_programs([problem.program(problem.completion)], timeout_s=10, memory_mb=1024, workers=1)
    assert result.status == "failed"
    assert "MBPP+ input 2: the canonical solution raised TypeError" in result.exception


def test_evalplus_file_errors(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"task_id": "Mbpp/7", "entry_point": "add"}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: not an EvalPlus MBPP\+ record"):
        extra_tests_from_evalplus(path)
    path.write_text(json.dumps({**EVALPLUS_ROWS[0], "entry_point": "add; import os"}) + "\n")
    with pytest.raises(ValueError, match="is not a name"):
        extra_tests_from_evalplus(path)
    path.write_text("\n")
    with pytest.raises(ValueError, match="no MBPP\\+ records"):
        extra_tests_from_evalplus(path)


def test_with_extra_tests_leaves_the_problem_unchanged():
    problem = to_problem(record(), "zeroshot")
    extended = with_extra_tests(with_extra_tests(problem, ("assert add(2, 2) == 4",)), ("assert True",))
    assert problem.tests == record().test_list and "extra_tests" not in problem.meta
    assert extended.tests == record().test_list + ("assert add(2, 2) == 4", "assert True")
    assert extended.meta["extra_tests"] == 2


def test_asserts_on_a_call_and_a_literal_are_checked_on_plain_data_outside_the_program():
    rec = record(
        setup="",
        code="def add(a, b):\n    return a + b",
        tests=("assert add(1, 2) == 3", "assert add(0.1, 0.2) == 0.30000000000000004", "assert math.isclose(add(1, 1), 2)"),
    )
    problem = to_problem(rec, "zeroshot")
    right = "import math\ndef add(a, b):\n    return a + b\n"
    always_equal = (
        "import math\nclass Same(float):\n    __eq__ = lambda self, other: True\ndef add(a, b):\n    return Same(a + b)\n"
    )
    off_by_ulp = "import math\ndef add(a, b):\n    return 0.3 if a == 0.1 else a + b\n"  # == as before: exact
    results = run_programs(
        [problem.program(code) for code in (right, always_equal, off_by_ulp)], timeout_s=10, memory_mb=512, workers=2
    )
    assert [r.passed for r in results] == [True, False, False]
    assert results[0].checks == {"tests": "split", "plain_data": 2, "in_process": 1}
    assert "not plain data" in results[1].exception and "returned 0.3" in results[2].exception
