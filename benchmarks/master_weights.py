"""What pure-bf16 training loses to rounding, and what fp32 master weights keep, on a real model, as tables.

    python benchmarks/master_weights.py smollm2-135m-instruct --data ../shared/data/mbpp.jsonl

1. One optimizer step of a given size on every weight matrix of the model in bf16: the fraction of weights
   that change at all. Adam's step is about the learning rate, so a step under half of bf16's spacing at a
   weight's magnitude (2^-8 of it, relative) is rounded away and that weight never moves.
2. Full fine-tuning for `--steps` steps at `--lr` on MBPP train (chat template, loss on the completion),
   once in pure bf16 (`training.master_weights: base`) and once with fp32 master weights under bf16
   autocast (`training.master_weights: float32`, the default): the fraction of the weight matrices' entries
   that moved, ‖ΔW‖/‖W‖ over them, the last step's loss, tokens/s and peak memory. Meant for a GPU (seconds);
   a CPU without bf16 instructions takes minutes per step (measured on a 2-core EPYC: one backward pass of
   2 × 256 tokens in bf16, 128 s), so there use e.g. `--steps 4 --batch-size 1 --max-length 128`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ftcompare.config import BaseModelConfig
from ftcompare.console import console
from ftcompare.data.mbpp import MbppTask
from ftcompare.data.tasks import finetune_examples
from ftcompare.models.base import load_model, load_tokenizer, resolve_base
from ftcompare.train.loop import TrainSettings, epoch_batches, train, trainable_parameters_in


def matrices(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The weight matrices of the decoder layers (those LoRA adapts and the spectral analysis reads)."""
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.ndim == 2 and ".layers." in name}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--data", type=Path)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=512)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    source = resolve_base(BaseModelConfig(model=args.model, dtype="bfloat16"), device, console)
    tokenizer = load_tokenizer(source)

    weights = torch.cat([w.flatten() for w in matrices(load_model(source, device)).values()])
    print(
        f"{args.model}: {weights.numel():,} entries in its decoder's weight matrices, median |w| "
        f"{weights.float().abs().median():.3g}\n"
    )
    print("| step size | weights a bf16 step changes |")
    print("|---:|---:|")
    for step in (1e-6, 1e-5, 1.875e-5, 7.5e-5, 1e-4, 1e-3):
        print(f"| {step:g} | {((weights + step) != weights).float().mean():.1%} |")

    task = MbppTask(data=args.data, format="chat").load(tokenizer)
    examples = finetune_examples(task.train, tokenizer, args.max_length)
    print(f"\nfull fine-tuning, {args.steps} steps of {args.batch_size} at lr {args.lr:g} (constant), {device}\n")
    print("| trainable weights | entries moved | ‖ΔW‖/‖W‖ | last loss | tokens/s | peak MB |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, master in (("bf16 (pure)", None), ("fp32 master, bf16 autocast", torch.float32)):
        model = load_model(source, device)
        before = matrices(model)
        settings = TrainSettings(
            lr=args.lr,
            steps=args.steps,
            schedule="constant",
            grad_clip=None,
            log_every=args.steps,
            autocast_dtype=torch.bfloat16 if master else None,
        )
        batches = epoch_batches(
            examples, batch_size=args.batch_size, pad_id=tokenizer.pad_token_id, max_length=args.max_length, seed=0
        )
        with trainable_parameters_in(model, master):
            result = train(model, batches, settings)
        after = matrices(model)
        moved = sum(int((after[n] != before[n]).sum()) for n in before) / sum(w.numel() for w in before.values())
        delta = torch.sqrt(sum(((after[n].float() - before[n].float()) ** 2).sum() for n in before))
        norm = torch.sqrt(sum((w.float() ** 2).sum() for w in before.values()))
        print(
            f"| {label} | {moved:.1%} | {delta / norm:.2e} | {result.final_loss:.3f} | {result.tokens_per_s:,.0f} | "
            f"{result.peak_memory_mb:,.0f} |"
        )
        del model


if __name__ == "__main__":
    main()
