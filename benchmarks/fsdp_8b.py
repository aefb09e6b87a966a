"""Full fine-tuning of a Llama-3.1-8B-shaped model sharded by FSDP2 over several GPUs, against LoRA r16 of the same
model on one GPU: tokens/s and peak memory per GPU, as one table.

    python benchmarks/fsdp_8b.py                      # everything: the FSDP rows through torchrun over 2 GPUs, then the rest
    python benchmarks/fsdp_8b.py --gpus 4 --batch-size 16
    torchrun --nproc_per_node 2 benchmarks/fsdp_8b.py --mode fsdp   # the FSDP rows alone
    python benchmarks/fsdp_8b.py --mode single                      # the one-GPU rows alone
    python benchmarks/fsdp_8b.py --tiny               # a tiny shape on a CPU (gloo, 2 processes): checks the script

The model is Llama 3.1 8B's shape (hidden 4096, 32 layers, 32 heads, 8 KV heads, MLP 14336, vocabulary 128256,
untied head; its RoPE scaling left out, which costs nothing) with random weights, trained on random tokens (every
token carries the loss): only the cost is measured. Every row trains with AdamW, gradient clipping at 1 and
activation checkpointing, on `--batch-size` sequences of `--seq-len` tokens per optimizer step (the global batch:
FSDP splits it over the GPUs); tokens/s is the median over the steps after `--warmup` (each timed after
torch.cuda.synchronize), peak memory is torch.cuda.max_memory_allocated while training (from the first step; the
largest over the ranks).

Rows:
- full FT, FSDP2, ftcompare: what `accelerate launch -m ftcompare.cli run` does (ftcompare.train.distributed's
  sharding, ftcompare.train.loop.train): the model built on the meta device in fp32 and sharded before any
  weight exists (no GPU ever holds it whole), fp32 sharded master weights, bf16 compute
  (MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)).
- full FT, FSDP2, accelerate: the plain library path, accelerate's FSDP2 plugin (fsdp_version=2, the same
  policy and activation checkpointing) with a hand-written loop; its model is built whole in bf16 on each GPU
  first, as accelerate expects. GPUs only (accelerate turns FSDP on for GPUs; on a CPU it would be DDP).
- LoRA r16, ftcompare: PEFT LoRA on every linear layer of the bf16 base (adapters in bf16, held in fp32 while
  training: ftcompare's fp32 master weights under bf16 autocast), ftcompare's loop, one GPU.
- LoRA r16, PEFT: the plain library path, PEFT's defaults (fp32 adapters) and a hand-written loop, one GPU.
- full FT, one GPU, ftcompare: what FSDP replaces; at 8B it needs 16 bytes a parameter for the fp32 weights,
  gradients and AdamW state (128 GB) before activations, and is expected not to fit.

A row that does not fit says so (out of memory is caught, reported, and the next row runs). NVLink multicast stays
off (NCCL_NVLS_ENABLE=0 and its PyTorch and NVSHMEM switches, set here unless already set): on a shared host it
can put the GPUs out of service.
"""

import argparse
import gc
import json
import math
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

for _name, _value in {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}.items():
    os.environ.setdefault(_name, _value)  # before torch starts NCCL

import torch  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from ftcompare.train.distributed import Ranks, join  # noqa: E402
from ftcompare.train.loop import TrainSettings, micro_batches, train, trainable_parameters_in  # noqa: E402

LLAMA_8B = dict(
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    vocab_size=128256,
    max_position_embeddings=8192,
    rope_theta=500000.0,
    rms_norm_eps=1e-5,
    tie_word_embeddings=False,
)
TINY = dict(
    LLAMA_8B,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=256,
)
LR = 1e-5
FULL_FT_BYTES = 16  # a trained parameter's fp32 weight, gradient and AdamW's two moments
LORA_RANK = 16


@dataclass
class Row:
    setup: str
    gpus: int
    trainable: int = 0
    tokens_per_s: float | None = None
    peak_memory_gib: float | None = None  # the largest over the ranks
    final_loss: float | None = None
    note: str = ""


def model_config(args: argparse.Namespace) -> LlamaConfig:
    shape = TINY if args.tiny else LLAMA_8B
    return LlamaConfig(**{**shape, **({"num_hidden_layers": args.layers} if args.layers else {})})


