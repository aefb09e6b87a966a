"""Re-aggregate recorded evaluations from their per-sample records, generating and executing nothing again.

A run evaluated by an older ftcompare lacks what scoring records now (each pass@k's standard error, every
problem's own pass@1, which paired comparisons read); its `samples.jsonl` holds the verdicts they come from.
`rescore_experiment` recomputes each suite's pass@k table from those verdicts. The stored pass@k values, and
where the metrics hold them the task ids, per-problem scores and problem count, must come out unchanged: a
difference means the records and the metrics are not of the same evaluation, and that run is left as it was.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ftcompare.evaluate.scoring import pass_at_k_table
from ftcompare.runs.store import BASE_DIR, RunDir, read_json, read_jsonl, run_dirs, write_json

SAMPLES_FILE = "samples.jsonl"
# the records that carry a copy of the evaluation's suites
EVALUATION_FILES = ("eval.json", "metrics.json")


class RecordsDisagree(ValueError):
    """The per-sample records do not give the pass@k that the metrics say."""


@dataclass(frozen=True)
class Rescored:
    run_id: str
    outcome: str  # "rescored", "no per-sample records", "no evaluation", or why the records disagree
    refused: bool = False  # the records disagree with the metrics: the run was left as it was


def rescored_suites(suites: dict, records: Sequence[dict]) -> dict:
    """`suites` (an eval.json's) with every mode's pass@k table recomputed from the records of that suite and
    mode, at the k it already reports; suites and modes without records are kept as they are."""
    grouped: dict[tuple[str, str], list[dict]] = {}
    for record in records:
        grouped.setdefault((record["suite"], record["mode"]), []).append(record)
    result = {}
    for suite, modes in suites.items():
        check_prompts(suite, [record for (name, _), group in grouped.items() if name == suite for record in group])
        result[suite] = dict(modes)
        for mode, metrics in modes.items():
            mode_records = grouped.get((suite, mode))
            if not mode_records or not isinstance(metrics, dict) or metrics.get("scoring") == "judge":
                continue  # a judged suite has no pass@k to recompute
            stored = {key: value for key, value in metrics.items() if key.startswith("pass@")}
            table = pass_at_k_table(mode_records, [int(key.removeprefix("pass@")) for key in stored])
            for key, value in stored.items():
                if not math.isclose(table.get(key, math.nan), value, rel_tol=0, abs_tol=1e-9):
                    raise RecordsDisagree(
                        f"{suite} {mode} {key}: the metrics say {value}, the per-sample records give {table.get(key)}"
                    )
            check_problems(f"{suite} {mode}", metrics, table["per_problem_pass@1"], mode_records)
            result[suite][mode] = {**metrics, **table}
    return result


def check_problems(where: str, metrics: dict, per_problem: dict[str, float], records: Sequence[dict]) -> None:
    """Refuse records that give the stored means from other problems: task ids or per-problem scores that
    differ from the metrics' (swapped verdicts, rotated ids keep every mean), a problem count or samples per
    problem other than the metrics'."""
    stored = metrics.get("per_problem_pass@1")
    if stored is not None:
        if set(stored) != set(per_problem):
            only_metrics, only_records = sorted(set(stored) - set(per_problem)), sorted(set(per_problem) - set(stored))
            raise RecordsDisagree(
                f"{where}: the task ids differ: only in the metrics {only_metrics[:5]}, only in the records {only_records[:5]}"
            )
        for task_id, value in stored.items():
            if not math.isclose(per_problem[task_id], value, rel_tol=0, abs_tol=1e-9):
                raise RecordsDisagree(
                    f"{where} per-problem pass@1 of {task_id!r}: the metrics say {value}, "
                    f"the per-sample records give {per_problem[task_id]}"
                )
    if metrics.get("problems") is not None and metrics["problems"] != len(per_problem):
        raise RecordsDisagree(f"{where}: the metrics count {metrics['problems']} problems, the records {len(per_problem)}")
    if metrics.get("n") is not None and len(records) != metrics["n"] * len(per_problem):
        raise RecordsDisagree(
            f"{where}: the metrics say {metrics['n']} samples per problem, the records hold "
            f"{len(records)} samples of {len(per_problem)} problems"
        )


def check_prompts(suite: str, records: Sequence[dict]) -> None:
    """Refuse a suite whose records give one task id two prompts (ids rotated in one mode's records only)."""
    prompts: dict[str, str] = {}
    for record in records:
        if "prompt" in record and prompts.setdefault(record["task_id"], record["prompt"]) != record["prompt"]:
            raise RecordsDisagree(f"{suite}: task id {record['task_id']!r} is recorded with two different prompts")


def rescore_run(run_dir: RunDir) -> Rescored:
    """Rescore one run's (or the base's) evaluation in place; each file is rewritten atomically."""
    if not run_dir.has("eval.json"):
        return Rescored(run_dir.run_id, "no evaluation")
    if not run_dir.has(SAMPLES_FILE):
        return Rescored(run_dir.run_id, "no per-sample records")
    records = read_jsonl(run_dir.file(SAMPLES_FILE))
    updated = {}
    try:
        for name in EVALUATION_FILES:
            if run_dir.has(name):
                payload = read_json(run_dir.file(name))
                updated[name] = {**payload, "suites": rescored_suites(payload.get("suites", {}), records)}
    except RecordsDisagree as error:
        return Rescored(run_dir.run_id, f"left as it was: {error}", refused=True)
    for name, payload in updated.items():
        write_json(run_dir.file(name), payload)
    return Rescored(run_dir.run_id, "rescored")


def rescore_experiment(experiment: Path) -> list[Rescored]:
    """Rescore the base's and every run's evaluation under an experiment folder."""
    experiment = Path(experiment)
    if not experiment.is_dir():
        raise FileNotFoundError(f"no experiment folder at {experiment}")
    base = RunDir(experiment / BASE_DIR)
    return [rescore_run(run_dir) for run_dir in ([base] if base.path.is_dir() else []) + run_dirs(experiment)]
