import io
import json
import re
import tokenize
from dataclasses import replace
from pathlib import Path

import pytest

from ftcompare.data import mbpp
from ftcompare.data.codegen import generate_task
from ftcompare.data.perturb import (
    PERTURBATIONS,
    NotApplicable,
    family_variants,
    paraphrase_text,
    perturb_code_syntax,
    perturbed_variants,
    reformat_code,
    rename_function,
    rename_variables,
)
from ftcompare.data.problems import Problem
from tests.helpers import chat_tokenizer

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
    tests=(
        "assert below_threshold([1, 2, 4, 10], 100)",
        "assert not below_threshold([1, 20, 4, 10], 5)",
        "assert below_threshold([], 0)",
    ),
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
    + "\n".join(_SIMILAR_TESTS)
    + "\n[BEGIN]\n",
    completion="def similar_elements(test_tup1, test_tup2):\n  res = tuple(set(test_tup1) & set(test_tup2))\n  return (res) \n",
    tests=_SIMILAR_TESTS,
    entry_point="similar_elements",
    meta={"source": "fixture"},
)
# zero-shot layout; the entry point `add` is a prefix or part of other names and words
_ADD_TESTS = ("assert add(1, 2) == 3", "assert add(add_one(1), 0) == 2", "assert 'add' == 'a' + 'dd' and padding == 0")
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
# An MBPP prompt shows its problem's asserts and no function: no variable of the target's to rename.
NOT_APPLICABLE = {("code_syntax", MBPP_FEW_SHOT.task_id), ("code_syntax", MBPP_ZERO_SHOT.task_id)}


def _applies(name: str, problem: Problem) -> bool:
    return (name, problem.task_id) not in NOT_APPLICABLE


def _run(problem: Problem) -> None:
    exec(problem.program(problem.completion), {})  # our own references and fixtures, not model output


def _tokens(source: str) -> list[tuple[str, str]]:
    return [
        (tokenize.tok_name[t.type], t.string)
        for t in tokenize.generate_tokens(io.StringIO(source).readline)
        if t.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT)
    ]


def _code_lines(prompt: str) -> list[tuple[int, str]]:
    """Lines of an MBPP prompt that are code or markup."""
    return [(i, line) for i, line in enumerate(prompt.split("\n")) if line.startswith(("assert", "def", " ", "[", "```"))]


# ---- every family ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PERTURBATIONS))
def test_reference_still_passes_its_tests(name):
    for problem in ALL:
        _run(problem)
        if not _applies(name, problem):
            with pytest.raises(NotApplicable, match=problem.task_id):
                PERTURBATIONS[name](problem, 0)
            continue
        for seed in SEEDS:
            variant = PERTURBATIONS[name](problem, seed)
            _run(variant)
            assert variant.prompt.endswith(variant.code_prefix)
            assert variant.task_id == problem.task_id


@pytest.mark.parametrize("name", sorted(PERTURBATIONS))
def test_deterministic_for_a_seed_and_different_across_seeds(name):
    for problem in filter(lambda problem: _applies(name, problem), ALL):
        variants = [PERTURBATIONS[name](problem, seed) for seed in SEEDS]
        assert [PERTURBATIONS[name](problem, seed) for seed in SEEDS] == variants
        prompts = {variant.prompt for variant in variants}
        assert problem.prompt not in prompts, (name, problem.task_id)
        assert len(prompts) >= 2, (name, problem.task_id)


@pytest.mark.parametrize("name", sorted(PERTURBATIONS))
def test_meta_records_the_perturbation(name):
    problem = MBPP_FEW_SHOT if _applies(name, MBPP_FEW_SHOT) else replace(HUMANEVAL, meta={"source": "fixture"})
    variant = PERTURBATIONS[name](problem, 7)
    assert variant.meta["perturbation"] == name and variant.meta["seed"] == 7 and "details" in variant.meta
    assert variant.meta["source"] == "fixture"  # the problem's own meta is kept
    json.dumps(variant.to_json())


# ---- docstring / prose -----------------------------------------------------------------------------


def test_paraphrase_keeps_numbers_quoted_text_and_identifiers():
    for problem in ALL:
        names = {
            t.string
            for t in tokenize.generate_tokens(io.StringIO(problem.program(problem.completion)).readline)
            if t.type == tokenize.NAME
        }
        for seed in SEEDS:
            variant = paraphrase_text(problem, seed, typo_rate=0.3)
            assert re.findall(r"\d+", variant.prompt) == re.findall(r"\d+", problem.prompt)
            quoted = r"'[^'\n]*'|\"[^\"\n]*\"|`[^`\n]*`"
            assert re.findall(quoted, variant.prompt.replace('"""', "")) == re.findall(quoted, problem.prompt.replace('"""', ""))
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
            doctest_lines = [line for line in problem.prompt.split("\n") if ">>>" in line or line.strip() in ("True", "False")]
            assert all(line in variant.prompt.split("\n") for line in doctest_lines)


