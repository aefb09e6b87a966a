from pathlib import Path

import pytest

from ftcompare.evaluate.repair import (
    REPAIR_F1_KEYS,
    changed_lines,
    changed_tokens,
    code_lines,
    code_tokens,
    line_edit_f1,
    repair_f1_scores,
    token_f1,
)
from ftcompare.evaluate.sandbox import SandboxResult

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"

BUGGY = '''
def f(xs):
    total = 0
    for x in xs:
        total -= x   
    return total

def g(n):
    return n * 2


"""
F
Sums xs.
"""
'''
FIXED = "def f(xs):\n    total = 0\n    for x in xs:\n        total += x\n    return total\n\ndef g(n):\n    return n * 2\n"


def edits(before, after):
    return [(sign, text.strip()) for sign, _, text in changed_lines(before, after)]


def test_code_lines_drop_blanks_trailing_space_and_the_trailing_docstring():
    assert [text for _, text in code_lines(BUGGY)] == [
        "def f(xs):",
        "    total = 0",
        "    for x in xs:",
        "        total -= x",
        "    return total",
        "def g(n):",
        "    return n * 2",
    ]
    assert code_lines(BUGGY)[0] == (2, "def f(xs):")
    leading = '"""Module docstring."""\nx = 1\n'
    assert code_lines(leading) == [(1, '"""Module docstring."""'), (2, "x = 1")]


def test_code_lines_of_source_that_does_not_parse():
    broken = "def f(:\n    return 1\n\n'''\nDoc\n'''\n"
    assert code_lines(broken) == [(1, "def f(:"), (2, "    return 1")]
    indented_end = '"""Top."""\ndef f(:\n    """\n    Doc\n    """\n'
    assert len(code_lines(indented_end)) == 5  # a function's docstring is code, not the trailing block


def test_changed_lines_numbers_lines_in_their_own_program():
    assert changed_lines(BUGGY, FIXED) == [("-", 5, "        total -= x"), ("+", 4, "        total += x")]
    assert changed_lines(BUGGY, BUGGY.replace('"""\nF', '"""\nG')) == []  # only the docstring differs


def test_candidate_identical_to_the_reference_scores_one():
    candidate = "\n" + FIXED.replace("\n\n", "\n\n\n") + '\n"""\nF\n"""\n'  # blank lines and docstring aside
    assert line_edit_f1(BUGGY, candidate, FIXED) == {"precision": 1.0, "recall": 1.0, "f1": 1.0}


def test_right_line_other_text_scores_one_half():
    candidate = FIXED.replace("total += x", "total = total + x")
    # C = {-total -= x, +total = total + x}, R = {-total -= x, +total += x}: I = 1
    assert line_edit_f1(BUGGY, candidate, FIXED) == {"precision": 0.5, "recall": 0.5, "f1": 0.5}


def test_no_edit_scores_zero_and_no_edit_needed_scores_one():
    assert line_edit_f1(BUGGY, BUGGY, FIXED) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    assert line_edit_f1(FIXED, FIXED, FIXED) == {"precision": 1.0, "recall": 1.0, "f1": 1.0}
    # an edit where the reference needs none: 0/1 precision, 0/0 recall taken as 0
    assert line_edit_f1(FIXED, FIXED.replace("* 2", "* 3"), FIXED) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}


def test_multi_line_fix_partly_matched():
    reference = FIXED.replace("n * 2", "n * 3")  # R = {-total -= x, +total += x, -n * 2, +n * 3}
    candidate = FIXED.replace("    return total\n", "    print(total)\n    return total\n")
    # C = {-total -= x, +total += x, +print(total)}: I = 2, precision 2/3, recall 2/4, f1 = 2*2/(3+4)
    assert edits(BUGGY, candidate) == [("-", "total -= x"), ("+", "total += x"), ("+", "print(total)")]
    assert line_edit_f1(BUGGY, candidate, reference) == {"precision": 2 / 3, "recall": 1 / 2, "f1": 4 / 7}


def test_edits_are_a_multiset():
    before = "a = 1\nb = 2\n"
    reference = "a = 1\nx = 0\nb = 2\n"
    candidate = "a = 1\nx = 0\nb = 2\nx = 0\n"
    # C = {+x = 0, +x = 0}, R = {+x = 0}: I = 1, precision 1/2, recall 1, f1 = 2/3
    assert line_edit_f1(before, candidate, reference) == {"precision": 0.5, "recall": 1.0, "f1": 2 / 3}


