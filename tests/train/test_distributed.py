"""One run over several processes: each rank's share of a batch, micro-batches that take the same step as the
whole batch, what a launch refuses, and two processes under `accelerate launch` (gloo, FSDP2) training a study's
runs to the losses one process reaches, with rank 0 alone writing the run store."""

import gc
import json
import os
import socket
import subprocess
import sys
import time
import weakref
from pathlib import Path

import pytest
import torch
import yaml
from torch.distributed.tensor import DTensor
from typer.testing import CliRunner

from ftcompare.cli import app
from ftcompare.config import parse_config
from ftcompare.schema import ConfigError
from ftcompare.train.distributed import Ranks, check_launch
from ftcompare.train.loop import IGNORE_INDEX, TrainSettings, micro_batches, pad_batch, train, trainable_parameters_in
from tests.conftest import TINY_BUILTIN, TINY_EVALUATION
from tests.helpers import tiny_llama

SRC = Path(__file__).resolve().parents[2] / "src"


def uneven_examples(n: int = 8) -> list[tuple[list[int], list[int]]]:
    """Examples of different lengths and different numbers of loss tokens: a per-part mean would weigh them wrong."""
    examples = []
    for i in range(n):
        completion = [2 + i % 7] * (1 + i % 4)
        ids = [1, 3 + i % 5, *completion]
        examples.append((ids, [IGNORE_INDEX, IGNORE_INDEX, *completion]))
    return examples


def test_each_rank_takes_its_contiguous_rows_cut_into_micro_batches():
    batch = pad_batch(uneven_examples(8), pad_id=0, max_length=16)
    parts = [micro_batches(batch, rank, 2, 2) for rank in range(2)]
    rows = [part["input_ids"] for rank_parts in parts for part in rank_parts]
    assert [len(r) for r in rows] == [2, 2, 2, 2]
    assert torch.equal(torch.cat(rows), batch["input_ids"])  # every row once, in order; the batch's width kept
    assert torch.equal(parts[1][0]["labels"], batch["labels"][4:6])
    with pytest.raises(ValueError, match="cannot give 4 processes 3 micro-batches"):
        micro_batches(batch, 0, 4, 3)


def test_micro_batches_take_the_step_the_whole_batch_takes():
    """Accumulation weighs each micro-batch by its share of the batch's loss tokens, so the step is the same."""

    def trained(accumulation: int) -> tuple[list[torch.Tensor], float]:
        model = tiny_llama()
        batches = iter([pad_batch(uneven_examples(8), pad_id=0, max_length=16)] * 3)
        result = train(model, batches, TrainSettings(lr=1e-2, steps=3, accumulation_steps=accumulation))
        return [p.detach().clone() for p in model.parameters()], result.final_loss

    whole, whole_loss = trained(1)
    accumulated, accumulated_loss = trained(4)
    assert accumulated_loss == pytest.approx(whole_loss, rel=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(whole, accumulated))


def test_activation_checkpointing_changes_memory_not_the_step():
    def trained(checkpointing: bool) -> list[torch.Tensor]:
        model = tiny_llama()
        batches = iter([pad_batch(uneven_examples(8), pad_id=0, max_length=16)] * 2)
        train(model, batches, TrainSettings(lr=1e-2, steps=2, activation_checkpointing=checkpointing))
        assert model.is_gradient_checkpointing == checkpointing
        return [p.detach().clone() for p in model.parameters()]

    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(trained(False), trained(True)))


def test_fp32_master_weights_hold_under_fsdp2_mixed_precision(tmp_path):
    """One rank of a gloo group in this process: a bf16 model trains with fp32 sharded master weights, computes in
    bf16, lets go of its whole-model copies, and comes back whole (rounded to bf16) through the gather."""
    torch.distributed.init_process_group(
        "gloo", store=torch.distributed.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1
    )
    try:
        ranks = Ranks(0, 1, "fsdp2")
        model = tiny_llama(dtype=torch.bfloat16)
        whole_weight = weakref.ref(model.model.layers[0].mlp.down_proj.weight)
        compute = []
        model.model.layers[0].mlp.down_proj.register_forward_pre_hook(lambda module, _: compute.append(module.weight.dtype))
        batches = iter([pad_batch(uneven_examples(8), pad_id=0, max_length=16)] * 2)
        settings = TrainSettings(lr=1e-2, steps=2, autocast_dtype=torch.bfloat16)
        with trainable_parameters_in(model, torch.float32):
            train(model, batches, settings, ranks=ranks)
            master = {name: p.full_tensor() for name, p in model.named_parameters()}
            assert all(isinstance(p, DTensor) and p.dtype == torch.float32 for p in model.parameters())
            gc.collect()
            assert whole_weight() is None  # while training: the unsharded copy is gone, not held for the cast back
        assert compute and set(compute) == {torch.bfloat16}
        whole = ranks.gather(model, lambda: tiny_llama(dtype=torch.bfloat16))
        assert all(torch.equal(p, master[name].to(torch.bfloat16)) for name, p in whole.named_parameters())
    finally:
        torch.distributed.destroy_process_group()