def test_paraphrase_leaves_the_code_lines_of_prose_prompts():
    for problem in MBPP:
        for seed in SEEDS:
            variant = paraphrase_text(problem, seed, typo_rate=0.5)
            assert _code_lines(variant.prompt) == _code_lines(problem.prompt)
            assert variant.prompt.count("\n") == problem.prompt.count("\n")


def test_paraphrase_rates():
    problem = Problem(
        task_id="t",
        prompt='def f(s):\n    """Return the largest element of s."""\n',
        completion="    return max(s)\n",
        tests=("assert f('ab') == 'b'",),
        entry_point="f",
        code_prefix='def f(s):\n    """Return the largest element of s."""\n',
    )
    typos = paraphrase_text(problem, 0, synonym_rate=0.0, swap_rate=0.0, typo_rate=1.0).meta["details"]["edits"]
    assert [(e["op"], e["from"]) for e in typos] == [("typo", w) for w in ("Return", "the", "largest", "element")]
    synonyms = paraphrase_text(problem, 0, synonym_rate=1.0, typo_rate=0.0).meta["details"]["edits"]
    assert sorted(e["from"] for e in synonyms) == ["Return", "element", "largest"]
    assert all(e["op"] == "synonym" for e in synonyms)


def test_paraphrase_swaps_adjacent_adjectives():
    doc = 'def f(xs):\n    """Return the given sorted list xs, even and odd values apart."""\n'
    problem = Problem(
        task_id="t", prompt=doc, completion="    return xs\n", tests=("assert f([1]) == [1]",), entry_point="f", code_prefix=doc
    )
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


def test_code_syntax_leaves_few_shot_code_alone():
    # the old rule renamed the shot's `total` and `nums`: a perturbation of the example, not of the problem
    with pytest.raises(NotApplicable, match="no variable to rename"):
        perturb_code_syntax(MBPP_FEW_SHOT, 0)


def test_code_syntax_keeps_parameters_passed_by_keyword():
    doc = 'def inc(x, step):\n    """Return x plus step."""\n'
    problem = Problem(
        task_id="t",
        prompt=doc,
        completion="    return x + step\n",
        tests=("assert inc(1, step=2) == 3", "assert inc(1, 1) == 2"),
        entry_point="inc",
        code_prefix=doc,
    )
    variant = perturb_code_syntax(problem, 0)
    assert variant.meta["details"]["renamed"][0]["renamed"].keys() == {"x"}
    assert "step" in variant.code_prefix
    _run(variant)


def test_code_syntax_without_variables_is_not_applicable():
    with pytest.raises(NotApplicable, match="mbpp/add"):
        perturb_code_syntax(MBPP_ZERO_SHOT, 0)


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
    for problem in (CODEGEN[0], HUMANEVAL, MBPP_FEW_SHOT):
        names = [name for name in ("docstring", "function_name", "code_syntax", "code_format") if _applies(name, problem)]
        n = len(names)
        variants = perturbed_variants(problem, names, s=3, seed=0)
        assert variants == perturbed_variants(problem, names, s=3, seed=0)
        assert [v.meta["perturbation"] for v in variants] == [n for n in names for _ in range(3)]
        assert [v.meta["variant"] for v in variants] == [0, 1, 2] * n
        for name in names:
            family = [v for v in variants if v.meta["perturbation"] == name]
            assert len({v.meta["seed"] for v in family}) == 3
            assert len({v.prompt for v in family} | {problem.prompt}) == 4, (problem.task_id, name)
        other = perturbed_variants(problem, names, s=3, seed=1)
        assert [v.meta["seed"] for v in other] != [v.meta["seed"] for v in variants]


def test_a_family_with_nothing_to_change_is_not_applicable_never_the_nominal_prompt():
    with pytest.raises(NotApplicable):
        perturbed_variants(MBPP_ZERO_SHOT, ["code_syntax"], s=2, seed=0)
    variants, not_applicable = family_variants([HUMANEVAL, MBPP_ZERO_SHOT, MBPP_FEW_SHOT], "code_syntax", s=2, seed=0)
    assert [v.task_id for v in variants] == [HUMANEVAL.task_id] * 2
    assert set(not_applicable) == {"mbpp/add", "mbpp/2"} and "no variable" in not_applicable["mbpp/add"]
    variants, not_applicable = family_variants([HUMANEVAL, MBPP_ZERO_SHOT], "docstring", s=2, seed=0)
    assert len(variants) == 4 and not_applicable == {}


def test_a_chat_prompt_around_a_code_prefix_is_not_applicable():
    chat = replace(HUMANEVAL, prompt="<|user|>\nComplete:\n```python\n" + _HE_PREFIX + "```<|end|>\n<|assistant|>\n")
    for name in PERTURBATIONS:
        with pytest.raises(NotApplicable, match="code_prefix"):
            PERTURBATIONS[name](chat, 0)


