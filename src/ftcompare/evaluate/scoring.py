"""Execution-based scoring: completions → programs → sandbox → per-sample records → pass@k.

Each distinct program runs once (sampled completions of a small model repeat a lot); the verdict is
shared by every sample with the same program text, which changes no result since the sandbox is
deterministic up to timing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ftcompare.data.problems import Problem
from ftcompare.evaluate.extraction import count_reasoning_tokens, extract_code
from ftcompare.evaluate.generation import Generation
from ftcompare.evaluate.metrics import pass_at_k
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
    """Run each record's program in the sandbox (each distinct program once); add status and passed."""
    distinct = list(dict.fromkeys(record["program"] for record in records))
    results = dict(zip(distinct, run_programs(distinct, timeout_s=settings.timeout_s, memory_mb=settings.memory_mb,
                                              workers=settings.workers)))
    scored = []
    for record in records:
        result = results[record["program"]]
        scored.append({**record, "status": result.status, "passed": result.passed, "exception": result.exception})
    return scored


def pass_at_k_table(records: Sequence[dict], ks: Sequence[int]) -> dict[str, float]:
    """Mean unbiased pass@k over problems, from scored records of one suite and mode.

    k larger than a problem's number of samples is skipped (greedy decoding gives n=1: pass@1 only).
    """
    per_problem: dict[str, list[bool]] = {}
    for record in records:
        per_problem.setdefault(record["task_id"], []).append(record["passed"])
    if not per_problem:
        return {}
    n = min(len(v) for v in per_problem.values())
    table = {}
    for k in ks:
        if k <= n:
            values = [pass_at_k(len(v), sum(v), k) for v in per_problem.values()]
            table[f"pass@{k}"] = sum(values) / len(values)
    return table
