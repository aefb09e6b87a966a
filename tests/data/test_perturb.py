import io
import json
import re
import tokenize

import pytest

from ftcompare.data.codegen import generate_task
from ftcompare.data.perturb import (
    PERTURBATIONS,
    paraphrase_text,
    perturb_code_syntax,
    perturbed_variants,
    reformat_code,
    rename_function,
    rename_variables,
)
from ftcompare.data.problems import Problem

# ---- fixtures: generated HumanEval-style problems, a HumanEval-like prompt with doctests, MBPP prose prompts

_TASK = generate_task(seed=0, n_train=1, n_test=5, n_ood=4)
CODEGEN = _TASK.suites["test"] + _TASK.suites["ood"]

_HE_PREFIX = '''from typing import List


def below_threshold(numbers: List[int], threshold: int) -> bool:
    """Return True if all given numbers in the list are below the threshold, 'numbers' being ints.
    >>> below_threshold([1, 2, 4, 10], 100)
    True
    >>> below_threshold([1, 20, 4, 10], 5)
    False
    """
'''
HUMANEVAL = Problem(
    task_id="humaneval/52",
    prompt=_HE_PREFIX,
    completion="    for value in numbers:\n        if value >= threshold:\n            return False\n    return True\n",
    tests=("assert below_threshold([1, 2, 4, 10], 100)", "assert not below_threshold([1, 20, 4, 10], 5)",
           "assert below_threshold([], 0)"),
    entry_point="below_threshold",
    code_prefix=_HE_PREFIX,
)

# lm-eval's 3-shot MBPP layout, one shot, its code with CRLF line ends as in the dataset
_SHOT = (
    "You are an expert Python programmer, and here is your task: Write a function to count the even "
    "numbers in a given list. Your code should pass these tests:\n\n"
    "assert count_even([1, 2, 4]) == 2\nassert count_even([]) == 0\nassert count_even([3, 5]) == 0\n[BEGIN]\n"
    "def count_even(nums):\r\n    total = 0\r\n    for value in nums:\r\n        if value % 2 == 0:\r\n"
    "            total += 1\r\n    return total\r\n[DONE]\n\n"
)
_SIMILAR_TESTS = (
    "assert set(similar_elements((3, 4, 5, 6), (5, 7, 4, 10))) == {4, 5}",
    "assert set(similar_elements((1, 2, 3, 4), (5, 4, 3, 7))) == {3, 4}",
    "assert set(similar_elements((11, 12, 14, 13), (17, 15, 14, 13))) == {13, 14}",
)
MBPP_FEW_SHOT = Problem(
    task_id="mbpp/2",
    prompt=_SHOT + "You are an expert Python programmer, and here is your task: Write a function to find the "
    "shared elements from the given two lists. Your code should pass these tests:\n\n"
    + "\n".join(_SIMILAR_TESTS) + "\n[BEGIN]\n",
    completion="def similar_elements(test_tup1, test_tup2):\n  res = tuple(set(test_tup1) & set(test_tup2))\n"
    "  return (res) \n",
    tests=_SIMILAR_TESTS,
    entry_point="similar_elements",
    meta={"source": "fixture"},
)
# zero-shot layout; the entry point `add` is a prefix or part of other names and words
_ADD_TESTS = ("assert add(1, 2) == 3", "assert add(add_one(1), 0) == 2",
              "assert 'add' == 'a' + 'dd' and padding == 0")
MBPP_ZERO_SHOT = Problem(
    task_id="mbpp/add",
    prompt="Write a function add that returns the sum of a and b, with the given padding; add_one may help.\n"
    "Your code should pass these tests:\n\n" + "\n".join(_ADD_TESTS) + "\n\nWrite the Python function.\n```python\n",
    completion="def add(a, b):\n    return a + b + padding\n",
    tests=_ADD_TESTS,
    entry_point="add",
    setup="def add_one(x):\n    return x + 1\n\n\npadding = 0\n",
)
MBPP = (MBPP_FEW_SHOT, MBPP_ZERO_SHOT)
ALL = CODEGEN + (HUMANEVAL,) + MBPP
SEEDS = range(6)


def _run(problem: Problem) -> None:
    exec(problem.program(problem.completion), {})  # our own references and fixtures, not model output


def _tokens(source: str) -> list[tuple[str, str]]:
    return [(tokenize.tok_name[t.type], t.string) for t in tokenize.generate_tokens(io.StringIO(source).readline)
            if t.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT)]


