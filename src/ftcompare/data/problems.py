"""The record every code task is made of, and how a completion becomes a program to execute."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TypeVar

from pydantic import ValidationInfo

from ftcompare.schema import InputError

# the label of a token the loss ignores (torch's cross-entropy default): a prompt's, or padding
IGNORE_INDEX = -100


# The line between a program and its checks (setup, then tests) in what Problem.program builds: the sandbox
# runs what follows it after the program has finished, and compares `assert CALL == LITERAL` on plain data
# outside the program's interpreter (ftcompare.evaluate.sandbox).
T = TypeVar("T")  # a record read from a JSONL file (it has a task_id)
TESTS_MARKER = "# ---- tests (ftcompare sandbox: run after the program) ----"


@dataclass(frozen=True)
class Problem:
    """One code-synthesis problem.

    `prompt` is what the model sees; `code_prefix` is the part of the prompt that is code and belongs
    to the program (a signature and docstring, HumanEval-style; empty when the prompt is prose).
    `completion` is the reference solution that follows the prompt. `tests` are assert statements.
    """

    task_id: str
    prompt: str
    completion: str
    tests: tuple[str, ...]
    entry_point: str
    family: str = ""
    code_prefix: str = ""
    setup: str = ""
    meta: dict = field(default_factory=dict)

    def program(self, completion: str) -> str:
        """The program the sandbox runs: the code prefix and the completion, then (after TESTS_MARKER, where
        there is any) the setup code and the asserts."""
        checks = [part for part in (self.setup, "\n".join(self.tests)) if part]
        parts = [self.code_prefix + completion, *([TESTS_MARKER, *checks] if checks else [])]
        return "\n\n".join(part for part in parts if part) + "\n"

    def to_json(self) -> dict:
        record = asdict(self)
        record["tests"] = list(self.tests)
        return record


@dataclass(frozen=True)
class SuiteInfo:
    """How one evaluation suite is generated, extracted and scored."""

    in_domain: bool = True
    # "completion": a body after a signature prompt; "auto": chat/few-shot output; "answer": the whole reply (judged)
    extraction: str = "completion"
    stop_strings: tuple[str, ...] = ()
    scoring: str = "pass"  # "pass": pass@k; "repair": pass@k plus token F1 against the reference fix; "judge": a judge's scores
    timeout_s: float | None = None  # the sandbox's limits for this suite's programs (None: the evaluation's)
    memory_mb: int | None = None
    judge: object | None = None  # scoring "judge": the judge's settings (ftcompare.evaluate.judge)


@dataclass(frozen=True)
class TaskSplits:
    """A task's splits: `train` for fine-tuning, then the evaluation suites by name ("test", "ood", ...)."""

    name: str
    train: tuple[Problem, ...]
    suites: dict[str, tuple[Problem, ...]]
    info: dict[str, SuiteInfo] = field(default_factory=dict)

    def suite_info(self, suite: str) -> SuiteInfo:
        """The suite's settings; by default "test" is in domain and every other suite out of domain."""
        return self.info.get(suite, SuiteInfo(in_domain=suite == "test"))


# the optional fields of a problem record, all text (a list of asserts for `tests`)
OPTIONAL_TEXT_FIELDS = ("entry_point", "family", "code_prefix", "setup")
# suites that are scored: a problem there needs asserts, or every program would pass
SCORED_SPLITS = ("test", "ood")


def require_text(record: object, names: tuple[str, ...], non_empty: bool = False) -> None:
    """Check that a JSONL record is an object whose fields `names` are text (`non_empty`: not blank either);
    ValueError names the first field that is missing or of the wrong type."""
    if not isinstance(record, dict):
        raise ValueError(f"not a JSON object but {type(record).__name__}")
    for name in names:
        if name not in record:
            raise ValueError(f"{name}: missing (a record needs {' and '.join(names)})")
        if not isinstance(record[name], str):
            raise ValueError(f"{name}: must be text, got {type(record[name]).__name__}")
        if non_empty and not record[name].strip():
            raise ValueError(f"{name}: empty")


