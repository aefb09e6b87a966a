"""ΔW spectral features of one trained adapter read two ways, as a table: from the bf16 merge (what the
spectral stage read before it took the exact update) and from the adapter's exact update (`weight_updates`,
what it reads now). A rank-1 LoRA's update has rank 1; the merge's bf16 rounding makes it look full-rank.

    python benchmarks/exact_delta.py [--lr 1e-3] [--steps 10] [--methods lora dora]

The base is a small built-in model pre-trained for a few steps (cached under $FTCOMPARE_CACHE), in bf16; the
adapter (rank 1, alpha 2, every linear layer) trains in pure bf16 on a copy task, as a bf16 study would.
"""

from __future__ import annotations

import argparse

import torch
from transformers import AutoModelForCausalLM

from ftcompare.analyze.spectral import analyze_matrix, base_spectrum, summarize
from ftcompare.config import BuiltinPretraining
from ftcompare.console import console
from ftcompare.matrix import RunSpec
from ftcompare.models.builtin import pretrain_builtin
from ftcompare.models.methods import apply_method
from ftcompare.models.weights import adapted_weight_names, merge_adapter, weight_updates
from ftcompare.train.loop import IGNORE_INDEX, TrainSettings, epoch_batches, train

FEATURES = (
    ("mean_delta_effective_rank", "effective rank", ".2f"),
    ("mean_delta_stable_rank", "stable rank", ".2f"),
    ("mean_delta_sv_entropy", "SV entropy", ".3f"),
    ("mean_relative_delta_norm", "‖ΔW‖/‖W0‖", ".3e"),
)


def copy_task(n: int = 32) -> list[tuple[list[int], list[int]]]:
    """Prompt: a token; completion: that token repeated, loss on the completion only."""
    examples = []
    for i in range(n):
        ids = [1] + [2 + i % 10] * 4
        examples.append((ids, [IGNORE_INDEX, IGNORE_INDEX] + ids[2:]))
    return examples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--methods", nargs="+", default=["lora", "dora"])
    args = parser.parse_args()
    folder = pretrain_builtin(BuiltinPretraining(size="small", steps=8, batch_size=4, seq_len=64), torch.device("cpu"), console)
    base = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16)
    names = adapted_weight_names(base, None)
    w0 = {name: weight.detach().clone() for name, weight in base.named_parameters() if name in names}
    print(f"| method | ΔW read from | {' | '.join(label for _, label, _ in FEATURES)} |")
    print("|---|---|" + "---:|" * len(FEATURES))
    for method in args.methods:
        torch.manual_seed(0)
        run = RunSpec(run_id=method, method=method, seed=0, lr=args.lr, rank=1, alpha=2, target_modules="all-linear")
        model = apply_method(AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16), run)
        train(
            model,
            epoch_batches(copy_task(), batch_size=8, pad_id=0, max_length=8, seed=0),
            TrainSettings(lr=args.lr, steps=args.steps),
        )
        exact = [analyze_matrix(u.name, base_spectrum(u.base), u.base, u.tuned, delta=u.delta) for u in weight_updates(model, w0)]
        merged_weights = dict(merge_adapter(model).named_parameters())
        merged = [analyze_matrix(name, base_spectrum(w0[name]), w0[name], merged_weights[name].detach()) for name in names]
        for label, reports in (("bf16 merge", merged), ("exact update", exact)):
            summary = summarize(reports)
            print(f"| {method} r=1 | {label} | " + " | ".join(format(summary[key], fmt) for key, _, fmt in FEATURES) + " |")
    print(f"\n{len(names)} matrices, {args.steps} steps at lr {args.lr:g} in pure bf16; means over the matrices.")


if __name__ == "__main__":
    main()