def random_batches(config: LlamaConfig, batch_size: int, seq_len: int, seed: int = 0) -> Iterator[dict[str, torch.Tensor]]:
    """Endless whole batches of random tokens (the same on every rank: the same seed)."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        ids = torch.randint(0, config.vocab_size, (batch_size, seq_len), generator=generator)
        yield {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def initialise(model: torch.nn.Module, device: torch.device, seed: int) -> None:
    """Random weights in place, shard by shard (a DTensor's local part): norms at 1, the rest N(0, 0.02); and the
    rotary frequencies, a buffer the meta device left empty."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            local = parameter.to_local() if hasattr(parameter, "to_local") else parameter
            local.fill_(1.0) if parameter.ndim == 1 else local.normal_(0.0, 0.02)
    with torch.device(device):  # (transformers 4 takes a device argument, 5 does not)
        model.model.rotary_emb = type(model.model.rotary_emb)(model.config)


def bf16_model(config: LlamaConfig, device: torch.device, seed: int = 0) -> LlamaForCausalLM:
    """The whole model in bf16 on `device`, initialised there (never in fp32)."""
    with torch.device("meta"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.to_empty(device=device)
    initialise(model, device, seed)
    return model


def reset_peak(device: torch.device) -> None:
    """From here the peak counts: training's, as ftcompare's loop measures it (the model's construction before it)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def fresh_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


class StepClock:
    """Per-step wall times, each read after the device has finished the step."""

    def __init__(self, device: torch.device):
        self.device, self.stamps = device, [time.perf_counter()]

    def tick(self, *_) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.stamps.append(time.perf_counter())

    def tokens_per_s(self, tokens_per_step: int, warmup: int) -> float:
        steps = [b - a for a, b in zip(self.stamps, self.stamps[1:])][warmup:]
        return tokens_per_step / statistics.median(steps)


def settings(args: argparse.Namespace) -> TrainSettings:
    return TrainSettings(
        lr=LR,
        steps=args.steps,
        schedule="constant",
        log_every=args.steps,
        autocast_dtype=torch.bfloat16,
        activation_checkpointing=True,
        throughput_skip_steps=args.warmup,
    )


def fsdp_ftcompare(args, config, ranks: Ranks, device: torch.device) -> Row:
    with torch.device("meta"):
        model = LlamaForCausalLM(config)  # fp32: the sharded parameters are the master weights
    model = ranks.shard(model, device, torch.bfloat16)
    model.to_empty(device=device)
    initialise(model, device, seed=ranks.index)
    clock = StepClock(device)
    result = train(model, random_batches(config, args.batch_size, args.seq_len), settings(args), ranks=ranks, on_step=clock.tick)
    dtype = next(model.parameters()).dtype
    return Row(
        "full FT, FSDP2, ftcompare",
        ranks.count,
        result.trainable_params,
        clock.tokens_per_s(args.batch_size * args.seq_len, args.warmup),
        peak_memory_gib(device),
        result.final_loss,
        f"sharded params {str(dtype).removeprefix('torch.')}, bf16 compute, fp32 reduce",
    )


def fsdp_accelerate(args, config, ranks: Ranks, device: torch.device) -> Row:
    """accelerate's own FSDP2 plugin and a plain loop (run before any other Accelerator exists: accelerate's state
    is made once per process, and FSDP is chosen then)."""
    from accelerate import Accelerator
    from accelerate.utils import FullyShardedDataParallelPlugin
    from torch.distributed.fsdp import MixedPrecisionPolicy

    plugin = FullyShardedDataParallelPlugin(
        fsdp_version=2,
        auto_wrap_policy="transformer_based_wrap",
        transformer_cls_names_to_wrap=["LlamaDecoderLayer"],
        mixed_precision_policy=MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32),
        activation_checkpointing=True,
        reshard_after_forward=True,
        state_dict_type="SHARDED_STATE_DICT",
    )
    accelerator = Accelerator(mixed_precision="bf16", fsdp_plugin=plugin)
    model = bf16_model(config, device, seed=ranks.index)  # accelerate upcasts what trains to fp32 as it shards
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, betas=(0.9, 0.95))
    model, optimizer = accelerator.prepare(model, optimizer)
    model.train()
    reset_peak(device)
    clock, batches, loss = StepClock(device), random_batches(config, args.batch_size, args.seq_len), None
    for _ in range(args.steps):
        (micro,) = micro_batches(next(batches), ranks.index, ranks.count, 1)
        loss = model(**{key: value.to(device) for key, value in micro.items()}).loss
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        clock.tick()
    dtype = next(model.parameters()).dtype
    return Row(
        "full FT, FSDP2, accelerate",
        ranks.count,
        sum(p.numel() for p in model.parameters()),
        clock.tokens_per_s(args.batch_size * args.seq_len, args.warmup),
        peak_memory_gib(device),
        ranks.mean(loss.detach().float()).item(),
        f"sharded params {str(dtype).removeprefix('torch.')}, accelerate {accelerate_version()}",
    )


def accelerate_version() -> str:
    import accelerate

    return accelerate.__version__


def lora_ftcompare(args, config, device: torch.device) -> Row:
    from peft import LoraConfig, get_peft_model

    model = bf16_model(config, device)
    # ftcompare's LoRA: every linear layer, adapters in the base's dtype, held in fp32 while training
    adapters = LoraConfig(r=LORA_RANK, lora_alpha=2 * LORA_RANK, target_modules="all-linear", task_type="CAUSAL_LM")
    model = get_peft_model(model, adapters, autocast_adapter_dtype=False)
    clock = StepClock(device)
    with trainable_parameters_in(model, torch.float32):
        result = train(model, random_batches(config, args.batch_size, args.seq_len), settings(args), on_step=clock.tick)
    return Row(
        f"LoRA r{LORA_RANK}, ftcompare",
        1,
        result.trainable_params,
        clock.tokens_per_s(args.batch_size * args.seq_len, args.warmup),
        peak_memory_gib(device),
        result.final_loss,
        "bf16 base, fp32 adapters under bf16 autocast",
    )


def lora_peft(args, config, device: torch.device) -> Row:
    from peft import LoraConfig, get_peft_model

    model = bf16_model(config, device)
    adapters = LoraConfig(r=LORA_RANK, lora_alpha=2 * LORA_RANK, target_modules="all-linear", task_type="CAUSAL_LM")
    model = get_peft_model(model, adapters)  # PEFT's defaults: fp32 adapters on the bf16 base
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=LR, betas=(0.9, 0.95))
    reset_peak(device)
    clock, batches, loss = StepClock(device), random_batches(config, args.batch_size, args.seq_len), None
    for _ in range(args.steps):
        batch = {key: value.to(device) for key, value in next(batches).items()}
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        clock.tick()
    return Row(
        f"LoRA r{LORA_RANK}, PEFT",
        1,
        sum(p.numel() for p in params),
        clock.tokens_per_s(args.batch_size * args.seq_len, args.warmup),
        peak_memory_gib(device),
        loss.item(),
        "PEFT defaults: fp32 adapters, bf16 base",
    )


def full_one_gpu(args, config, device: torch.device) -> Row:
    model = bf16_model(config, device)
    clock = StepClock(device)
    with trainable_parameters_in(model, torch.float32):
        result = train(model, random_batches(config, args.batch_size, args.seq_len), settings(args), on_step=clock.tick)
    return Row(
        "full FT, one GPU, ftcompare",
        1,
        result.trainable_params,
        clock.tokens_per_s(args.batch_size * args.seq_len, args.warmup),
        peak_memory_gib(device),
        result.final_loss,
        "fp32 master weights, bf16 autocast",
    )


def parameter_count(config: LlamaConfig) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in LlamaForCausalLM(config).parameters())


def measured(setup: str, gpus: int, device: torch.device, measure: Callable[[], Row], state_gib: float) -> Row:
    """`measure()`'s row, or one that says why there is none: out of memory (with `state_gib`, what the weights, and
    for full FT their gradients and AdamW state, take per GPU before any activation), or another error (its
    traceback on stderr); the next row still runs."""
    fresh_memory(device)
    try:
        row = measure()
    except Exception as error:  # noqa: BLE001 - a benchmark reports what failed and goes on
        if out_of_memory(error):
            held = peak_memory_gib(device)
            note = f"did not fit: out of memory; the model's state alone is {state_gib:.0f} GiB per GPU"
            row = Row(setup, gpus, note=note + (f" ({held:.1f} GiB allocated at the failure)" if held else ""))
        else:
            traceback.print_exc()
            row = Row(setup, gpus, note=f"failed: {type(error).__name__}: {' '.join(str(error).split())[:160]}")
        del error
    fresh_memory(device)
    return row


def run_fsdp(args) -> list[Row]:
    """The FSDP rows, on every rank of a launch; rank 0's rows (with the ranks' largest peak memory) are returned."""
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    ranks, device = join("fsdp2", device)
    config, setup = model_config(args), "full FT, FSDP2, accelerate"
    state_gib = FULL_FT_BYTES * parameter_count(config) / ranks.count / 2**30
    if device.type == "cuda":  # first: accelerate's state, made once per process, chooses FSDP only if asked at once
        rows = [measured(setup, ranks.count, device, lambda: fsdp_accelerate(args, config, ranks, device), state_gib)]
    else:
        rows = [Row(setup, ranks.count, note="not run: accelerate turns FSDP on for GPUs only")]
    setup = "full FT, FSDP2, ftcompare"
    rows.append(measured(setup, ranks.count, device, lambda: fsdp_ftcompare(args, config, ranks, device), state_gib))
    gathered = [None] * ranks.count
    torch.distributed.all_gather_object(gathered, [row.peak_memory_gib for row in rows])
    for index, row in enumerate(rows):
        peaks = [peaks[index] for peaks in gathered if peaks[index] is not None]
        row.peak_memory_gib = max(peaks) if peaks else None
    torch.distributed.destroy_process_group()
    return rows if ranks.main else []


def run_single(args) -> list[Row]:
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    config = model_config(args)
    params_gib = parameter_count(config) / 2**30
    return [
        measured(f"LoRA r{LORA_RANK}, ftcompare", 1, device, lambda: lora_ftcompare(args, config, device), 2 * params_gib),
        measured(f"LoRA r{LORA_RANK}, PEFT", 1, device, lambda: lora_peft(args, config, device), 2 * params_gib),
        measured(
            "full FT, one GPU, ftcompare", 1, device, lambda: full_one_gpu(args, config, device), FULL_FT_BYTES * params_gib
        ),
    ]


def launch_fsdp(args) -> list[Row]:
    """The FSDP rows through torchrun over `--gpus` processes; their rows come back in a file."""
    with tempfile.TemporaryDirectory() as folder:
        rows_file = Path(folder) / "rows.json"
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        command = [
            sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(args.gpus), "--master_port", str(port),
            __file__, "--mode", "fsdp", "--rows-out", str(rows_file), *passed_on(args),
        ]  # fmt: skip
        completed = subprocess.run(command, env=os.environ.copy())
        if completed.returncode != 0 or not rows_file.is_file():
            return [
                Row(
                    "full FT, FSDP2",
                    args.gpus,
                    note=f"the torchrun launch failed (exit code {completed.returncode}); its log is above",
                )
            ]
        return [Row(**row) for row in json.loads(rows_file.read_text())]


def passed_on(args) -> list[str]:
    flags = [
        "--batch-size",
        str(args.batch_size),
        "--seq-len",
        str(args.seq_len),
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
    ]
    return flags + (["--layers", str(args.layers)] if args.layers else []) + (["--tiny"] if args.tiny else [])


def table(rows: list[Row], args) -> str:
    shape = "tiny Llama shape" if args.tiny else "Llama-3.1-8B shape"
    shape += f" with {args.layers} layers" if args.layers else ""
    tokens = args.batch_size * args.seq_len
    lines = [
        f"{shape}, random weights; {args.batch_size} × {args.seq_len} tokens per optimizer step ({tokens:,}); AdamW, "
        f"activation checkpointing; median of steps {args.warmup + 1}–{args.steps}",
        "",
        "| setup | GPUs | trainable params | tokens/s | tokens/s per GPU | peak memory per GPU (GiB) | last loss | note |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]

    def number(value: float | None, form: str) -> str:
        return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, form)

    for row in rows:
        per_gpu = row.tokens_per_s / row.gpus if row.tokens_per_s else None
        lines.append(
            f"| {row.setup} | {row.gpus} | {number(row.trainable or None, ',')} | {number(row.tokens_per_s, ',.0f')} | "
            f"{number(per_gpu, ',.0f')} | {number(row.peak_memory_gib, '.1f')} | {number(row.final_loss, '.3f')} | {row.note} |"
        )
    if not torch.cuda.is_available() or args.tiny:
        lines.append("\n(on a CPU: a GPU is a process, no GPU memory is read, and tokens/s are the CPU's)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=["all", "fsdp", "single"], default="all")
    parser.add_argument("--gpus", type=int, default=2, help="processes of the FSDP rows (--mode all)")
    parser.add_argument("--batch-size", type=int, help="sequences per optimizer step (default 8; --tiny 4)")
    parser.add_argument("--seq-len", type=int, help="tokens per sequence (default 2048; --tiny 32)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3, help="steps left out of the median")
    parser.add_argument("--layers", type=int, help="fewer decoder layers, the same widths (default: the shape's 32)")
    parser.add_argument("--tiny", action="store_true", help="a tiny shape on the CPU: checks the script, measures nothing")
    parser.add_argument("--rows-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.batch_size = args.batch_size or (4 if args.tiny else 8)
    args.seq_len = args.seq_len or (32 if args.tiny else 2048)
    if args.steps <= args.warmup:
        parser.error("--steps must exceed --warmup")
    if args.mode == "fsdp":
        rows = run_fsdp(args)
        if args.rows_out and rows:
            args.rows_out.write_text(json.dumps([asdict(row) for row in rows]))
    elif args.mode == "single":
        rows = run_single(args)
    else:
        rows = launch_fsdp(args) + run_single(args)
    if rows and not args.rows_out:
        print(table(rows, args), flush=True)


if __name__ == "__main__":
    main()
