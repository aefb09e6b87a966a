"""A study's tasks and suites, loaded, and the fine-tuning examples made from a task's train split."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from ftcompare.data.problems import IGNORE_INDEX, Problem, TaskSplits
from ftcompare.data.suites import load_suite, load_task

if TYPE_CHECKING:
    from ftcompare.config import StudyConfig


def load_study_tasks(config: StudyConfig, tokenizer=None) -> tuple[list[tuple[str, TaskSplits]], TaskSplits]:
    """(the tasks trained in order, by name; every evaluation suite of the study).

    One task keeps its suite names ("test", "ood"); in a sequence they become "<task>/test", ..., and
    every task's test suite is in domain (each is trained on at some stage)."""
    stages = [(stage.name, load_task(stage.task, tokenizer)) for stage in config.stages]
    if config.sequence:
        suites, info = {}, {}
        for name, splits in stages:
            for suite, problems in splits.suites.items():
                suites[f"{name}/{suite}"] = problems
                info[f"{name}/{suite}"] = splits.suite_info(suite)
        evaluation = TaskSplits(name="sequence", train=(), suites=suites, info=info)
    else:
        evaluation = stages[0][1]
    for suite in config.extra_suites:
        problems, suite_info = load_suite(suite, tokenizer)
        evaluation = replace(
            evaluation, suites={**evaluation.suites, suite.name: problems}, info={**evaluation.info, suite.name: suite_info}
        )
    return stages, evaluation


def training_subset(problems: Sequence[Problem], fraction: float) -> tuple[Problem, ...]:
    """The first ⌈fraction·n⌉ problems of a fixed shuffle (seed 0): subsets are nested, and every run
    and seed at one fraction trains on the same examples, so the data-size axis varies only the size."""
    if fraction == 1:
        return tuple(problems)
    order = list(range(len(problems)))
    random.Random(0).shuffle(order)
    keep = max(1, math.ceil(round(fraction * len(problems), 9)))
    return tuple(problems[i] for i in sorted(order[:keep]))


def finetune_examples(problems: Sequence[Problem], tokenizer, max_length: int | None = None) -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) per problem: prompt then reference completion then EOS, the loss on the
    completion only. Prompt and completion are tokenized apart, exactly as generation will see them.

    An example longer than `max_length` loses the start of its prompt (few-shot prompts are long), never
    its completion, so no example is left without a target."""
    prompts = tokenizer([p.prompt for p in problems], add_special_tokens=False)["input_ids"]
    completions = tokenizer([p.completion for p in problems], add_special_tokens=False)["input_ids"]
    examples = []
    for prompt_ids, completion_ids in zip(prompts, completions):
        target = (completion_ids + [tokenizer.eos_token_id])[:max_length]
        if max_length is not None:
            prompt_ids = prompt_ids[max(0, len(prompt_ids) + len(target) - max_length) :]
        examples.append((prompt_ids + target, [IGNORE_INDEX] * len(prompt_ids) + target))
    return examples
