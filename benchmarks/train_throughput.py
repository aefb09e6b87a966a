"""Training throughput of ftcompare's loop against the plain library loops, side by side in one process: full FT
against a plain mixed-precision loop (fp32 weights and AdamW, bf16 autocast), LoRA r16 against a plain PEFT loop,
each with random and length-grouped batches. Reports real (unpadded) tokens/s after the warm-up steps, the
warm-up time, the padded share of token slots and peak memory.

    python benchmarks/train_throughput.py --model DIR --data ../shared/data/mbpp.jsonl [--steps 40]

DIR is a model folder (config.json and a tokenizer); `--random-init` builds the model from its config alone, so
a folder without weights does (throughput does not depend on the weights' values). On a GPU the base is bf16,
on a CPU fp32 (no autocast). MBPP's train split in the chat format is the data, as in the SmolLM2 study.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from ftcompare.data.mbpp import MbppTask
from ftcompare.data.tasks import finetune_examples
from ftcompare.matrix import RunSpec
from ftcompare.models.methods import apply_method
from ftcompare.train.loop import TrainSettings, epoch_batches, train, trainable_parameters_in

WARMUP_STEPS = 5


def load(folder: Path, random_init: bool, dtype: torch.dtype, device: torch.device) -> torch.nn.Module:
    if random_init:
        torch.manual_seed(0)
        return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder), dtype=dtype).to(device)
    return AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device)


def plain_loop(model: torch.nn.Module, batches, steps: int, lr: float, autocast: torch.dtype | None) -> dict:
    """What a user writes with torch and PEFT alone: AdamW on the trainable parameters, autocast, clip, step."""
    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0)
    model.train()
    tokens = slots = 0
    start = steady_start = time.perf_counter()
    steady_tokens = 0
    for step in range(1, steps + 1):
        batch = {k: v.to(device) for k, v in next(batches).items()}
        with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step_tokens = int(batch["attention_mask"].sum())  # waits for the step, as ftcompare's loss.item() does
        tokens, slots = tokens + step_tokens, slots + batch["attention_mask"].numel()
        if step == WARMUP_STEPS:
            steady_start, steady_tokens = time.perf_counter(), tokens
    if device.type == "cuda":
        torch.cuda.synchronize()
    end = time.perf_counter()
    return {
        "tokens_per_s": (tokens - steady_tokens) / (end - steady_start),
        "warmup_s": steady_start - start,
        "padded": 1 - tokens / slots,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--random-init", action="store_true")
    parser.add_argument("--steps", type=int, default=100, help="timed steps per case (the first 5 left out)")
    parser.add_argument("--methods", default="full,lora", help="full, lora or both")
    parser.add_argument("--multiples", default="1,64", help="batch widths rounded up to these multiples (length-grouped rows)")
    parser.add_argument("--warmup", type=int, default=12, help="untimed steps of every case before the timed ones")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=768)
    parser.add_argument("--format", default="chat", choices=["chat", "zeroshot", "austin3shot"], help="MBPP prompt format")
    args = parser.parse_args()
    console = Console()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype, autocast = (torch.bfloat16, torch.bfloat16) if device.type == "cuda" else (torch.float32, None)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    examples = finetune_examples(MbppTask(data=args.data, format=args.format).load(tokenizer).train, tokenizer, args.max_length)
    full = RunSpec(run_id="full", method="full", seed=0, lr=1e-5)
    lora = RunSpec(run_id="lora", method="lora", seed=0, lr=2.4e-3 / 32, rank=16, alpha=32.0, target_modules="all-linear")

    # (method, loop, batching, pad multiple): the plain loops batch at random, as a Trainer without group_by_length
    runs = {"full": full, "lora": lora}
    cases = [
        (runs[name], path, grouped, multiple)
        for name in args.methods.split(",")
        for path, grouped, multiple in [("plain", False, 1), ("ftcompare", False, 1)]
        + [("ftcompare", True, int(m)) for m in args.multiples.split(",")]
    ]

    def measure(run: RunSpec, path: str, grouped: bool, multiple: int, steps: int) -> dict:
        batches = epoch_batches(
            examples,
            batch_size=args.batch_size,
            pad_id=tokenizer.pad_token_id,
            max_length=args.max_length,
            seed=0,
            group_by_length=grouped,
            pad_multiple=multiple,
        )
        model = load(args.model, args.random_init, torch.float32 if run.method == "full" and autocast else dtype, device)
        if run.method == "lora" and path == "plain":
            from peft import LoraConfig, get_peft_model  # PEFT's default: adapters upcast to fp32

            model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"))
        elif run.method == "lora":
            model = apply_method(model, run)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        if path == "plain":
            result = plain_loop(model, batches, steps, run.lr, autocast)
        else:
            settings = TrainSettings(
                lr=run.lr, steps=steps, throughput_skip_steps=WARMUP_STEPS, log_every=steps, autocast_dtype=autocast
            )
            with trainable_parameters_in(model, torch.float32 if autocast else None):
                trained = train(model, batches, settings)
            result = {
                "tokens_per_s": trained.steady_tokens_per_s,
                "warmup_s": trained.warmup_s,
                "padded": 1 - trained.tokens / trained.token_slots,
            }
        result["peak"] = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else math.nan
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return result

    for case in cases:  # the process's one-time costs (CUDA context, kernels, allocator) before anything is timed
        measure(*case, steps=args.warmup)
    rows = []
    for run, path, grouped, multiple in cases:
        result = measure(run, path, grouped, multiple, steps=args.steps)
        label = "full FT" if run.method == "full" else "LoRA r16"
        loop = ("torch (mixed precision)" if run.method == "full" else "PEFT") if path == "plain" else "ftcompare"
        batching = ("length_grouped" if grouped else "random") + (f", width × {multiple}" if multiple > 1 else "")
        rows.append((label, loop, batching, result))
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else "CPU"
    table = Table(
        title=f"{name}: {args.model.name}{' (random init)' if args.random_init else ''}, MBPP train ({args.format}), "
        f"batch {args.batch_size}, ≤ {args.max_length} tokens, {args.steps} steps, tokens/s after "
        f"{WARMUP_STEPS} warm-up steps"
    )
    for column in ("method", "loop", "batching", "real tokens/s", "warm-up s", "padding", "peak MiB"):
        table.add_column(column, justify="right")
    for label, loop, batching, result in rows:
        table.add_row(
            label,
            loop,
            batching,
            f"{result['tokens_per_s']:,.0f}",
            f"{result['warmup_s']:.1f}",
            f"{result['padded']:.1%}",
            f"{result['peak']:,.0f}",
        )
    console.print(table)


if __name__ == "__main__":
    main()