# ---- only the target problem -----------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PERTURBATIONS))
def test_few_shot_examples_are_never_perturbed(name):
    if not _applies(name, MBPP_FEW_SHOT):
        return
    for seed in SEEDS:
        assert PERTURBATIONS[name](MBPP_FEW_SHOT, seed).prompt.startswith(_SHOT)


_SYSTEM = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
MBPP_CHAT = replace(
    MBPP_ZERO_SHOT,
    task_id="mbpp/add-chat",
    prompt=_SYSTEM
    + "<|im_start|>user\n"
    + MBPP_ZERO_SHOT.prompt.removesuffix("\n```python\n")
    + "<|im_end|>\n<|im_start|>assistant\n",
)


@pytest.mark.parametrize("name", ["docstring", "function_name", "code_format"])
def test_chat_markup_and_system_prompt_are_never_perturbed(name):
    for seed in SEEDS:
        prompt = PERTURBATIONS[name](MBPP_CHAT, seed, **({"typo_rate": 0.5} if name == "docstring" else {})).prompt
        assert prompt.startswith(_SYSTEM + "<|im_start|>user\n") and prompt.endswith("<|im_end|>\n<|im_start|>assistant\n")
        assert prompt != MBPP_CHAT.prompt


def test_paraphrase_leaves_the_format_instruction():
    for problem in (MBPP_FEW_SHOT, MBPP_ZERO_SHOT, MBPP_CHAT):
        for seed in SEEDS:
            variant = paraphrase_text(problem, seed, synonym_rate=1.0, typo_rate=0.5)
            for phrase in ("Your code should pass these tests:", "Write the Python function."):
                assert variant.prompt.count(phrase) == problem.prompt.count(phrase)


# ---- real MBPP: what each family changes, per prompt format ------------------------------------------

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
_CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)  # SmolLM2-Instruct's template: a system prompt of its own ahead of the user's message


def _target(prompt: str, fmt: str) -> tuple[str, str]:
    """(the target problem's part of an MBPP prompt, the rest), cut as mbpp.render_prompt builds them."""
    if fmt == "austin3shot":
        shots, target = prompt.rsplit("[DONE]\n\n", 1)
        return target, shots
    if fmt == "chat":
        head, rest = prompt.split("<|im_start|>user\n", 1)
        target, tail = rest.split("<|im_end|>", 1)
        return target, head + tail
    return prompt, ""


@pytest.fixture(scope="module")
def mbpp_test_problems():
    path = DATA / "mbpp.jsonl"
    if not path.is_file():
        pytest.skip(f"MBPP data not found at {path.resolve()}")
    tokenizer = chat_tokenizer()
    tokenizer.chat_template = _CHATML
    records = mbpp.load_mbpp(path)
    few_shot = sorted((r for r in records if r.task_id in mbpp.AUSTIN_FEW_SHOT_IDS), key=lambda r: r.task_id)
    test = mbpp.split(records, "test")
    return {
        fmt: [(r, mbpp.to_problem(r, fmt, few_shot=few_shot if fmt == "austin3shot" else (), tokenizer=tokenizer)) for r in test]
        for fmt in mbpp.PROMPT_FORMATS
    }


# Of the 500 test prompts, per family: (target part changed, problem text changed, not applicable); the
# rest of the prompt (few-shot examples, system prompt, markup) never changes. Before the fix, code_syntax
# returned the nominal prompt for 500/500 zeroshot and chat prompts and, on austin3shot, renamed the
# few-shot code of 500/500 (target 0/500); docstring and code_format edited the shots of 500/500 austin3shot
# prompts (target 485 and 490/500), docstring the chat system prompt of 149/500.
EXPECTED_COUNTS = {
    "docstring": (500, 500, 0),
    "function_name": (500, 0, 0),
    "code_syntax": (0, 0, 500),
    "code_format": (500, 0, 0),
}


@pytest.mark.parametrize("fmt", mbpp.PROMPT_FORMATS)
def test_each_family_changes_the_target_of_real_mbpp_prompts(mbpp_test_problems, fmt):
    pairs = mbpp_test_problems[fmt]
    assert len(pairs) == 500
    for name, expected in EXPECTED_COUNTS.items():
        target_changed = text_changed = not_applicable = 0
        for record, problem in pairs:
            try:
                variant = PERTURBATIONS[name](problem, 0)
            except NotApplicable:
                not_applicable += 1
                continue
            target, rest = _target(variant.prompt, fmt)
            nominal_target, nominal_rest = _target(problem.prompt, fmt)
            assert rest == nominal_rest, (name, problem.task_id)
            target_changed += target != nominal_target
            text_changed += record.text not in target
        assert (target_changed, text_changed, not_applicable) == expected, (fmt, name)


def test_perturbed_variants_checks_its_arguments():
    with pytest.raises(ValueError, match="unknown perturbations"):
        perturbed_variants(HUMANEVAL, ["typo"], s=1, seed=0)
    with pytest.raises(ValueError, match="s must be"):
        perturbed_variants(HUMANEVAL, ["docstring"], s=0, seed=0)
