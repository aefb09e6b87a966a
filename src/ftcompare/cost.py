"""What a study will cost, counted from its config alone (no model, works offline): `ftcompare run --dry-run`."""

from __future__ import annotations

import math

from ftcompare.config import StudyConfig, expand, task_suite_names


def estimate_cost(config: StudyConfig) -> dict:
    """What a study will do, counted without a model (works offline): training steps and examples per run,
    sequences and tokens generated, programs executed. Unknown counts (hub data offline) are None."""
    from ftcompare.data import humaneval, mbpp, quixbugs
    from ftcompare.data.problems import load_jsonl_problems

    def task_counts(task) -> tuple[int | None, dict[str, int | None]]:
        if task.kind == "generated":
            return task.n_train, {name: task.n_test if name == "test" else task.n_ood for name in task_suite_names(task)}
        if task.kind == "jsonl":
            counts = {"test": len(load_jsonl_problems(task.test, "test"))}
            if task.ood:
                counts["ood"] = len(load_jsonl_problems(task.ood, "ood"))
            return len(load_jsonl_problems(task.train, "train")), counts
        if task.data is None:
            return None, {"test": None}
        records = mbpp.load_mbpp(task.data, sanitized=task.sanitized)
        counts = {"test": len(mbpp.split(records, task.eval_split))}
        if task.validation_split:
            counts["validation"] = len(mbpp.split(records, task.validation_split))
        return len(mbpp.split(records, task.train_split)), counts

    train_sizes, suites = [], {}
    for stage in config.stages:
        n_train, counts = task_counts(stage.task)
        train_sizes.append(n_train)
        suites.update({f"{stage.name}/{name}" if config.sequence else name: n for name, n in counts.items()})
    for suite in config.extra_suites:
        if suite.kind == "humaneval":
            suites[suite.name] = len(humaneval.load_humaneval(suite.data))
        else:
            suites[suite.name] = sum(p.excluded is None for p in quixbugs.load_quixbugs(suite.data, suite.support))
    evaluation, training = config.evaluation, config.training
    problems = {name: (min(n, evaluation.limit) if evaluation.limit and n is not None else n) for name, n in suites.items()}
    known = all(n is not None for n in problems.values())
    sequences = None
    if known:
        sampled = [name for name in problems if evaluation.sampled_suites is None or name in evaluation.sampled_suites]
        sequences = sum(problems.values()) * int(evaluation.greedy) + evaluation.n_samples * sum(
            min(problems[name], evaluation.sampled_limit or problems[name]) for name in sampled)
    steps = None
    if all(n is not None for n in train_sizes):
        # at the largest data fraction
        per_stage = [math.ceil(training.epochs * math.ceil(n * max(training.data_fractions)) / training.batch_size) for n in train_sizes]
        steps = sum(min(s, training.max_steps) if training.max_steps else s for s in per_stage)
    runs = len(expand(config))
    n_train = sum(train_sizes) if all(n is not None for n in train_sizes) else None
    return {
        "runs": runs,
        "train_examples": n_train,
        "steps_per_run": steps,
        "train_sequences_per_run": steps * training.batch_size if steps else None,
        "eval_problems": problems,
        "sequences_generated_per_model": sequences,
        "max_new_tokens_per_model": sequences * evaluation.max_new_tokens if sequences else None,
        "models_evaluated": runs + 1,  # every run and the base
    }
