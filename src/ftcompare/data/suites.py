"""Tasks and evaluation suites by kind: the protocol a data module implements and the registries every list of
kinds is read from (the config's unions, `ftcompare eval --benchmark`, `ftcompare verify-benchmark`).

- A **task** (`TaskSettings`, under `task:` or `sequence:`) is fine-tuned on: `load` gives its train split and
  its own evaluation suites (`suite_names`, known before anything loads), `counts` what a dry run reports.
- A **suite** (`SuiteSettings`, under `extra_suites:`) is evaluated only: `load` gives its problems and how
  they are scored, `count` what a dry run reports.
- A **benchmark** is a named way to score a model without fine-tuning, and to check a data set's reference
  solutions in the sandbox: a task or suite class with fixed settings (`register_benchmark`).

Adding a suite is one module: its config class (with `kind: Literal[...]`) registered with
`@register_task` or `@register_suite`, and its loader. Every task and suite may set its own sandbox limits
(`timeout_s`, `memory_mb`: pandas or numpy problems need more than the evaluation's defaults)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import Field

from ftcompare.schema import Registry, Strict, kind_of

if TYPE_CHECKING:
    from ftcompare.data.problems import Problem, SuiteInfo, TaskSplits


class SandboxLimits(Strict):
    """The sandbox limits a task or suite may set for its own programs (None: the evaluation's)."""

    timeout_s: float | None = Field(
        default=None,
        gt=0,
        description="Seconds a program of this task or suite may run in the sandbox (None: evaluation.timeout_s).",
    )
    memory_mb: int | None = Field(
        default=None,
        ge=64,
        description="Memory a program of this task or suite may use in the sandbox, in MB (None: evaluation.memory_mb).",
    )

    def limited(self, info: SuiteInfo) -> SuiteInfo:
        """`info` with these limits where they are set."""
        return replace(
            info,
            timeout_s=self.timeout_s if self.timeout_s is not None else info.timeout_s,
            memory_mb=self.memory_mb if self.memory_mb is not None else info.memory_mb,
        )


class TaskSettings(SandboxLimits):
    """A task a study fine-tunes on. Subclasses declare `kind` and their fields and implement the three methods."""

    def suite_names(self) -> list[str]:
        """The evaluation suites the task provides ("test", and "ood" or "validation" where it has one)."""
        raise NotImplementedError

    def load(self, tokenizer=None) -> TaskSplits:
        """The train split and the task's own evaluation suites (the tokenizer renders chat prompts)."""
        raise NotImplementedError

    def counts(self) -> tuple[int | None, dict[str, int | None]]:
        """(training examples, problems per suite), counted offline; None where unknown (hub data)."""
        raise NotImplementedError


class SuiteSettings(SandboxLimits):
    """An evaluation-only suite. Subclasses declare `kind`, a default `name` and their fields."""

    name: str = Field(description="The suite's name in records and reports.")
    in_domain: bool = Field(default=False, description="Report the suite as in domain (default: out of domain).")

    def load(self, tokenizer=None) -> tuple[tuple[Problem, ...], SuiteInfo]:
        """The suite's problems and how they are generated, extracted and scored."""
        raise NotImplementedError

    def count(self) -> int | None:
        """Problems the suite scores, counted offline (None: unknown)."""
        raise NotImplementedError


TASKS: Registry[type[TaskSettings]] = Registry("task")
SUITES: Registry[type[SuiteSettings]] = Registry("suite")


def register_task(cls: type[TaskSettings]) -> type[TaskSettings]:
    """Class decorator: `cls` becomes a task kind the config accepts under `task:` and `sequence:`."""
    TASKS.add(kind_of(cls), cls)
    return cls


def register_suite(cls: type[SuiteSettings]) -> type[SuiteSettings]:
    """Class decorator: `cls` becomes a suite kind the config accepts under `extra_suites:`."""
    SUITES.add(kind_of(cls), cls)
    return cls


def load_task(task: TaskSettings, tokenizer=None) -> TaskSplits:
    """A task's splits, each suite with the task's sandbox limits."""
    splits = task.load(tokenizer)
    return replace(splits, info={name: task.limited(splits.suite_info(name)) for name in splits.suites})


def load_suite(suite: SuiteSettings, tokenizer=None) -> tuple[tuple[Problem, ...], SuiteInfo]:
    """An evaluation-only suite's problems and settings, with its sandbox limits."""
    problems, info = suite.load(tokenizer)
    return problems, suite.limited(info)


@dataclass(frozen=True)
class Benchmark:
    """A benchmark: a task or suite class with fixed settings. `configure` gives the settings `ftcompare eval`
    scores (`evaluation_problems`); `references` the problems whose reference solutions (and buggy versions, in `meta["buggy"]`) the
    sandbox checks, and the programs left out with why."""

    settings: type[TaskSettings] | type[SuiteSettings]
    options: dict

    def configure(self, data: Path | None, prompt_format: str | None = None) -> TaskSettings | SuiteSettings:
        """The validated settings (a missing or bad file fails here, before any model loads)."""
        fields = {**({"data": data} if data is not None else {}), **self.options}  # absent: the class's default or "required"
        if prompt_format is not None:
            fields["format"] = prompt_format
        return self.settings(**fields)

    def references(self, data: Path | None) -> tuple[list[Problem], dict[str, str]]:
        return self.settings.reference_problems(data, **self.options)


BENCHMARKS: Registry[Benchmark] = Registry("benchmark")


def evaluation_problems(settings: TaskSettings | SuiteSettings, tokenizer=None) -> tuple[tuple[Problem, ...], SuiteInfo]:
    """The problems a model is scored on without fine-tuning: a task's test suite, or the suite itself."""
    if isinstance(settings, TaskSettings):
        splits = load_task(settings, tokenizer)
        return splits.suites["test"], splits.suite_info("test")
    return load_suite(settings, tokenizer)


def register_benchmark(name: str, settings: type[TaskSettings] | type[SuiteSettings], **options) -> None:
    """`name` scores a model on `settings` with these fixed fields (`ftcompare eval`, `verify-benchmark`); the
    class provides `reference_problems(data, **options)` for the sandbox check."""
    BENCHMARKS.add(name, Benchmark(settings, options), same=lambda a, b: a == b)