def _code_lines(prompt: str) -> list[tuple[int, str]]:
    """Lines of an MBPP prompt that are code or markup."""
    return [(i, line) for i, line in enumerate(prompt.split("\n"))
            if line.startswith(("assert", "def", " ", "[", "```"))]


# ---- every family ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PERTURBATIONS))
def test_reference_still_passes_its_tests(name):
    for problem in ALL:
        _run(problem)
        for seed in SEEDS:
            variant = PERTURBATIONS[name](problem, seed)
            _run(variant)
            assert variant.prompt.endswith(variant.code_prefix)
            assert variant.task_id == problem.task_id


@pytest.mark.parametrize("name", sorted(PERTURBATIONS))
def test_deterministic_for_a_seed_and_different_across_seeds(name):
    for problem in ALL:
        if name == "code_syntax" and problem is MBPP_ZERO_SHOT:
            continue  # no variable in its prompt: see test_code_syntax_without_variables_changes_nothing
        variants = [PERTURBATIONS[name](problem, seed) for seed in SEEDS]
        assert [PERTURBATIONS[name](problem, seed) for seed in SEEDS] == variants
        prompts = {variant.prompt for variant in variants}
        assert problem.prompt not in prompts, (name, problem.task_id)
        assert len(prompts) >= 2, (name, problem.task_id)


@pytest.mark.parametrize("name", sorted(PERTURBATIONS))
def test_meta_records_the_perturbation(name):
    variant = PERTURBATIONS[name](MBPP_FEW_SHOT, 7)
    assert variant.meta["perturbation"] == name and variant.meta["seed"] == 7 and "details" in variant.meta
    assert variant.meta["source"] == "fixture"  # the problem's own meta is kept
    json.dumps(variant.to_json())


# ---- docstring / prose -----------------------------------------------------------------------------


def test_paraphrase_keeps_numbers_quoted_text_and_identifiers():
    for problem in ALL:
        names = {t.string for t in tokenize.generate_tokens(io.StringIO(problem.program(problem.completion)).readline)
                 if t.type == tokenize.NAME}
        for seed in SEEDS:
            variant = paraphrase_text(problem, seed, typo_rate=0.3)
            assert re.findall(r"\d+", variant.prompt) == re.findall(r"\d+", problem.prompt)
            quoted = r"'[^'\n]*'|\"[^\"\n]*\"|`[^`\n]*`"
            assert re.findall(quoted, variant.prompt.replace('"""', "")) == \
                re.findall(quoted, problem.prompt.replace('"""', ""))
            for name in names:
                pattern = rf"(?<!\w){re.escape(name)}(?!\w)"
                assert len(re.findall(pattern, variant.prompt)) == len(re.findall(pattern, problem.prompt)), name
            assert variant.completion == problem.completion and variant.tests == problem.tests


def test_paraphrase_edits_only_docstring_prose_in_code():
    for problem in CODEGEN + (HUMANEVAL,):
        for seed in SEEDS:
            variant = paraphrase_text(problem, seed, typo_rate=0.5)
            before, after = _tokens(problem.code_prefix), _tokens(variant.code_prefix)
            assert [t for t in before if t[0] != "STRING"] == [t for t in after if t[0] != "STRING"]
            doctest_lines = [line for line in problem.prompt.split("\n")
                             if ">>>" in line or line.strip() in ("True", "False")]
            assert all(line in variant.prompt.split("\n") for line in doctest_lines)


def test_paraphrase_leaves_the_code_lines_of_prose_prompts():
    for problem in MBPP:
        for seed in SEEDS:
            variant = paraphrase_text(problem, seed, typo_rate=0.5)
            assert _code_lines(variant.prompt) == _code_lines(problem.prompt)
            assert variant.prompt.count("\n") == problem.prompt.count("\n")


def test_paraphrase_rates():
    problem = Problem(task_id="t", prompt='def f(s):\n    """Return the largest element of s."""\n',
                      completion="    return max(s)\n", tests=("assert f('ab') == 'b'",), entry_point="f",
                      code_prefix='def f(s):\n    """Return the largest element of s."""\n')
    typos = paraphrase_text(problem, 0, synonym_rate=0.0, swap_rate=0.0, typo_rate=1.0).meta["details"]["edits"]
    assert [(e["op"], e["from"]) for e in typos] == [("typo", w) for w in ("Return", "the", "largest", "element")]
    synonyms = paraphrase_text(problem, 0, synonym_rate=1.0, typo_rate=0.0).meta["details"]["edits"]
    assert sorted(e["from"] for e in synonyms) == ["Return", "element", "largest"]
    assert all(e["op"] == "synonym" for e in synonyms)


