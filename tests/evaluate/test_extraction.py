import ast

import pytest
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace
from transformers import PreTrainedTokenizerFast

from ftcompare.evaluate.extraction import (
    STOP_SEQUENCES_BY_STYLE,
    Extracted,
    count_reasoning_tokens,
    extract_code,
    split_reasoning,
)

SOLUTION = "def add(a, b):\n    return a + b\n"


def test_reasoning_is_stripped_before_extraction():
    reasoning = "\nMaybe def add(a, b): return a - b?\n```python\nwrong = 1\n```\n"
    text = "<think>" + reasoning + "</think>\n\n```python\n" + SOLUTION + "```"
    extracted = extract_code(text)
    assert (extracted.code, extracted.method, extracted.reasoning_closed) == (SOLUTION, "fenced", True)
    assert extracted.reasoning == reasoning


def test_unterminated_think_has_no_answer_even_with_code_inside():
    reasoning = "\nLet me write it:\n```python\n" + SOLUTION + "```\nNow check the edge"
    assert extract_code("<think>" + reasoning) == Extracted("", "empty", reasoning, False)


def test_code_only_inside_a_closed_think_is_not_extracted():
    extracted = extract_code("<think>\n```python\n" + SOLUTION + "```\n</think>\n\n")
    assert (extracted.code, extracted.method, extracted.reasoning_closed) == ("", "empty", True)


def test_template_opened_think_only_close_tag_present():
    assert split_reasoning("I should add.\n</think>\nanswer") == ("I should add.\n", "\nanswer", True)
    extracted = extract_code("Use +, and ```python\nx = 1\n``` is a draft.\n</think>\n" + SOLUTION)
    assert (extracted.code, extracted.method) == (SOLUTION, "whole")
    assert extracted.reasoning.startswith("Use +")


def test_template_opened_think_and_budget_ran_out():
    # Without the flag an untagged output is all answer; with it, all reasoning that never closed.
    assert extract_code(SOLUTION).method == "whole"
    extracted = extract_code(SOLUTION, think_opened_in_prompt=True)
    assert extracted == Extracted("", "empty", SOLUTION, False)


def test_split_reasoning_cases():
    assert split_reasoning("plain") == ("", "plain", True)
    assert split_reasoning("<think>r</think>a") == ("r", "a", True)
    assert split_reasoning("pre<think>r") == ("r", "pre", False)
    assert split_reasoning("[r]a", open_tag="[", close_tag="]") == ("r", "a", True)


def test_first_python_fenced_block_wins():
    # SmolLM2's kind of answer to mbpp/18: the function, then a usage example in a block of its own. The
    # last block (the old rule) is the print, which scores 0; lm-eval's mbpp_instruct takes the first.
    code = "def remove_dirty_chars(string, second_string):\n    return ''.join(c for c in string if c not in second_string)\n"
    text = (
        "Here is a function that removes the characters of the second string from the first:\n\n"
        "```python\n" + code + "```\n\nYou can use it like this:\n\n"
        '```python\nprint(remove_dirty_chars("probasscurve", "pros"))  # Output: bacuve\n```\n'
    )
    assert extract_code(text) == Extracted(code, "fenced", "", True)
    text = "First try:\n```python\n" + SOLUTION + "```\nA test:\n```py\nassert add(1, 2) == 3\n```\nDone."
    assert extract_code(text) == Extracted(SOLUTION, "fenced", "", True)


def test_non_python_blocks_are_ignored():
    text = "```python\n" + SOLUTION + '```\nInput:\n```json\n{"a": 1, "b": 2}\n```\n```bash\npython run.py\n```'
    assert extract_code(text).code == SOLUTION
    text = "Install nothing:\n```bash\npip --version\n```\n```python\n" + SOLUTION + "```\n```python\nprint(add(1, 2))\n```"
    assert extract_code(text).code == SOLUTION


@pytest.mark.parametrize("info", ["", "python", "Python3", "py", "python title=solution.py"])
def test_accepted_info_strings(info):
    assert extract_code(f"```{info}\n{SOLUTION}```").code == SOLUTION


def test_empty_python_block_is_skipped():
    assert extract_code("```python\n" + SOLUTION + "```\n```python\n\n```").code == SOLUTION
    assert extract_code("```python\n\n```\n```py\n" + SOLUTION + "```").code == SOLUTION


def test_unterminated_fence_runs_to_the_end():
    assert extract_code("Here:\n```python\n" + SOLUTION) == Extracted(SOLUTION, "fenced", "", True)
    # a closed first block still wins over a later one the budget cut
    text = "```python\n" + SOLUTION + "```\nUsage:\n```python\nprint(add(1,"
    assert extract_code(text) == Extracted(SOLUTION, "fenced", "", True)


