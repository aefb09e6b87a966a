"""Where batched decoding spends its time on a real model and real prompts, as tables.

    python benchmarks/decode_step.py smollm2-135m-instruct --data ../shared/data/mbpp.jsonl

1. Milliseconds per decoding step of HF `generate` (every sequence forced to `--new-tokens` tokens) on the
   first `--limit` chat prompts of the benchmark, left-padded in one batch: the pretrained weights and a
   random re-initialisation of the same config (does anything in the weights or their config cost time?),
   each with transformers' default SDPA path for a padded batch with grouped-query attention (K/V repeated
   to every query head) and with SDPA's own GQA (`TRANSFORMERS_SDPA_FORCE_GQA=1`).
2. A natural greedy run (EOS ends a sequence, `--max-new-tokens` budget): steps the batch ran, useful
   tokens (up to EOS) and the fraction of the batch's token slots they fill.
3. The operators that take the most GPU time over `--profile-steps` steps (torch.profiler).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from ftcompare.config import BaseModelConfig
from ftcompare.console import console
from ftcompare.data.suites import BENCHMARKS, evaluation_problems
from ftcompare.models.base import load_model, load_tokenizer, resolve_base


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn) -> float:
    synchronize()
    started = time.perf_counter()
    fn()
    synchronize()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--benchmark", default="mbpp")
    parser.add_argument("--data", type=Path)
    parser.add_argument("--limit", type=int, default=256)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=384)
    parser.add_argument("--profile-steps", type=int, default=16)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # a CPU only checks the script

    source = resolve_base(BaseModelConfig(model=args.model), device, console)
    tokenizer = load_tokenizer(source)
    tokenizer.padding_side = "left"
    problems, _ = evaluation_problems(BENCHMARKS[args.benchmark].configure(args.data, "chat"), tokenizer)
    encoded = tokenizer(
        [p.prompt for p in problems[: args.limit]], return_tensors="pt", padding=True, add_special_tokens=False
    ).to(device)
    lengths = encoded["attention_mask"].sum(1).float()
    print(
        f"{args.model}, {source.dtype}, {torch.cuda.get_device_name(0) if device.type == 'cuda' else 'cpu'}; batch {len(lengths)}, prompt tokens "
        f"mean {lengths.mean():.0f}, max {lengths.max():.0f} (padded to {encoded['input_ids'].shape[1]})"
    )
    pretrained = load_model(source, device).eval()
    random = AutoModelForCausalLM.from_config(pretrained.config, dtype=pretrained.dtype).to(device).eval()
    common = dict(**encoded, pad_token_id=tokenizer.pad_token_id, do_sample=False)

    def forced(model) -> float:
        run = lambda: model.generate(**common, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens)  # noqa: E731
        run()  # warm-up
        return timed(run) / args.new_tokens * 1000

    print("\n| weights | attention for a padded GQA batch | ms per step | tokens/s |")
    print("|---|---|---:|---:|")
    for name, model in (("pretrained", pretrained), ("random re-init", random)):
        for label, force in (("K/V repeated per head (transformers default)", "0"), ("SDPA enable_gqa (forced)", "1")):
            os.environ["TRANSFORMERS_SDPA_FORCE_GQA"] = force
            ms = forced(model)
            print(f"| {name} | {label} | {ms:.1f} | {len(lengths) * 1000 / ms:,.0f} |")
    os.environ["TRANSFORMERS_SDPA_FORCE_GQA"] = "0"

    output = None

    def natural():
        nonlocal output
        output = pretrained.generate(**common, max_new_tokens=args.max_new_tokens, eos_token_id=tokenizer.eos_token_id)

    seconds = timed(natural)
    new = output[:, encoded["input_ids"].shape[1] :]
    steps = new.shape[1]
    ended = (new == tokenizer.eos_token_id).int()
    useful = torch.where(ended.any(1), ended.argmax(1) + 1, torch.full_like(ended[:, 0], steps)).sum().item()
    print(
        f"\nnatural greedy run: {steps} steps in {seconds:.1f} s ({seconds / steps * 1000:.1f} ms/step); "
        f"{useful:,} useful tokens = {useful / (steps * len(lengths)):.0%} of the batch's slots, {useful / seconds:,.0f} tokens/s"
    )

    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        pretrained.generate(**common, max_new_tokens=args.profile_steps, min_new_tokens=args.profile_steps)
        synchronize()
    print(
        prof.key_averages().table(
            sort_by="self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total",
            row_limit=15,
            max_name_column_width=60,
        )
    )


if __name__ == "__main__":
    main()