def test_paraphrase_swaps_adjacent_adjectives():
    doc = 'def f(xs):\n    """Return the given sorted list xs, even and odd values apart."""\n'
    problem = Problem(task_id="t", prompt=doc, completion="    return xs\n", tests=("assert f([1]) == [1]",),
                      entry_point="f", code_prefix=doc)
    variant = paraphrase_text(problem, 0, synonym_rate=0.0, swap_rate=1.0, typo_rate=0.0)
    assert "the sorted given list xs, odd and even values" in variant.prompt
    _run(variant)


# ---- function name ---------------------------------------------------------------------------------


def test_rename_function_renames_whole_identifiers_only():
    for seed in SEEDS:
        variant = rename_function(MBPP_ZERO_SHOT, seed)
        new = variant.entry_point
        assert new != "add"
        for text in (variant.prompt, variant.completion, variant.setup, *variant.tests):
            code_names = re.findall(r"(?<![\w'])add(?![\w'])", text)
            assert code_names == [], text  # no bare `add` left, in code or prose
        assert variant.prompt.startswith(f"Write a function {new} that")
        assert "add_one" in variant.prompt and "padding" in variant.prompt
        assert variant.setup == MBPP_ZERO_SHOT.setup  # add_one, padding untouched
        assert variant.tests[0] == f"assert {new}(1, 2) == 3"
        assert variant.tests[1] == f"assert {new}(add_one(1), 0) == 2"
        assert variant.tests[2] == MBPP_ZERO_SHOT.tests[2]  # the string 'add' is not a name
        assert variant.completion.startswith(f"def {new}(a, b):")
        _run(variant)


def test_rename_function_reaches_doctests_and_tests_of_humaneval_prompts():
    for problem in CODEGEN + (HUMANEVAL,):
        variant = rename_function(problem, 3)
        assert problem.entry_point not in variant.prompt + "".join(variant.tests)
        assert variant.prompt.count(variant.entry_point) == problem.prompt.count(problem.entry_point)
        assert variant.code_prefix == variant.prompt
    renamed = rename_function(HUMANEVAL, 3)
    assert f">>> {renamed.entry_point}([1, 2, 4, 10], 100)" in renamed.prompt


def test_rename_function_leaves_other_functions_of_few_shot_prompts():
    for seed in SEEDS:
        variant = rename_function(MBPP_FEW_SHOT, seed)
        assert variant.prompt.count("count_even") == MBPP_FEW_SHOT.prompt.count("count_even")
        assert variant.prompt.count(variant.entry_point) == 3


# ---- code syntax -----------------------------------------------------------------------------------

_SNIPPET = '''def mean_of(values, scale=1):
    """Scale times the mean of values; "values" is a list."""
    total = 0
    for value in values:
        total += value
    label = "total"
    helper = dict(total=total)
    square = lambda v: v * v
    return scale * total / len(values), label, helper["total"], square(scale), values.count(1)
'''


def test_rename_variables_is_consistent_and_keeps_behaviour():
    reference: dict = {}
    exec(_SNIPPET, reference)
    for seed in SEEDS:
        renamed = rename_variables(_SNIPPET, seed)
        assert renamed == rename_variables(_SNIPPET, seed)
        namespace: dict = {}
        exec(renamed, namespace)
        assert namespace["mean_of"]([1, 2, 3], 2) == reference["mean_of"]([1, 2, 3], 2)
        signature = renamed.split("\n", 1)[0]
        assert "values" not in signature and "scale" not in signature  # parameters renamed
        assert "dict(total=total)" in renamed  # passed by keyword somewhere: kept
        assert 'label = "total"' not in renamed and '"total"' in renamed  # strings untouched
        assert ".count(1)" in renamed  # attributes untouched
        assert '"values" is a list' in renamed  # quoted in the docstring: untouched
    assert len({rename_variables(_SNIPPET, seed) for seed in SEEDS}) > 1


def test_code_syntax_renames_parameters_in_prefix_docstring_and_completion():
    for problem in CODEGEN + (HUMANEVAL,):
        variant = perturb_code_syntax(problem, 0)
        (record,) = variant.meta["details"]["renamed"]
        assert record["function"] == problem.entry_point
        for old, new in record["renamed"].items():
            assert re.search(rf"\b{new}\b", variant.code_prefix) and re.search(rf"\b{new}\b", variant.completion)
            assert not re.search(rf"(?<!['\w]){old}(?![\w'])", variant.completion)
        _run(variant)
    # names only in the reference completion are not the prompt's: `value` stays
    assert "for value in" in perturb_code_syntax(HUMANEVAL, 0).completion


