"""The record every code task is made of, and how a completion becomes a program to execute."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path


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
        """The program the sandbox runs: the code prefix, the completion, setup code, then the asserts."""
        parts = [self.code_prefix + completion, self.setup, "\n".join(self.tests)]
        return "\n\n".join(part for part in parts if part) + "\n"

    def to_json(self) -> dict:
        record = asdict(self)
        record["tests"] = list(self.tests)
        return record


@dataclass(frozen=True)
class SuiteInfo:
    """How one evaluation suite is generated, extracted and scored."""

    in_domain: bool = True
    extraction: str = "completion"  # "completion": a body after a signature prompt; "auto": chat/few-shot output
    stop_strings: tuple[str, ...] = ()
    scoring: str = "pass"  # "pass": pass@k; "repair": pass@k plus line-diff F1 against the reference fix


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


def load_jsonl_problems(path: Path, split: str) -> tuple[Problem, ...]:
    """Read user problems: one JSON object a line with prompt and completion, and optionally task_id,
    tests (list of asserts; none for fine-tuning-only data), entry_point, code_prefix, setup."""
    problems = []
    for line_number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            problems.append(
                Problem(
                    task_id=str(record.get("task_id", f"{split}/{line_number}")),
                    prompt=record["prompt"],
                    completion=record["completion"],
                    tests=tuple(record.get("tests", ())),
                    entry_point=record.get("entry_point", ""),
                    family=record.get("family", split),
                    code_prefix=record.get("code_prefix", ""),
                    setup=record.get("setup", ""),
                )
            )
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise ValueError(f"{path}:{line_number}: not a problem record ({error})") from None
    if not problems:
        raise ValueError(f"{path}: no problems")
    return tuple(problems)
