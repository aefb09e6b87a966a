"""Task loading and the fine-tuning examples made from a task's train split."""

from __future__ import annotations

import math
import random
from dataclasses import replace
from pathlib import Path
from typing import Sequence

from ftcompare.config import GeneratedTask, HumanEvalSuite, JsonlTask, MbppTask, QuixBugsSuite, StudyConfig
from ftcompare.data import humaneval, mbpp, quixbugs
from ftcompare.data.codegen import generate_task
from ftcompare.data.problems import Problem, SuiteInfo, TaskSplits, load_jsonl_problems
from ftcompare.train.loop import IGNORE_INDEX


def load_task(task: GeneratedTask | JsonlTask | MbppTask, tokenizer=None) -> TaskSplits:
    """A task's train split and its own evaluation suites ("test", and "ood" where it has one)."""
    if isinstance(task, GeneratedTask):
        return generate_task(seed=task.seed, n_train=task.n_train, n_test=task.n_test, n_ood=task.n_ood, families=task.families)
    if isinstance(task, MbppTask):
        return load_mbpp_task(task, tokenizer)
    suites = {"test": load_jsonl_problems(task.test, "test")}
    if task.ood is not None:
        suites["ood"] = load_jsonl_problems(task.ood, "ood")
    return TaskSplits(name="jsonl", train=load_jsonl_problems(task.train, "train"), suites=suites)


def load_extra_suite(suite: QuixBugsSuite | HumanEvalSuite, tokenizer=None) -> tuple[tuple[Problem, ...], SuiteInfo]:
    """An evaluation-only suite: its problems and how they are generated and scored."""
    if isinstance(suite, HumanEvalSuite):
        records = humaneval.load_humaneval(suite.data)
        problems = tuple(humaneval.to_problem(r, suite.format, tokenizer=tokenizer) for r in records)
        return problems, humaneval.suite_info(suite.format, in_domain=suite.in_domain)
    programs = [p for p in quixbugs.load_quixbugs(suite.data, suite.support) if p.excluded is None]
    problems = tuple(quixbugs.to_problem(p, include_failing_test=suite.include_failing_test) for p in programs)
    return problems, SuiteInfo(in_domain=suite.in_domain, extraction="auto", scoring="repair")


BENCHMARKS = ("mbpp", "mbpp-sanitized", "humaneval")


def load_benchmark(name: str, data: Path | None, fmt: str, tokenizer=None) -> tuple[tuple[Problem, ...], SuiteInfo]:
    """A benchmark's evaluation problems on their own, for scoring a model without fine-tuning: MBPP's test
    split (task ids 11–510), or HumanEval's 164 problems."""
    if name == "humaneval":
        return load_extra_suite(HumanEvalSuite(data=data, format=fmt), tokenizer)
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    task = load_mbpp_task(MbppTask(data=data, sanitized=name == "mbpp-sanitized", format=fmt), tokenizer)
    return task.suites["test"], task.suite_info("test")


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
        problems, suite_info = load_extra_suite(suite, tokenizer)
        evaluation = replace(evaluation, suites={**evaluation.suites, suite.name: problems},
                             info={**evaluation.info, suite.name: suite_info})
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


def load_mbpp_task(task: MbppTask, tokenizer) -> TaskSplits:
    """MBPP: fine-tune on `train_split` (targets in the prompt format's answer form), evaluate on `eval_split`."""
    records = mbpp.load_mbpp(task.data, sanitized=task.sanitized)
    few_shot = [r for r in records if r.task_id in mbpp.AUSTIN_FEW_SHOT_IDS] if task.format == "austin3shot" else []
    few_shot.sort(key=lambda r: mbpp.AUSTIN_FEW_SHOT_IDS.index(r.task_id))

    def problems(split: str) -> tuple[Problem, ...]:
        return tuple(mbpp.to_problem(r, task.format, few_shot=few_shot, tokenizer=tokenizer) for r in mbpp.split(records, split))

    evaluation = problems(task.eval_split)
    if task.extra_tests is not None:
        extra = mbpp.extra_tests_from_evalplus(task.extra_tests)
        evaluation = tuple(mbpp.with_extra_tests(p, extra.get(p.meta["task_id"], ())) for p in evaluation)
    train = tuple(replace(p, completion=mbpp.training_completion(p.completion, task.format)) for p in problems(task.train_split))
    if task.extra_train is not None:
        train += load_jsonl_problems(task.extra_train, "extra_train")
    info = SuiteInfo(in_domain=True, extraction="auto", stop_strings=mbpp.stop_sequences(task.format))
    suites, infos = {"test": evaluation}, {"test": info}
    if task.validation_split is not None:
        suites["validation"], infos["validation"] = problems(task.validation_split), info
    return TaskSplits(name="mbpp", train=train, suites=suites, info=infos)


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
            prompt_ids = prompt_ids[max(0, len(prompt_ids) + len(target) - max_length):]
        examples.append((prompt_ids + target, [IGNORE_INDEX] * len(prompt_ids) + target))
    return examples
