"""Code extraction from what chat and reasoning models write, and the token count of their reasoning.

`extract_code(text)` (style "auto") works on the decoded new tokens, CRLF and lone CR turned into LF.
After step 1, the first rule whose markers appear in the answer decides; a blank result is "empty", not
a fall-through to the next rule, since the model did mark where its code is.

1. Strip reasoning (`split_reasoning`): the span inside `<think>…</think>` is removed; a bare leading
   `</think>` means the chat template opened `<think>` in the prompt (pass `think_opened_in_prompt=True`
   so that an output with no tag at all counts as unterminated reasoning). A model that opened `<think>`
   and never closed it ran out of budget while thinking and has not answered: code "" and method "empty",
   whatever the reasoning contains. Code that appears only inside the reasoning is never extracted.
2. "fenced": the FIRST backtick-fenced block whose info string (first word, any case) is python, py,
   python3, py3 or empty; blank blocks are skipped when a non-blank one exists. This is
   lm-evaluation-harness's rule for chat answers: its `mbpp_instruct` task (filter "extract_code",
   `lm_eval/tasks/mbpp/utils.py` `extract_code_blocks`) keeps `matches[0]`, the first ```...``` block,
   and its `humaneval_instruct` task (`build_predictions_instruct`) cuts the answer at the first ```, so
   a usage example or test in a later block is never the answer. Where we differ from the harness's
   regex, it is to read the markup as written: a fence is a line of 3+ backticks (indent allowed) and
   closes at a line of at least as many backticks and nothing else, so backticks inside code lines
   (`s = "```"`) never close it; blocks in other languages (```json, ```bash, ...) are skipped, where the
   harness would take a leading one. An unterminated fence runs to the end of the text (the budget ran
   out inside it); the harness falls back to the whole text then, which is the same code when the
   answer is only that block.
3. "begin_done": the span after the first `[BEGIN]` up to the next `[DONE]` (MBPP, Austin et al. 2021);
   `[DONE]` is optional at the end. A `[DONE]` with no `[BEGIN]` means the prompt ended with `[BEGIN]`:
   the span runs from the start of the text.
4. "whole": the whole remaining text, if it is code: it parses as Python and no top-level statement is a
   bare name (a one-word line of prose such as "Done" parses too). If it is not, the prose around the code
   ("Here is the solution:" / "This works because ...") is dropped: the first span that is code, trying
   starts at column-0 lines that look like code (`def`, `async def`, `class`, `import`, `from X import`,
   `@`, `if __name__`, an assignment) from the earliest, and for each start the ends just before a
   column-0 line from the latest. If none is, the whole text as it is (the sandbox will fail it and
   the per-sample log shows why).
5. "empty": nothing is left.

Every extracted block is dedented and stripped of surrounding blank lines, and ends with one newline.

Style "completion" is for prompts that opened a function (HumanEval): after step 1 the answer goes to
`generation.extract_body`, which cuts at the first top-level line; method "completion" (or "empty").

Style "answer" is for prose a judge reads (instruction suites): after step 1 the whole answer, stripped of
surrounding whitespace; method "answer" (or "empty").
"""

from __future__ import annotations

import ast
import re
import textwrap
from dataclasses import dataclass

from ftcompare.evaluate.generation import extract_body

STYLES = ("auto", "completion", "answer")

# Stop strings to pass to a generator for each style. "auto" has none: a chat or reasoning answer only
# ends at EOS, and HumanEval's stops ("\ndef", "\n#", ...) would cut it inside reasoning or prose.
STOP_SEQUENCES_BY_STYLE: dict[str, tuple[str, ...]] = {
    "auto": (),
    "completion": ("\ndef", "\nclass", "\nif", "\nprint", "\n#"),
    "answer": (),
}

PYTHON_INFO_STRINGS = frozenset({"", "python", "py", "python3", "py3"})

_FENCE_OPEN = re.compile(r"^[ \t]*(`{3,})[ \t]*([^`]*)$")
_CODE_START = re.compile(
    r"^(?:def\s|async\s+def\s|class\s|import\s|from\s+[\w.]+\s+import\s|@|if\s+__name__"
    r"|[A-Za-z_][\w.]*(?:\s*,\s*[A-Za-z_][\w.]*)*\s*(?::[^=]+)?[-+*/%|&^]?=(?!=))"
)


@dataclass(frozen=True)
class Extracted:
    code: str
    method: str  # "fenced", "begin_done", "whole", "completion" or "empty"
    reasoning: str  # the text inside <think>…</think> (or after an unterminated <think>); "" without one
    reasoning_closed: bool  # False when <think> was opened and never closed (budget ran out while thinking)