def _problem_from_record(record: object, split: str, line_number: int) -> Problem:
    """One JSONL record as a Problem; ValueError names the field that is missing or of the wrong type."""
    require_text(record, ("prompt", "completion"))
    tests = record.get("tests", [])
    if isinstance(tests, str):  # iterating it would make each character an "assert"
        raise ValueError('tests: must be a list of assert statements, got one string; write ["assert ...", ...]')
    if not isinstance(tests, list) or not all(isinstance(test, str) for test in tests):
        raise ValueError(f"tests: must be a list of assert statements (strings), got {json.dumps(tests)[:80]}")
    if split in SCORED_SPLITS and not tests:
        raise ValueError(f"tests: a problem of the {split} suite needs at least one assert (without one any program passes)")
    task_id = record.get("task_id", f"{split}/{line_number}")
    if not isinstance(task_id, (str, int)) or isinstance(task_id, bool):
        raise ValueError(f"task_id: must be text or an integer, got {type(task_id).__name__}")
    for name in OPTIONAL_TEXT_FIELDS:
        if name in record and not isinstance(record[name], str):
            raise ValueError(f"{name}: must be text, got {type(record[name]).__name__}")
    return Problem(
        task_id=str(task_id),
        prompt=record["prompt"],
        completion=record["completion"],
        tests=tuple(tests),
        entry_point=record.get("entry_point", ""),
        family=record.get("family", split),
        code_prefix=record.get("code_prefix", ""),
        setup=record.get("setup", ""),
    )


def load_jsonl_problems(path: Path, split: str) -> tuple[Problem, ...]:
    """Read user problems: one JSON object a line with prompt and completion (text), and optionally task_id,
    tests (a list of asserts; required in the scored splits, test and ood), entry_point, code_prefix, setup.

    A file that is not UTF-8, a line that is not JSON, a field of the wrong type, a repeated task_id or no
    problems at all raise InputError naming the file, the line and the field."""
    return read_jsonl_records(
        path,
        lambda record, line_number: _problem_from_record(record, split, line_number),
        id_field="task_id",
        why_distinct="per-problem scores need distinct ids",
        what="problems",
    )


def read_jsonl_records(
    path: Path, parse: Callable[[object, int], T], *, id_field: str, why_distinct: str, what: str
) -> tuple[T, ...]:
    """The records of a JSONL file, each line parsed by `parse(record, line_number)` (a ValueError names the field);
    a file that is not UTF-8, a line that is not JSON or does not parse, a repeated `task_id` or an empty file raise
    InputError naming the file and the line."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        line = error.object[: error.start].count(b"\n") + 1
        raise InputError(
            f"{path}:{line}", f"not UTF-8 text (byte {error.object[error.start]:#04x}); save the file as UTF-8"
        ) from None
    except OSError as error:
        raise InputError(path, f"cannot read it: {error.strerror or error}") from None
    items, first_line = [], {}
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = parse(json.loads(line), line_number)
        except json.JSONDecodeError as error:
            raise InputError(f"{path}:{line_number}", f"not valid JSON ({error.msg} at column {error.colno})") from None
        except ValueError as error:
            raise InputError(f"{path}:{line_number}", str(error)) from None
        if item.task_id in first_line:
            raise InputError(
                f"{path}:{line_number}",
                f"{id_field}: {item.task_id!r} is also the {id_field} of line {first_line[item.task_id]} ({why_distinct})",
            )
        first_line[item.task_id] = line_number
        items.append(item)
    if not items:
        raise InputError(path, f"no {what} (the file is empty; one JSON object a line)")
    return tuple(items)


def readable_problems(path: Path | None, info: ValidationInfo) -> Path | None:
    """A field check: a problems JSONL is read at load, so a bad record fails then, before anything is written
    or trained (InputError naming the file, line and field)."""
    if path is not None and path.is_file():
        load_jsonl_problems(path, info.field_name)
    return path
