"""Execution-based scoring: completions → programs → sandbox → per-sample records → pass@k.

Each distinct program runs once (sampled completions of a small model repeat a lot); the verdict is
shared by every sample with the same program text, which changes no result since the sandbox is
deterministic up to timing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ftcompare.data.problems import Problem
from ftcompare.evaluate.extraction import count_reasoning_tokens, extract_code
from ftcompare.evaluate.generation import Generation
from ftcompare.evaluate.metrics import mean_stderr, pass_at_k
from ftcompare.evaluate.sandbox import run_programs


@dataclass(frozen=True)
class SandboxSettings:
    timeout_s: float
    memory_mb: int
    workers: int


def sample_records(
    problems: Sequence[Problem],
    generations: Sequence[Sequence[Generation]],
    *,
    suite: str,
    mode: str,
    extraction: str = "completion",
    tokenizer=None,
) -> list[dict]:
    """One record per (problem, sample) with the prompt, raw completion, extracted code and program.

    `extraction` is `extract_code`'s style; with a tokenizer, reasoning (<think>) tokens are counted.
    """
    records = []
    for problem, samples in zip(problems, generations, strict=True):
        for index, generation in enumerate(samples):
            extracted = extract_code(generation.text, style=extraction)
            code = extracted.code
            records.append(
                {
                    "suite": suite,
                    "mode": mode,
                    "task_id": problem.task_id,
                    "family": problem.family,
                    "sample": index,
                    "prompt": problem.prompt,
                    "completion": generation.text,
                    "extracted_code": code,
                    "new_tokens": generation.new_tokens,
                    "hit_budget": generation.hit_budget,
                    "extraction": extracted.method,
                    "reasoning_tokens": count_reasoning_tokens(tokenizer, extracted) if tokenizer else None,
                    "reasoning_closed": extracted.reasoning_closed,
                    "program": problem.program(code),
                }
            )
    return records


def execute_records(records: list[dict], settings: SandboxSettings) -> list[dict]:
    """Run each record's program in the sandbox (each distinct program once); add status, passed, exception,
    `checks` (how its tests were checked: how many on plain data outside the program's interpreter, how many
    in it) and `isolation` (bubblewrap or the fallback)."""
    distinct = list(dict.fromkeys(record["program"] for record in records))
    results = dict(
        zip(
            distinct, run_programs(distinct, timeout_s=settings.timeout_s, memory_mb=settings.memory_mb, workers=settings.workers)
        )
    )
    scored = []
    for record in records:
        result = results[record["program"]]
        scored.append(
            {
                **record,
                "status": result.status,
                "passed": result.passed,
                "exception": result.exception,
                "checks": result.checks,
                "isolation": result.isolation.get("isolation"),
            }
        )
    return scored


def _by_problem(records: Sequence[dict]) -> dict[str, list[bool]]:
    per_problem: dict[str, list[bool]] = {}
    for record in records:
        per_problem.setdefault(record["task_id"], []).append(record["passed"])
    return per_problem


def pass_at_k_table(records: Sequence[dict], ks: Sequence[int]) -> dict:
    """Mean unbiased pass@k over problems, from scored records of one suite and mode; with each mean's
    standard error over problems (`stderr`) and every problem's own pass@1 estimate, c/n
    (`per_problem_pass@1`: what paired comparisons of two runs read).

    k larger than a problem's number of samples is skipped (greedy decoding gives n=1: pass@1 only).
    """
    per_problem = _by_problem(records)
    if not per_problem:
        return {}
    n = min(len(v) for v in per_problem.values())
    table, stderr = {}, {}
    for k in ks:
        if k <= n:
            values = [pass_at_k(len(v), sum(v), k) for v in per_problem.values()]
            table[f"pass@{k}"] = sum(values) / len(values)
            stderr[f"pass@{k}"] = mean_stderr(values)
    return {**table, "stderr": stderr, "per_problem_pass@1": {task: sum(v) / len(v) for task, v in per_problem.items()}}