def test_backticks_inside_strings_do_not_close_the_fence():
    code = 'def fence():\n    s = "```"\n    t = """\n  ```python\n"""\n    return s + t\n'
    extracted = extract_code("Here:\n```python\n" + code + "```\nthat's it")
    assert extracted.code == code
    ast.parse(extracted.code)


def test_longer_fence_contains_shorter_fences():
    code = 'DOC = """\n```\nnot the end\n```\n"""\n'
    assert extract_code("````python\n" + code + "````").code == code


def test_indented_fence_is_dedented():
    indented = "".join("   " + line + "\n" for line in SOLUTION.splitlines())
    assert extract_code("1. The code:\n   ```python\n" + indented + "   ```").code == SOLUTION


@pytest.mark.parametrize(
    "text",
    [
        "[BEGIN]\n" + SOLUTION + "[DONE]",
        "[BEGIN]\n" + SOLUTION + "[DONE]\n\nYou are an expert Python programmer ... [BEGIN]\nother = 1\n[DONE]",
        "[BEGIN]\n" + SOLUTION,  # budget ran out before [DONE]
        SOLUTION + "[DONE]\nmore text",  # the prompt ended with [BEGIN]
    ],
)
def test_begin_done_span(text):
    assert extract_code(text) == Extracted(SOLUTION, "begin_done", "", True)


def test_fenced_beats_begin_done():
    assert extract_code("[BEGIN]\n```python\n" + SOLUTION + "```\n[DONE]").method == "fenced"


def test_whole_text_when_it_parses():
    assert extract_code("\n\n" + SOLUTION + "\n\n") == Extracted(SOLUTION, "whole", "", True)


@pytest.mark.parametrize(
    "text, code",
    [
        (
            "Here is the solution:\n\nimport math\n\n" + SOLUTION + "\nThis adds a and b, it's O(1).\n",
            "import math\n\n" + SOLUTION,
        ),
        ("total = a + b is what we need, so:\n\n" + SOLUTION + "Done", SOLUTION),  # looks like code, is not
        (
            "Read two numbers:\nn, m = map(int, input().split())\nprint(n + m)\nThat's all.",
            "n, m = map(int, input().split())\nprint(n + m)\n",
        ),
        ("Here:\nx = (1,\n     2)\nprint(x)\nok thanks", "x = (1,\n     2)\nprint(x)\n"),
    ],
)
def test_whole_text_drops_surrounding_prose(text, code):
    assert extract_code(text) == Extracted(code, "whole", "", True)


def test_whole_text_that_never_parses_is_kept_as_is():
    text = "I can't solve this one.\nSorry!"
    assert extract_code(text) == Extracted(text + "\n", "whole", "", True)


@pytest.mark.parametrize(
    "text", ["", "  \n\n", "<think>hm</think>\n", "```python\n```", "Code:\n```\n\n```\nok", "[BEGIN]\n[DONE]"]
)
def test_nothing_left_is_empty(text):
    # Blank marked code is empty, not the markup itself through the whole-text fallback.
    assert (extract_code(text).code, extract_code(text).method) == ("", "empty")


def test_crlf_is_normalised():
    text = "<think>\r\nok\r\n</think>\r\n```python\r\n" + SOLUTION.replace("\n", "\r\n") + "```\r\n"
    extracted = extract_code(text)
    assert (extracted.code, extracted.reasoning) == (SOLUTION, "\nok\n")


def test_completion_style_delegates_to_extract_body():
    extracted = extract_code("    return a + b\r\ndef unrelated():\n    pass\n", style="completion")
    assert extracted == Extracted("    return a + b\n", "completion", "", True)
    assert extract_code("\ndef other(): pass", style="completion").method == "empty"
    assert STOP_SEQUENCES_BY_STYLE["completion"][0] == "\ndef" and STOP_SEQUENCES_BY_STYLE["auto"] == ()


def test_unknown_style_is_refused():
    with pytest.raises(ValueError, match="style"):
        extract_code(SOLUTION, style="chat")


@pytest.fixture(scope="module")
def word_tokenizer():
    words = ["[UNK]", "<think>", "</think>", "add", "a", "and", "b", "first", "then", "return"]
    backend = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    backend.pre_tokenizer = Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", bos_token="<think>")


def test_count_reasoning_tokens(word_tokenizer):
    closed = extract_code("<think>first add a and b then return</think>\n" + SOLUTION)
    assert count_reasoning_tokens(word_tokenizer, closed) == 7  # tags and special tokens not counted
    cut_off = extract_code("<think>first add a")
    assert (cut_off.reasoning_closed, count_reasoning_tokens(word_tokenizer, cut_off)) == (False, 3)
    assert count_reasoning_tokens(word_tokenizer, extract_code(SOLUTION)) == 0