def test_code_syntax_renames_few_shot_code_and_leaves_the_tests():
    for seed in SEEDS:
        variant = perturb_code_syntax(MBPP_FEW_SHOT, seed)
        assert "total" not in variant.prompt and "nums" not in variant.prompt
        assert [line for line in variant.prompt.split("\n") if line.startswith("assert")] == \
            [line for line in MBPP_FEW_SHOT.prompt.split("\n") if line.startswith("assert")]
        shot = variant.prompt.split("[BEGIN]\n", 1)[1].split("[DONE]", 1)[0]
        namespace: dict = {}
        exec(shot.replace("\r\n", "\n"), namespace)  # the few-shot example still works
        assert namespace["count_even"]([1, 2, 4, 6]) == 3
        assert variant.completion == MBPP_FEW_SHOT.completion


def test_code_syntax_keeps_parameters_passed_by_keyword():
    doc = 'def inc(x, step):\n    """Return x plus step."""\n'
    problem = Problem(task_id="t", prompt=doc, completion="    return x + step\n",
                      tests=("assert inc(1, step=2) == 3", "assert inc(1, 1) == 2"), entry_point="inc", code_prefix=doc)
    variant = perturb_code_syntax(problem, 0)
    assert variant.meta["details"]["renamed"][0]["renamed"].keys() == {"x"}
    assert "step" in variant.code_prefix
    _run(variant)


def test_code_syntax_without_variables_changes_nothing():
    variant = perturb_code_syntax(MBPP_ZERO_SHOT, 0)
    assert variant.prompt == MBPP_ZERO_SHOT.prompt and variant.meta["details"] == {"renamed": []}


# ---- code format -----------------------------------------------------------------------------------


def test_reformat_changes_only_whitespace_in_code():
    for problem in ALL:
        for seed in SEEDS:
            variant = reformat_code(problem, seed)
            if problem.code_prefix:
                assert _tokens(variant.code_prefix) == _tokens(problem.code_prefix)
            squeeze = lambda text: re.sub(r"\s", "", text)  # noqa: E731
            assert squeeze(variant.prompt) == squeeze(problem.prompt)
            assert variant.completion == problem.completion


def test_reformat_leaves_prose_and_doctests():
    for seed in SEEDS:
        variant = reformat_code(MBPP_FEW_SHOT, seed)
        prose = [line for line in MBPP_FEW_SHOT.prompt.split("\n") if line.startswith("You are")]
        assert all(line in variant.prompt.split("\n") for line in prose)
        docstring = HUMANEVAL.code_prefix.split('"""')[1]
        assert docstring in reformat_code(HUMANEVAL, seed).prompt


# ---- variants --------------------------------------------------------------------------------------


def test_perturbed_variants_gives_s_distinct_variants_per_family():
    names = ["docstring", "function_name", "code_syntax", "code_format"]
    for problem in (CODEGEN[0], HUMANEVAL, MBPP_FEW_SHOT):
        variants = perturbed_variants(problem, names, s=3, seed=0)
        assert variants == perturbed_variants(problem, names, s=3, seed=0)
        assert [v.meta["perturbation"] for v in variants] == [n for n in names for _ in range(3)]
        assert [v.meta["variant"] for v in variants] == [0, 1, 2] * 4
        for name in names:
            family = [v for v in variants if v.meta["perturbation"] == name]
            assert len({v.meta["seed"] for v in family}) == 3
            assert len({v.prompt for v in family} | {problem.prompt}) == 4, (problem.task_id, name)
        other = perturbed_variants(problem, names, s=3, seed=1)
        assert [v.meta["seed"] for v in other] != [v.meta["seed"] for v in variants]


def test_perturbed_variants_repeats_when_a_family_has_nothing_to_change():
    variants = perturbed_variants(MBPP_ZERO_SHOT, ["code_syntax"], s=2, seed=0)
    assert len(variants) == 2 and all(v.prompt == MBPP_ZERO_SHOT.prompt for v in variants)


def test_perturbed_variants_checks_its_arguments():
    with pytest.raises(ValueError, match="unknown perturbations"):
        perturbed_variants(HUMANEVAL, ["typo"], s=1, seed=0)
    with pytest.raises(ValueError, match="s must be"):
        perturbed_variants(HUMANEVAL, ["docstring"], s=0, seed=0)
