"""One run over several processes: under a distributed launch (`accelerate launch`, `torchrun`: WORLD_SIZE > 1)
every process trains each run together, the model sharded over them by FSDP2 or replicated by DDP.

How the ranks work together:
- every rank walks the study's jobs in the same order; rank 0 decides what is done (`Ranks.agree` broadcasts
  its answer), so no rank acts on a file another has half written;
- every rank builds the same global batch (the same seeded stream) and trains on its own rows of it
  (`loop.micro_batches`); the optimizer takes the same steps as one process would;
- rank 0 alone writes the run store, logs to the trackers, evaluates and analyses, on the whole model
  gathered to it (`Ranks.gather`); the other ranks wait at the next collective.

The sharding is torch's own `fully_shard` (FSDP2), which accelerate's FSDP plugin also calls: accelerate turns
FSDP on for GPUs only (its CPU launches are DDP), and the same code must train on gloo in CI as on NCCL.
accelerate starts the process group (`PartialState`) and launches the processes.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal

import torch

if TYPE_CHECKING:
    from ftcompare.config import BaseModelConfig, StudyConfig

Strategy = Literal["fsdp2", "ddp"]
# what a launcher sets that makes a process join its group: removed for work one process does alone
LAUNCH_ENV = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
# NVLink multicast (NVLS) can put a shared host's GPUs out of service: off unless the user set these
MULTICAST_OFF = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
# rank 0 evaluates a run alone while the others wait in a collective: the wait must outlast any evaluation
COLLECTIVE_TIMEOUT = timedelta(hours=12)


def launched() -> bool:
    """Whether this process is one of several a launcher started (WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def launch_rank() -> int:
    """This process's rank as the launcher set it (0 outside a launch), readable before the group starts."""
    return int(os.environ.get("RANK", "0"))


@dataclass(frozen=True)
class Ranks:
    """The processes of a distributed launch, as this one sees them, and how they share a model."""

    index: int
    count: int
    strategy: Strategy

    @property
    def main(self) -> bool:
        return self.index == 0

    def agree(self, value: Any) -> Any:
        """Rank 0's `value` (any picklable object) on every rank."""
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        torch.distributed.barrier()

    def mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """The mean of `tensor` over the ranks (every rank gets it)."""
        total = tensor.clone()
        torch.distributed.all_reduce(total)
        return total / self.count

    def shard(self, model: torch.nn.Module, device: torch.device, compute_dtype: torch.dtype | None) -> torch.nn.Module:
        """`model` (whole on every rank, the same weights) made ready to train together.

        fsdp2: each decoder layer (the model's `_no_split_modules`), then the rest, is sharded in place; a layer's
        parameters are gathered for its forward and backward only. With `compute_dtype` (bf16 under fp32 master
        weights) the gathered copies are cast to it while the sharded parameters, their gradients and AdamW's
        state stay in their own dtype (fp32), and gradients are reduced in fp32. Non-float parameters
        (bitsandbytes' 4-bit weights) are left out of the sharding: every rank keeps them whole. A model already
        sharded (built on the meta device and sharded by its maker, as benchmarks/fsdp_8b.py does) is taken as it is.
        ddp: a replica per rank, gradients averaged after each backward."""
        if self.strategy == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

        if isinstance(model, FSDPModule):
            return model

        policy = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32 if compute_dtype else None)
        unsharded = {p for p in model.parameters() if not p.is_floating_point()}
        options = {"mp_policy": policy, **({"ignored_params": unsharded} if unsharded else {})}
        blocks = set(getattr(model, "_no_split_modules", None) or ())
        for module in list(model.modules()):
            if type(module).__name__ in blocks:
                fully_shard(module, **options)
        fully_shard(model, **options)
        return model

    def gather(self, model: torch.nn.Module, rebuild: Callable[[], torch.nn.Module]) -> torch.nn.Module | None:
        """The trained model, whole, on rank 0 (None on the others). ddp: rank 0's replica. fsdp2: the trained
        parameters gathered to rank 0 (on its CPU) and loaded into `rebuild()`, a fresh model of the same run
        (the frozen weights are the ones it was built with)."""
        if self.strategy == "ddp":
            return model if self.main else None
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
        trained = get_model_state_dict(model, options=options)  # a collective: every rank takes part
        if not self.main:
            return None
        whole = rebuild()
        # (a tied weight is one parameter under two names in the state dict)
        missing = {name for name, parameter in whole.named_parameters() if parameter.requires_grad} - set(trained)
        if missing:
            raise RuntimeError(f"trained parameters missing from the gathered state: {sorted(missing)[:5]}")
        whole.load_state_dict(trained, strict=False)
        return whole

    def clip_grad_norm_(self, parameters: list[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
        """Clip the gradients' global norm (over every rank's shards); the norm before clipping."""
        norm = torch.nn.utils.clip_grad_norm_(parameters, max_norm)
        return norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # FSDP2's norm is a DTensor


def join(strategy: Strategy, device: torch.device) -> tuple[Ranks, torch.device]:
    """Join the launch's process group (accelerate's `PartialState`: gloo on a CPU, NCCL on GPUs, one GPU per
    rank); this rank and the device it trains on."""
    from accelerate import PartialState

    for name, value in MULTICAST_OFF.items():
        os.environ.setdefault(name, value)
    state = PartialState(cpu=device.type == "cpu", timeout=COLLECTIVE_TIMEOUT)
    if not torch.distributed.is_initialized():
        raise RuntimeError(f"WORLD_SIZE is {os.environ.get('WORLD_SIZE')}, but accelerate started no process group")
    return Ranks(state.process_index, state.num_processes, strategy), state.device


def check_launch(config: StudyConfig, processes: int, source: str) -> None:
    """Refuse, naming the field, what a distributed launch cannot run (before anything loads)."""
    from ftcompare.schema import ConfigError

    training = config.training
    micro = processes * training.gradient_accumulation_steps
    if training.batch_size % micro:
        raise ConfigError(
            source,
            f"{training.batch_size} examples do not split into {processes} processes × "
            f"{training.gradient_accumulation_steps} micro-batches (gradient_accumulation_steps); use a multiple of {micro}",
            "training.batch_size",
        )
    if config.sequence:
        raise ConfigError(
            source,
            "a sequence under a distributed launch is not supported (each stage's evaluation would need the whole "
            "model in the middle of the run); run it with one process",
            "sequence",
        )
    if config.evaluation.backend == "vllm":
        raise ConfigError(
            source,
            "vllm under a distributed launch is not supported (rank 0 evaluates alone, and vLLM would start inside "
            "the launch's process group); use backend: transformers, or evaluate with one process (`ftcompare run` resumes)",
            "evaluation.backend",
        )


def build_base_alone(base: BaseModelConfig, device: torch.device) -> None:
    """Pre-train the built-in base, if it is not cached yet, in a child process outside the launch's group: its
    training is one process's work, with accelerate state of its own (in the group it would wait for ranks that
    are not training it). Concurrent builders wait for the first (`builtin.build_once`)."""
    from ftcompare.models.builtin import READY_FILE, builtin_dir

    if not base.is_builtin or (builtin_dir(base.builtin, device) / READY_FILE).is_file():
        return
    arguments = (base, device.type, launch_rank() != 0)
    child = multiprocessing.get_context("spawn").Process(target=_pretrain_outside_the_group, args=arguments)
    child.start()
    child.join()
    if child.exitcode != 0:
        raise RuntimeError(f"pre-training the built-in base failed in its own process (exit code {child.exitcode})")


def _pretrain_outside_the_group(base: BaseModelConfig, device_type: str, quiet: bool) -> None:
    for name in LAUNCH_ENV:
        os.environ.pop(name, None)
    from ftcompare.console import console
    from ftcompare.models.builtin import pretrain_builtin

    console.quiet = quiet  # rank 0's child speaks for the launch
    pretrain_builtin(base.builtin, torch.device(device_type), console)