def tiny_study(**changes) -> dict:
    study = {
        "experiment": "launched",
        "base": {"model": "builtin:tiny-code", "builtin": TINY_BUILTIN},
        "task": {"kind": "generated", "n_train": 48, "n_test": 3, "n_ood": 2},
        "methods": [
            {"kind": "full", "lr": 1e-3},
            {"kind": "lora", "rank": [2], "alpha_lr_product": 0.02},
            {"kind": "qlora", "rank": [2], "alpha_lr_product": 0.02},
        ],
        "training": {"max_steps": 4, "batch_size": 8, "log_every": 1},
        "evaluation": TINY_EVALUATION,
        "analyses": {"spectral": {"k": 2, "epsilon": 0.5}},
        "tracking": {"trackers": ["tensorboard"]},
    }
    return {**study, **changes}


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"training": {"batch_size": 6, "gradient_accumulation_steps": 2}}, "training.batch_size"),
        ({"evaluation": {"backend": "vllm"}}, "evaluation.backend"),
    ],
)
def test_a_launch_refuses_what_it_cannot_run_naming_the_field(changes, field):
    config = parse_config(tiny_study(**changes))
    with pytest.raises(ConfigError, match=f"study.yaml: {field}: "):
        check_launch(config, 2, "study.yaml")
    check_launch(parse_config(tiny_study()), 2, "study.yaml")  # 8 examples: 4 a process


def test_micro_batches_must_split_the_batch():
    with pytest.raises(ConfigError, match="gradient_accumulation_steps: 3 micro-batches do not split a batch_size of 8"):
        parse_config(tiny_study(training={"batch_size": 8, "gradient_accumulation_steps": 3}))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def step_losses(run: Path) -> list[float]:
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert [record["step"] for record in log] == [1, 2, 3, 4]  # one line a step: one writer
    return [record["loss"] for record in log]


# Two processes take the same optimizer steps on the same examples as one: each rank holds half of every batch
# and weighs its token losses by the whole batch's count. What differs is only the order of fp32 additions (each
# rank sums half the tokens, FSDP reduce-scatters the gradients): measured for full FT and LoRA, at most 2e-7
# relative over the 4 steps. A weighting error is larger: each rank's own mean loss instead of the batch's token
# mean moved the later steps' losses by 5e-5 to 6e-4 relative here; both ranks training on one half, more still.
LOSS_TOLERANCE = 1e-5


@pytest.mark.slow
def test_two_processes_train_a_run_to_the_loss_of_one_and_rank_0_alone_writes(tmp_path, tiny_base, cache_dir):
    config_path = tmp_path / "study.yaml"
    config_path.write_text(yaml.safe_dump(tiny_study()))
    alone = CliRunner().invoke(
        app, ["run", str(config_path), "--output", str(tmp_path / "one")], env={"FTCOMPARE_CACHE": str(cache_dir)}
    )
    assert alone.exit_code == 0, alone.output

    # accelerate's --cpu starts several processes only through MPI; --multi_gpu is its torchrun launcher, and on
    # a machine without a GPU the processes join a gloo group (the config's device resolves to the CPU)
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(free_port()),
        "-m",
        "ftcompare.cli",
        "run",
        str(config_path),
        "--output",
        str(tmp_path / "two"),
    ]
    environment = {
        **os.environ,
        "FTCOMPARE_CACHE": str(cache_dir),
        "PYTHONPATH": os.pathsep.join([str(SRC), str(SRC.parent), os.environ.get("PYTHONPATH", "")]),
        "CUDA_VISIBLE_DEVICES": "",
    }
    started = time.monotonic()
    launched = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=300)
    assert launched.returncode == 0, launched.stdout[-3000:] + launched.stderr[-5000:]
    print(f"two processes: {time.monotonic() - started:.0f} s")

    one, two = tmp_path / "one" / "launched", tmp_path / "two" / "launched"
    for run in ("full-s0", "lora-r2-s0", "qlora-r2-s0"):
        assert step_losses(two / run) == pytest.approx(step_losses(one / run), rel=LOSS_TOLERANCE)
        record = json.loads((two / run / "train.json").read_text())
        assert record["distributed"]["processes"] == 2 and record["distributed"]["strategy"] == "fsdp2"
        assert record["tokens"] == json.loads((one / run / "train.json").read_text())["tokens"]  # the whole batches
        assert (two / run / "done.json").is_file() and (two / run / "metrics.json").is_file()
        # rank 0 alone tracked the run: one TensorBoard event file, written by one process
        assert len(list((two / "_tracking" / run).glob("events.out.tfevents.*"))) == 1
    for run in ("lora-r2-s0", "qlora-r2-s0"):  # adapters train under FSDP2 too (frozen base; QLoRA's 4-bit base whole)
        losses = step_losses(two / run)
        assert losses[-1] < losses[0]
        assert (two / run / "weights" / "adapter_model.safetensors").is_file()
    assert json.loads((two / "study.json").read_text())["environment"]["distributed"] == "2 processes, fsdp2"
    # nothing half-written or claimed: no temporary files, no workers' claim files
    assert not [path for path in two.rglob(".*") if path.is_file()]
    # rank 0 speaks for the launch: the results table once
    assert launched.stdout.count("results: launched") == 1