def split_reasoning(
    text: str, open_tag: str = "<think>", close_tag: str = "</think>", *, think_opened_in_prompt: bool = False
) -> tuple[str, str, bool]:
    """(reasoning, answer, closed) of a model output.

    `<think>R</think>A` gives (R, A, True); `R</think>A` (the template opened `<think>` in the prompt) too.
    `P<think>R` gives (R, P, False). Text with neither tag is all answer, unless `think_opened_in_prompt`
    says the prompt ended inside `<think>`: then it is all unterminated reasoning. Tags are in neither part.
    """
    open_at, close_at = text.find(open_tag), text.find(close_tag)
    if close_at != -1 and (open_at == -1 or close_at < open_at):
        return text[:close_at], text[close_at + len(close_tag) :], True
    if open_at == -1:
        return (text, "", False) if think_opened_in_prompt else ("", text, True)
    start = open_at + len(open_tag)
    close_at = text.find(close_tag, start)
    if close_at == -1:
        return text[start:], text[:open_at], False
    return text[start:close_at], text[:open_at] + text[close_at + len(close_tag) :], True


def extract_code(text: str, *, style: str = "auto", think_opened_in_prompt: bool = False) -> Extracted:
    """The code in a model output, by the order in the module docstring.

    `think_opened_in_prompt`: the chat template put `<think>` in the prompt, so an output without any tag
    is reasoning cut off by the budget, not an answer.
    """
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    reasoning, answer, closed = split_reasoning(text, think_opened_in_prompt=think_opened_in_prompt)
    if not closed:
        return Extracted("", "empty", reasoning, False)
    if style == "answer":
        return Extracted(answer.strip(), "answer" if answer.strip() else "empty", reasoning, True)
    if style == "completion":
        body = extract_body(answer)
        if body.strip():
            return Extracted(body, "completion", reasoning, True)
        return Extracted("", "empty", reasoning, True)
    for method, find in (("fenced", _first_python_fence), ("begin_done", _begin_done_span), ("whole", _whole)):  # noqa: B007  (read after the loop)
        code = find(answer)
        if code is not None:
            break
    if not code.strip():
        return Extracted("", "empty", reasoning, True)
    return Extracted(_tidy(code), method, reasoning, True)


def count_reasoning_tokens(tokenizer, extracted: Extracted) -> int:
    """Tokens of `extracted.reasoning` under `tokenizer`, the think tags and special tokens excluded.

    Re-encodes the decoded text, so it equals the generated count when the tokenizer round-trips
    (byte-level BPE does); 0 without reasoning.
    """
    if not extracted.reasoning:
        return 0
    return len(tokenizer(extracted.reasoning, add_special_tokens=False)["input_ids"])


def _first_python_fence(text: str) -> str | None:
    """The body of the first non-blank Python (or unmarked) fenced block; "" when the only such blocks are
    blank; None without one."""
    lines = text.split("\n")
    found = None
    i = 0
    while i < len(lines):
        opening = _FENCE_OPEN.match(lines[i])
        if not opening:
            i += 1
            continue
        fence, info = opening.group(1), opening.group(2).strip()
        closing = re.compile(rf"^[ \t]*`{{{len(fence)},}}[ \t]*$")
        end = next((j for j in range(i + 1, len(lines)) if closing.match(lines[j])), len(lines))
        body = "\n".join(lines[i + 1 : end])
        language = info.split()[0].lower() if info else ""
        if language in PYTHON_INFO_STRINGS:
            if body.strip():
                return body
            found = ""
        i = end + 1
    return found


def _begin_done_span(text: str) -> str | None:
    begin, done = text.find("[BEGIN]"), text.find("[DONE]")
    if begin == -1:
        return text[:done] if done != -1 else None
    start = begin + len("[BEGIN]")
    done = text.find("[DONE]", start)
    return text[start:] if done == -1 else text[start:done]


def _whole(text: str) -> str:
    if _first_bad_line(text) is None:
        return text
    lines = text.split("\n")
    top_level_ends = [j for j in range(1, len(lines) + 1) if j == len(lines) or lines[j][:1].strip()]
    for start, line in enumerate(lines):
        if not _CODE_START.match(line):
            continue
        limit = len(lines)  # spans of this start must end at or before `limit`
        for end in reversed(top_level_ends):
            if end <= start:
                break
            if end > limit:
                continue
            bad = _first_bad_line("\n".join(lines[start:end]))
            if bad is None:
                return "\n".join(lines[start:end])
            # Every longer-ending span that keeps the bad line fails there too: skip past them (linear time).
            limit = min(end - 1, start + bad - 1)
    return text


def _first_bad_line(text: str) -> int | None:
    """None when `text` is code: it parses, and no top-level statement is a bare name (a prose word like
    "Done" parses too). Otherwise the 1-based line of the first problem."""
    try:
        tree = ast.parse(text)
    except SyntaxError as error:
        return max(1, error.lineno or 1)
    except ValueError:  # null bytes
        return 1
    bare = [node.lineno for node in tree.body if isinstance(node, ast.Expr) and isinstance(node.value, ast.Name)]
    return bare[0] if bare else None


def _tidy(code: str) -> str:
    return textwrap.dedent(code).strip("\n").rstrip() + "\n"
