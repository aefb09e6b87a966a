"""Task loading and the fine-tuning examples made from a task's train split."""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

from ftcompare.config import GeneratedTask, JsonlTask, MbppTask, QuixBugsSuite
from ftcompare.data import mbpp, quixbugs
from ftcompare.data.codegen import generate_task
from ftcompare.data.problems import Problem, SuiteInfo, TaskSplits, load_jsonl_problems
from ftcompare.train.loop import IGNORE_INDEX


def load_task(task: GeneratedTask | JsonlTask | MbppTask, extra_suites: Sequence[QuixBugsSuite] = (), tokenizer=None) -> TaskSplits:
    """The task's train split and evaluation suites, plus any extra suites (e.g. QuixBugs out of domain)."""
    if isinstance(task, GeneratedTask):
        splits = generate_task(seed=task.seed, n_train=task.n_train, n_test=task.n_test, n_ood=task.n_ood)
    elif isinstance(task, MbppTask):
        splits = load_mbpp_task(task, tokenizer)
    else:
        suites = {"test": load_jsonl_problems(task.test, "test")}
        if task.ood is not None:
            suites["ood"] = load_jsonl_problems(task.ood, "ood")
        splits = TaskSplits(name="jsonl", train=load_jsonl_problems(task.train, "train"), suites=suites)
    for suite in extra_suites:
        programs = [p for p in quixbugs.load_quixbugs(suite.data, suite.support) if p.excluded is None]
        problems = tuple(quixbugs.to_problem(p, include_failing_test=suite.include_failing_test) for p in programs)
        info = SuiteInfo(in_domain=suite.in_domain, extraction="auto", scoring="repair")
        splits = replace(splits, suites={**splits.suites, suite.name: problems}, info={**splits.info, suite.name: info})
    return splits


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
    return TaskSplits(name="mbpp", train=train, suites={"test": evaluation}, info={"test": info})


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
