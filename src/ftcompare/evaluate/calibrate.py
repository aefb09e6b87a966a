"""Judge calibration (`ftcompare judge-calibrate`): how far a judge's scores agree with execution.

A code suite has ground truth: the sandbox's pass/fail. Scoring the same answers with the judge (each
record's prompt as the instruction, its extracted code as the answer, no reference) measures the judge where
the truth is known: accuracy of "score ≥ threshold means passed" and ROC AUC over the scored answers, with
the counts behind them and the accuracy of always guessing the majority class. Records:
`judge_calibration_<suite>_<mode>.json` (metrics, the judge's record) and `.jsonl` (each answer's verdicts).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from ftcompare.evaluate.judge import EndpointJudge, JudgeItem, LocalJudge, judge_answers, verdict_counts
from ftcompare.runs.store import read_jsonl, stored, write_json, write_jsonl
from ftcompare.schema import InputError

SAMPLES_FILE = "samples.jsonl"


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def roc_auc(scores: Sequence[float], labels: Sequence[bool]) -> float | None:
    """The area under the ROC curve of `scores` for `labels`: the probability that a positive outscores a
    negative, ties counting a half (the Mann–Whitney rank formula with mid-ranks); None without both classes."""
    positives = sum(labels)
    negatives = len(labels) - positives
    if not positives or not negatives:
        return None
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    ranks = [0.0] * len(scores)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and scores[order[end + 1]] == scores[order[start]]:
            end += 1
        for position in range(start, end + 1):
            ranks[order[position]] = (start + end) / 2 + 1  # the tied block's mid-rank, 1-based
        start = end + 1
    positive_ranks = sum(rank for rank, label in zip(ranks, labels) if label)
    return (positive_ranks - positives * (positives + 1) / 2) / (positives * negatives)


def calibration_metrics(records: Sequence[dict], threshold: float = 0.5) -> dict:
    """Agreement of judge scores with execution verdicts (`passed`) over the records the judge scored:
    accuracy at `threshold`, its confusion counts, ROC AUC, the majority-class accuracy to compare with, and
    the verdicts that were not scores (excluded)."""
    scored = [r for r in records if r["judge_verdict"] == "scored"]
    scores = [r["judge_score"] for r in scored]
    labels = [bool(r["passed"]) for r in scored]
    predicted = [score >= threshold for score in scores]
    pairs = list(zip(predicted, labels))
    return {
        "samples": len(records),
        **verdict_counts(records),
        "passed": sum(labels),
        "failed": len(labels) - sum(labels),
        "threshold": threshold,
        "accuracy": _mean([p == label for p, label in pairs]),
        "majority_accuracy": max(sum(labels), len(labels) - sum(labels)) / len(labels) if labels else None,
        "true_positives": sum(p and label for p, label in pairs),
        "false_positives": sum(p and not label for p, label in pairs),
        "true_negatives": sum(not p and not label for p, label in pairs),
        "false_negatives": sum(not p and label for p, label in pairs),
        "roc_auc": roc_auc(scores, labels),
        "mean_score_passed": _mean([s for s, label in zip(scores, labels) if label]),
        "mean_score_failed": _mean([s for s, label in zip(scores, labels) if not label]),
    }


def executed_records(run_dir: Path, suite: str, mode: str) -> list[dict]:
    """The records of one suite and mode in a run's `samples.jsonl` that carry an execution verdict;
    InputError naming what is missing (no records, no such suite, a suite scored by a judge)."""
    path = Path(run_dir) / SAMPLES_FILE
    if not stored(path).is_file():
        raise InputError(run_dir, f"no {SAMPLES_FILE} (a run directory, _base, or an `ftcompare eval` output folder)")
    records = read_jsonl(path)
    chosen = [r for r in records if r.get("suite") == suite and r.get("mode") == mode]
    if not chosen:
        found = sorted({f"{r.get('suite')} ({r.get('mode')})" for r in records})
        raise InputError(path, f"no {mode} records of suite {suite!r}; it holds {', '.join(found) or 'none'}", field="--suite")
    if any("passed" not in r for r in chosen):
        raise InputError(
            path, f"suite {suite!r} has no execution verdicts (it is not a code suite run in the sandbox)", field="--suite"
        )
    return chosen


def calibrate_judge(
    run_dir: Path,
    settings: EndpointJudge | LocalJudge,
    *,
    suite: str = "test",
    mode: str = "greedy",
    threshold: float = 0.5,
    limit: int | None = None,
    device: str = "cpu",
    output: Path | None = None,
) -> tuple[dict, Path]:
    """Score a run's executed answers with the judge; write the calibration record and the per-answer verdicts
    (into `output`, default the run directory) and return the record and its path."""
    records = executed_records(run_dir, suite, mode)[:limit]
    items = [JudgeItem(r.get("family") or suite, r["prompt"], r["extracted_code"]) for r in records]
    started = time.perf_counter()
    fields, judge = judge_answers(settings, items, device=device)
    judged = [
        {**{k: r[k] for k in ("suite", "mode", "task_id", "sample", "status", "passed") if k in r}, "answer": item.answer, **f}
        for r, item, f in zip(records, items, fields, strict=True)
    ]
    result = {
        "run_dir": str(run_dir),
        "suite": suite,
        "mode": mode,
        **calibration_metrics(judged, threshold),
        "judge": judge,
        "wall_s": time.perf_counter() - started,
    }
    output = Path(output) if output is not None else Path(run_dir)
    stem = f"judge_calibration_{suite.replace('/', '_')}_{mode}"
    output.mkdir(parents=True, exist_ok=True)
    write_jsonl(output / f"{stem}.jsonl", judged)
    write_json(output / f"{stem}.json", result)
    return result, output / f"{stem}.json"
