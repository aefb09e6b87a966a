"""A task from the user's own JSONL files: one problem a line (see `ftcompare.data.problems.load_jsonl_problems`
for the record format), a train file, a test file and optionally an out-of-domain file."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from ftcompare.data.problems import TaskSplits, load_jsonl_problems, readable_problems
from ftcompare.data.suites import TaskSettings, register_task
from ftcompare.schema import existing_file


@register_task
class JsonlTask(TaskSettings):
    """User problems: JSONL records with `task_id`, `prompt`, `completion`, `tests` (a list of asserts)."""

    kind: Literal["jsonl"] = Field(default="jsonl", description="Selects this task: your own problems from JSONL files.")
    train: Path = Field(description="Problems to fine-tune on (relative paths: from the config's folder).")
    test: Path = Field(description="Problems of the in-domain suite `test`; each needs at least one assert.")
    ood: Path | None = Field(default=None, description="Problems of the out-of-domain suite `ood` (None: no such suite).")

    _files = field_validator("train", "test", "ood")(existing_file)

    @field_validator("test", "ood")
    @classmethod
    def _not_the_training_file(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        train = info.data.get("train")
        if value is not None and train is not None and value.resolve() == train.resolve():
            raise ValueError(
                f"{value} is also the train file: a suite scored on the problems the model trains on "
                "measures memorisation, not the task"
            )
        return value

    _problems = field_validator("train", "test", "ood")(readable_problems)

    def suite_names(self) -> list[str]:
        return ["test", "ood"] if self.ood is not None else ["test"]

    def load(self, tokenizer=None) -> TaskSplits:
        suites = {"test": load_jsonl_problems(self.test, "test")}
        if self.ood is not None:
            suites["ood"] = load_jsonl_problems(self.ood, "ood")
        return TaskSplits(name="jsonl", train=load_jsonl_problems(self.train, "train"), suites=suites)

    def counts(self) -> tuple[int, dict[str, int]]:
        splits = self.load()
        return len(splits.train), {name: len(problems) for name, problems in splits.suites.items()}
