"""Padding in training batches: the share of token slots that are padding, and the distinct batch widths, for
one epoch of a study's task with its tokenizer, batched at random (the plain loop's batching, as a Hugging Face
Trainer without group_by_length makes it) and length-grouped (training.batching: length_grouped). No model runs.

    python benchmarks/padding.py examples/smollm2-mbpp.yaml
"""

from __future__ import annotations

import argparse

import torch
from rich.console import Console
from rich.table import Table

from ftcompare.config import load_config
from ftcompare.data.tasks import finetune_examples, load_study_tasks
from ftcompare.models.base import load_tokenizer, resolve_base
from ftcompare.train.loop import epoch_batches


def epoch_padding(examples, batch_size: int, max_length: int, pad_id: int, group_by_length: bool) -> dict:
    batches = epoch_batches(
        examples, batch_size=batch_size, pad_id=pad_id, max_length=max_length, seed=0, group_by_length=group_by_length
    )
    epoch = [next(batches) for _ in range(len(examples) // batch_size)]
    tokens = sum(int(b["attention_mask"].sum()) for b in epoch)
    slots = sum(b["attention_mask"].numel() for b in epoch)
    return {
        "tokens": tokens,
        "slots": slots,
        "padded": 1 - tokens / slots,
        "widths": len({b["input_ids"].shape[1] for b in epoch}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    args = parser.parse_args()
    console = Console()
    config = load_config(args.config)
    base = resolve_base(config.base, torch.device("cpu"), console)
    tokenizer = load_tokenizer(base)
    stages, _ = load_study_tasks(config, tokenizer)
    training = config.training
    table = Table(
        title=f"one epoch of {config.experiment}'s training batches (batch {training.batch_size}, max {training.max_length} tokens)"
    )
    for column in ("task", "batching", "examples", "real tokens", "token slots", "padding", "distinct widths"):
        table.add_column(column, justify="right")
    for name, splits in stages:
        examples = finetune_examples(splits.train, tokenizer, training.max_length)
        for label, grouped in (("random (plain loop)", False), ("length_grouped", True)):
            row = epoch_padding(examples, training.batch_size, training.max_length, tokenizer.pad_token_id, grouped)
            table.add_row(
                name,
                label,
                str(len(examples)),
                f"{row['tokens']:,}",
                f"{row['slots']:,}",
                f"{row['padded']:.1%}",
                str(row["widths"]),
            )
    console.print(table)


if __name__ == "__main__":
    main()
