import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ftcompare.cli import app
from ftcompare.evaluate.verify import verify_benchmark

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
needs_shared = pytest.mark.skipif(not (SHARED / "quixbugs.jsonl").is_file(), reason="../shared/data is not beside the repository")


def _mbpp_file(tmp_path: Path) -> Path:
    rows = [
        {
            "task_id": 11,
            "text": "Write a function to add one.",
            "code": "def add_one(x):\r\n    return x + 1",
            "test_list": ["assert add_one(1) == 2", "assert add_one(2) == 3", "assert add_one(0) == 1"],
            "test_setup_code": "",
            "challenge_test_list": [],
        },
        {
            "task_id": 12,
            "text": "Write a function to double.",
            "code": "def double(x):\n    return x * 3",
            "test_list": ["assert double(1) == 2", "assert double(2) == 4", "assert double(0) == 0"],
            "test_setup_code": "",
            "challenge_test_list": [],
        },
        {
            "task_id": 13,
            "text": "Use the setup.",
            "code": "def get(x):\n    return LOOKUP[x]",
            "test_list": ["assert get('a') == 1", "assert get('b') == 2", "assert get('a') != 2"],
            "test_setup_code": "LOOKUP = {'a': 1, 'b': 2}",
            "challenge_test_list": [],
        },
    ]
    path = tmp_path / "mbpp.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_a_failing_reference_is_listed_by_id(tmp_path):
    report = verify_benchmark("mbpp", _mbpp_file(tmp_path), timeout_s=5)
    assert (report.total, report.passed) == (3, 2)
    assert [f.task_id for f in report.failures] == ["mbpp/12"]
    assert report.failures[0].status == "failed" and "AssertionError" in report.failures[0].detail
    assert report.lines()[0] == "mbpp: 2/3 reference solutions pass"


def test_cli_prints_the_summary_line_and_fails_on_exceptions(tmp_path):
    result = CliRunner().invoke(app, ["verify-benchmark", "mbpp", "--data", str(_mbpp_file(tmp_path)), "--timeout-s", "5"])
    assert result.exit_code == 1
    assert result.output.splitlines()[0] == "mbpp: 2/3 reference solutions pass"


@pytest.mark.parametrize(
    "args, message",
    [(["quixbugs"], "give --data"), (["nope"], "'nope' is not one of"), (["mbpp", "--data", "missing.jsonl"], "file not found")],
)
def test_cli_errors_are_one_clear_line(args, message):
    result = CliRunner().invoke(app, ["verify-benchmark", *args])
    assert result.exit_code == 2 and message in result.output


@needs_shared
def test_quixbugs_references_pass_and_buggy_programs_fail():
    report = verify_benchmark(
        "quixbugs", SHARED / "quixbugs.jsonl", timeout_s=15, workers=2
    )  # levenshtein takes 3.4 s alone: no time-outs on a busy machine
    assert report.lines()[0] == "quixbugs: 40/40 reference solutions pass, 40/40 buggy programs fail"