def _result(passed: bool) -> SandboxResult:
    return SandboxResult(
        status="passed" if passed else "failed", passed=passed, stdout="", stderr="", duration_s=0.0, exception=None, isolation={}
    )


@pytest.mark.skipif(not (DATA / "quixbugs.jsonl").is_file(), reason="QuixBugs data not found")
def test_quixbugs_reference_fixes_are_edits_that_score_one():
    from ftcompare.data.quixbugs import load_quixbugs

    for program in load_quixbugs(DATA / "quixbugs.jsonl"):
        assert 1 <= len(changed_lines(program.buggy, program.correct)) <= 4, program.name
        assert line_edit_f1(program.buggy, program.correct, program.correct)["f1"] == 1.0
        assert line_edit_f1(program.buggy, program.buggy, program.correct)["f1"] == 0.0


def _reindent_to_two_spaces(source: str) -> str:
    lines = []
    for line in source.splitlines(keepends=True):
        indent = len(line) - len(line.lstrip(" "))
        lines.append(" " * (indent // 2) + line[indent:])
    return "".join(lines)


def test_reindented_exact_fix_scores_token_f1_one():
    candidate = _reindent_to_two_spaces(FIXED)
    assert token_f1(BUGGY, candidate, FIXED) == {"precision": 1.0, "recall": 1.0, "f1": 1.0}
    # every indented line differs in text: the line-level F1 sees 2 right edits among 12 (2*1/(10+2))
    assert line_edit_f1(BUGGY, candidate, FIXED)["f1"] == pytest.approx(1 / 6)


def test_wrong_fix_scores_less():
    assert changed_tokens(BUGGY, FIXED) == [("-", "-="), ("+", "+=")]
    wrong = FIXED.replace("total += x", "total *= x")  # the right token, the wrong fix: 1 of 2 edits
    assert token_f1(BUGGY, wrong, FIXED) == {"precision": 0.5, "recall": 0.5, "f1": 0.5}
    elsewhere = BUGGY.replace("n * 2", "n * 3")  # an edit, but not the bug's
    assert token_f1(BUGGY, elsewhere, FIXED)["f1"] == 0.0
    assert token_f1(BUGGY, BUGGY, FIXED)["f1"] == 0.0  # changes nothing
    longer = FIXED.replace("total += x", "total = total + x")  # right, spelled differently: partial credit
    assert 0 < token_f1(BUGGY, longer, FIXED)["f1"] < 1


def test_code_tokens_ignore_whitespace_and_comments_but_keep_blocks():
    assert code_tokens("def f(x):\n    return x  # id\n") == code_tokens("def f( x ):\n\n  return x\n")
    assert code_tokens("if a:\n    b = 1\nc = 2\n") != code_tokens("if a:\n    b = 1\n    c = 2\n")  # a dedent matters
    assert code_tokens(BUGGY)[-3:] == ["2", "<NEWLINE>", "<DEDENT>"]  # the trailing docstring is not code
    assert code_tokens("def f(:\n    return 'x\n") == ["def", "f", "(", ":", "return", "'", "x"]  # no tokenize


def test_repair_f1_scores_keys():
    scores = repair_f1_scores(BUGGY, _reindent_to_two_spaces(FIXED), FIXED)
    assert tuple(scores) == REPAIR_F1_KEYS
    assert scores["token_f1"] == 1.0 and scores["line_edit_f1"] == pytest.approx(1 / 6)


@pytest.mark.skipif(not (DATA / "quixbugs.jsonl").is_file(), reason="QuixBugs data not found")
def test_quixbugs_reindented_reference_fixes_score_token_f1_one():
    from ftcompare.data.quixbugs import load_quixbugs

    programs = load_quixbugs(DATA / "quixbugs.jsonl")
    line_level = []
    for program in programs:
        candidate = _reindent_to_two_spaces(program.correct)
        assert token_f1(program.buggy, candidate, program.correct)["f1"] == 1.0, program.name
        assert token_f1(program.buggy, program.buggy, program.correct)["f1"] == 0.0, program.name
        line_level.append(line_edit_f1(program.buggy, candidate, program.correct)["f1"])
    assert sum(line_level) / len(line_level) == pytest.approx(0.1026, abs=1e-4)  # why line level is not the F1
