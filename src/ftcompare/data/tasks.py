"""Task loading and the fine-tuning examples made from a task's train split."""

from __future__ import annotations

from typing import Sequence

from ftcompare.config import GeneratedTask, JsonlTask
from ftcompare.data.codegen import generate_task
from ftcompare.data.problems import Problem, TaskSplits, load_jsonl_problems
from ftcompare.train.loop import IGNORE_INDEX


def load_task(task: GeneratedTask | JsonlTask) -> TaskSplits:
    if isinstance(task, GeneratedTask):
        return generate_task(seed=task.seed, n_train=task.n_train, n_test=task.n_test, n_ood=task.n_ood)
    suites = {"test": load_jsonl_problems(task.test, "test")}
    if task.ood is not None:
        suites["ood"] = load_jsonl_problems(task.ood, "ood")
    return TaskSplits(name="jsonl", train=load_jsonl_problems(task.train, "train"), suites=suites)


def finetune_examples(problems: Sequence[Problem], tokenizer) -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) per problem: prompt then reference completion then EOS, the loss on the
    completion only. Prompt and completion are tokenized apart, exactly as generation will see them."""
    prompts = tokenizer([p.prompt for p in problems], add_special_tokens=False)["input_ids"]
    completions = tokenizer([p.completion for p in problems], add_special_tokens=False)["input_ids"]
    examples = []
    for prompt_ids, completion_ids in zip(prompts, completions):
        target = completion_ids + [tokenizer.eos_token_id]
        examples.append((prompt_ids + target, [IGNORE_INDEX] * len(prompt_ids) + target))
    return examples
