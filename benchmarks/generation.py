"""Generation throughput of the backends ftcompare can evaluate with, as a table.

    python benchmarks/generation.py                 # SmolLM2-135M shape, on the GPU if there is one
    python benchmarks/generation.py --shape tiny    # a few seconds on a CPU, to check the script

Weights are random (throughput does not depend on them) and every sequence is forced to generate exactly
`--new-tokens` tokens. Rows: Hugging Face `generate` with the default dynamic KV cache, a static cache,
a static cache with torch.compile; a PEFT LoRA adapter unmerged and merged; vLLM when it is installed
(reported as unavailable otherwise, never silently skipped). Timings are medians of `--repeats` runs after
a warm-up run (which absorbs compilation), through the same function the evaluation uses.
"""

from __future__ import annotations

import argparse
import importlib.util

import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from ftcompare.evaluate.generation import timed_generate_tokens_per_s

SHAPES = {
    # SmolLM2-135M (HuggingFaceTB/SmolLM2-135M-Instruct config.json)
    "smollm2-135m": dict(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        tie_word_embeddings=True,
    ),
    # builtin:tiny-code, large variant
    "tiny-code-large": dict(
        vocab_size=8192,
        hidden_size=512,
        intermediate_size=1536,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=8,
        tie_word_embeddings=True,
    ),
    "tiny": dict(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        tie_word_embeddings=True,
    ),
}


def build(shape: str, device: torch.device, dtype: torch.dtype) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(**SHAPES[shape], max_position_embeddings=4096, pad_token_id=0, eos_token_id=1, bos_token_id=None)
    return LlamaForCausalLM(config).to(device=device, dtype=dtype).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="smollm2-135m")
    parser.add_argument("--batch-sizes", default="1,16,64")
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--lora-rank", type=int, default=16)
    parser.add_argument(
        "--ragged",
        action="store_true",
        help="left-pad each prompt by a random 0-50%% of its length, as a batch of real prompts is",
    )
    parser.add_argument("--base-only", action="store_true", help="skip the LoRA rows")
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="STEPS",
        help="instead of the table: profile STEPS decoding steps of the default generate at the "
        "largest batch and print the operators that take the most time",
    )
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    where = torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"
    print(
        f"shape {args.shape}, {dtype}, {where}, torch {torch.__version__}; prompt {args.prompt_tokens} tokens, "
        f"{args.new_tokens} new tokens, median of {args.repeats}"
    )
    if args.profile:
        profile_generate(args, device, dtype)
        return
    rows = []
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        generator = torch.Generator().manual_seed(batch)
        input_ids = torch.randint(2, SHAPES[args.shape]["vocab_size"], (batch, args.prompt_tokens), generator=generator).to(
            device
        )
        mask = prompt_mask(input_ids, args.ragged)

        def measure(model, cache="dynamic", compile=False, input_ids=input_ids, mask=mask) -> float:
            return timed_generate_tokens_per_s(
                model,
                input_ids,
                mask,
                new_tokens=args.new_tokens,
                repeats=args.repeats,
                pad_token_id=0,
                cache=cache,
                compile=compile,
            )

        model = build(args.shape, device, dtype)
        rows.append((batch, "HF generate, dynamic cache (default)", measure(model)))
        rows.append((batch, "HF generate, static cache", measure(model, cache="static")))
        if device.type == "cuda":  # transformers compiles generate's forward on accelerators only
            rows.append((batch, "HF generate, static cache + torch.compile", measure(model, cache="static", compile=True)))
            torch._dynamo.reset()  # a fresh compile per model: the adapter changes the graph
        else:
            rows.append((batch, "HF generate, static cache + torch.compile", "not run: compiled generate needs a GPU"))
        if args.base_only:
            continue
        lora = get_peft_model(
            model,
            LoraConfig(r=args.lora_rank, lora_alpha=2 * args.lora_rank, target_modules="all-linear"),
            autocast_adapter_dtype=False,
        )
        rows.append((batch, f"PEFT LoRA r{args.lora_rank} unmerged, dynamic cache", measure(lora)))
        merged = lora.merge_and_unload()
        rows.append((batch, f"PEFT LoRA r{args.lora_rank} merged, dynamic cache", measure(merged)))
        del model, lora, merged
        if device.type == "cuda":
            torch.cuda.empty_cache()
    vllm = (
        "installed but not wired into this benchmark"
        if importlib.util.find_spec("vllm")
        else "unavailable: vllm is not installed"
    )
    print()
    print("| batch | backend | tokens/s |")
    print("|---:|---|---:|")
    for batch, name, tokens_per_s in rows:
        print(f"| {batch} | {name} | {tokens_per_s if isinstance(tokens_per_s, str) else f'{tokens_per_s:,.0f}'} |")
    print(f"| – | vLLM | {vllm} |")


def prompt_mask(input_ids: torch.Tensor, ragged: bool) -> torch.Tensor:
    """All ones, or (ragged) left padding of a random 0-50% of each row, written into input_ids as pad id 0."""
    mask = torch.ones_like(input_ids)
    if ragged:
        batch, length = input_ids.shape
        pads = torch.randint(0, length // 2 + 1, (batch,), generator=torch.Generator().manual_seed(1)).tolist()
        for row, pad in enumerate(pads):
            mask[row, :pad] = 0
            input_ids[row, :pad] = 0
    return mask


def profile_generate(args, device: torch.device, dtype: torch.dtype) -> None:
    """Where a decoding step's time goes: torch.profiler over `args.profile` steps after a warm-up."""
    from torch.profiler import ProfilerActivity, profile

    batch = max(int(b) for b in args.batch_sizes.split(","))
    model = build(args.shape, device, dtype)
    input_ids = torch.randint(
        2, SHAPES[args.shape]["vocab_size"], (batch, args.prompt_tokens), generator=torch.Generator().manual_seed(0)
    ).to(device)
    kwargs = dict(
        input_ids=input_ids,
        attention_mask=prompt_mask(input_ids, args.ragged),
        do_sample=False,
        pad_token_id=0,
        max_new_tokens=args.profile,
        min_new_tokens=args.profile,
    )
    model.generate(**kwargs)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        model.generate(**kwargs)
        if device.type == "cuda":
            torch.cuda.synchronize()
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(f"batch {batch}, {args.profile} steps")
    print(prof.key_averages().table(sort_by=sort, row_limit=25))
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
