"""Instruction following scored by a judge (`extra_suites: [{kind: instructions, ...}]`), as Sun et al. 2023
(arXiv 2304.08109) compare full-parameter and LoRA tuning: each answer scored from 0 to 1 by an LLM judge,
reported per category and as the macro average over categories (`ftcompare.evaluate.judge`).

Data: any JSONL file, one instruction a line: `category` and `instruction` (non-empty text), and optionally
`reference` (a reference answer the judge compares with; text or null), `input` (context for the
instruction, as in Alpaca's records) and `id` (text or an integer; default: the line number). Other fields
are ignored, so Alpaca-, Dolly- or BELLE-style files load as they are once they have a `category`. A bad
record fails when the config loads, in one line naming the file, the line and the field.

Prompt formats: "alpaca" (the Stanford Alpaca template, Taori et al. 2023, with its `### Input:` variant for
records that have an input) or "chat" (one user message through the tokenizer's chat template). The model's
answer is its whole reply (reasoning in `<think>…</think>` dropped), generated like every suite's, with
`evaluation.max_new_tokens`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from ftcompare.data.problems import Problem, SuiteInfo, read_jsonl_records, require_text
from ftcompare.data.suites import SuiteSettings, register_suite
from ftcompare.evaluate.judge import JudgeConfig
from ftcompare.schema import existing_file

PROMPT_FORMATS = ("alpaca", "chat")
ALPACA_PROMPT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
ALPACA_PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. Write a "
    "response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n"
    "### Response:\n"
)


@dataclass(frozen=True)
class Instruction:
    task_id: str
    category: str
    instruction: str
    input: str = ""
    reference: str | None = None

    @property
    def request(self) -> str:
        """The instruction as the judge reads it: with its input, where it has one."""
        return f"{self.instruction}\n\nInput:\n{self.input}" if self.input else self.instruction


def _instruction_from_record(record: object, line_number: int) -> Instruction:
    """One JSONL record as an Instruction; ValueError names the field that is missing or of the wrong type."""
    require_text(record, ("category", "instruction"), non_empty=True)
    for name in ("reference", "input"):
        if record.get(name) is not None and not isinstance(record[name], str):
            raise ValueError(f"{name}: must be text or null, got {type(record[name]).__name__}")
    task_id = record.get("id", str(line_number))
    if not isinstance(task_id, (str, int)) or isinstance(task_id, bool):
        raise ValueError(f"id: must be text or an integer, got {type(task_id).__name__}")
    return Instruction(
        task_id=str(task_id),
        category=record["category"].strip(),
        instruction=record["instruction"],
        input=record.get("input") or "",
        reference=record.get("reference") or None,
    )


def load_instructions(path: Path) -> tuple[Instruction, ...]:
    """Read an instruction set (the record format of the module docstring). A file that is not UTF-8, a line
    that is not JSON, a missing or mistyped field, a repeated id or an empty file raise InputError naming the
    file, the line and the field."""
    return read_jsonl_records(
        path, _instruction_from_record, id_field="id", why_distinct="ids must be distinct", what="instructions"
    )


def render_prompt(item: Instruction, fmt: str, tokenizer=None) -> str:
    """What the model sees: the Alpaca template, or the request as one chat message."""
    if fmt == "alpaca":
        template = ALPACA_PROMPT_WITH_INPUT if item.input else ALPACA_PROMPT
        return template.format(instruction=item.instruction, input=item.input)
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise ValueError("the chat format needs a tokenizer with a chat template; use format: alpaca")
    return tokenizer.apply_chat_template([{"role": "user", "content": item.request}], tokenize=False, add_generation_prompt=True)


def to_problem(item: Instruction, fmt: str, tokenizer=None) -> Problem:
    """An instruction as the record every suite is made of: no tests (a judge scores it), the category as its
    family, the request and reference in `meta` for the judge."""
    return Problem(
        task_id=item.task_id,
        prompt=render_prompt(item, fmt, tokenizer),
        completion=item.reference or "",
        tests=(),
        entry_point="",
        family=item.category,
        meta={"instruction": item.request, "reference": item.reference},
    )


def readable_instructions(path: Path | None, info: ValidationInfo) -> Path | None:
    """A field check: the instruction set is read at load, so a bad record fails then."""
    if path is not None and path.is_file():
        load_instructions(path)
    return path


@register_suite
class InstructionSuite(SuiteSettings):
    """Instructions in categories, each answer scored in [0, 1] by a judge (an OpenAI-compatible endpoint or a
    local model); reported per category and as the macro average over categories."""

    kind: Literal["instructions"] = Field(
        default="instructions", description="Selects this suite: categorized instructions scored by a judge."
    )
    name: str = Field(default="instructions", description="The suite's name in records and reports.")
    data: Path = Field(
        description="JSONL, one instruction a line: category, instruction, and optionally reference, input, id "
        "(relative paths: from the config's folder)."
    )
    format: Literal["alpaca", "chat"] = Field(
        default="alpaca",
        description="How the model sees an instruction: alpaca (the Stanford Alpaca template) or chat (the "
        "tokenizer's chat template).",
    )
    judge: JudgeConfig = Field(description="Who scores the answers: kind endpoint (OpenAI-compatible) or local (a model here).")

    _files = field_validator("data")(existing_file)
    _records = field_validator("data")(readable_instructions)

    def load(self, tokenizer=None) -> tuple[tuple[Problem, ...], SuiteInfo]:
        problems = tuple(to_problem(item, self.format, tokenizer) for item in load_instructions(self.data))
        return problems, SuiteInfo(in_domain=self.in_domain, extraction="answer", scoring="judge", judge=self.judge)

    def count(self) -> int:
        return len(load_instructions(self.data))
