"""What a study will cost, counted from its config alone (no model, works offline): `ftcompare run --dry-run`."""

from __future__ import annotations

import math

from ftcompare.config import StudyConfig
from ftcompare.matrix import expand
from ftcompare.train.loop import optimizer_steps


def estimate_cost(config: StudyConfig) -> dict:
    """What a study will do, counted without a model (works offline): training steps and examples per run,
    sequences and tokens generated, programs executed. Unknown counts (hub data offline) are None."""
    train_sizes, suites = [], {}
    for stage in config.stages:
        n_train, counts = stage.task.counts()
        train_sizes.append(n_train)
        suites.update({f"{stage.name}/{name}" if config.sequence else name: n for name, n in counts.items()})
    for suite in config.extra_suites:
        suites[suite.name] = suite.count()
    evaluation, training = config.evaluation, config.training
    problems = {name: (min(n, evaluation.limit) if evaluation.limit and n is not None else n) for name, n in suites.items()}
    known = all(n is not None for n in problems.values())
    sequences = None
    if known:
        sampled = [name for name in problems if evaluation.sampled_suites is None or name in evaluation.sampled_suites]
        sequences = sum(problems.values()) * int(evaluation.greedy) + evaluation.n_samples * sum(
            min(problems[name], evaluation.sampled_limit or problems[name]) for name in sampled
        )
    steps = None
    if all(n is not None for n in train_sizes):
        # at the largest data fraction
        steps = sum(
            optimizer_steps(math.ceil(n * max(training.data_fractions)), training.epochs, training.batch_size, training.max_steps)
            for n in train_sizes
        )
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
