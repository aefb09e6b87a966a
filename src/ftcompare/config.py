"""The study's YAML schema, its validation at load, and its expansion into a run matrix.

Everything a run needs is in a frozen pydantic model; an invalid file fails here, before anything
trains, with the offending field named (`ConfigError`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

BUILTIN_PREFIX = "builtin:"
BUILTIN_MODELS = ("tiny-code",)
ALL_LINEAR = "all-linear"


class ConfigError(ValueError):
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
    model: str = "builtin:tiny-code"  # hub id, local directory, or builtin:<name>
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


class GeneratedTask(Strict):
    """The built-in MBPP-style task (see ftcompare.data.codegen)."""

    kind: Literal["generated"] = "generated"
    seed: int = 0
    n_train: int = Field(default=2000, gt=0)
    n_test: int = Field(default=100, gt=0)
    n_ood: int = Field(default=100, ge=0)


class JsonlTask(Strict):
    """User problems: JSONL records with `task_id`, `prompt`, `completion`, `tests` (list of asserts)."""

    kind: Literal["jsonl"] = "jsonl"
    train: Path
    test: Path
    ood: Path | None = None

    _files = field_validator("train", "test", "ood")(_existing_file)


MBPP_SPLIT_NAMES = Literal["prompt", "train", "validation", "test"]


class MbppTask(Strict):
    """MBPP (Austin et al. 2021): fine-tune on one split, evaluate on another (see ftcompare.data.mbpp)."""

    kind: Literal["mbpp"] = "mbpp"
    data: Path | None = None  # mbpp.jsonl or sanitized-mbpp.json; None: the Hugging Face hub (needs `datasets`)
    sanitized: bool = False
    format: Literal["austin3shot", "zeroshot", "chat"] = "austin3shot"
    train_split: MBPP_SPLIT_NAMES = "train"
    eval_split: MBPP_SPLIT_NAMES = "test"
    extra_train: Path | None = None  # JSONL of {prompt, completion} pairs added to the fine-tuning data
    extra_tests: Path | None = None  # MBPP+ (EvalPlus) tests added to each problem's asserts

    _files = field_validator("data", "extra_train", "extra_tests")(_existing_file)


class QuixBugsSuite(Strict):
    """QuixBugs program repair (Lin et al. 2017) as an extra evaluation suite (see ftcompare.data.quixbugs)."""

    kind: Literal["quixbugs"] = "quixbugs"
    name: str = "quixbugs"
    data: Path
    support: Path | None = None  # quixbugs_support.json (Node class for the graph programs)
    include_failing_test: bool = False
    in_domain: bool = False

    _files = field_validator("data", "support")(_existing_file)


TaskConfig = Annotated[Union[GeneratedTask, JsonlTask, MbppTask], Field(discriminator="kind")]
SuiteConfig = Annotated[Union[QuixBugsSuite], Field(discriminator="kind")]


class FullMethod(Strict):
    kind: Literal["full"] = "full"
    name: str | None = None
    lr: float = Field(default=1e-4, gt=0)


class LoraMethod(Strict):
    """LoRA through PEFT. `rank` may be a list: one run per rank (a rank sweep).

    alpha defaults to 2·rank (the Illusion-of-Equivalence setup). With `alpha_lr_product` set, each
    rank's learning rate is alpha_lr_product / alpha, so alpha·lr stays fixed across the sweep.
    """

    kind: Literal["lora"] = "lora"
    name: str | None = None
    rank: int | list[int] = 8
    alpha: float | None = Field(default=None, gt=0)
    lr: float | None = Field(default=None, gt=0)
    alpha_lr_product: float | None = Field(default=None, gt=0)
    target_modules: list[str] | Literal["all-linear"] = ALL_LINEAR
    dropout: float = Field(default=0.0, ge=0, lt=1)

    @field_validator("rank")
    @classmethod
    def _positive_ranks(cls, value: int | list[int]) -> int | list[int]:
        ranks = value if isinstance(value, list) else [value]
        if not ranks:
            raise ValueError("rank: give at least one rank")
        for rank in ranks:
            if rank < 1:
                raise ValueError(f"rank must be a positive integer, got {rank}")
        return value

    @model_validator(mode="after")
    def _one_learning_rate(self) -> "LoraMethod":
        if self.lr is not None and self.alpha_lr_product is not None:
            raise ValueError("give either lr or alpha_lr_product, not both")
        return self

    @property
    def ranks(self) -> list[int]:
        return self.rank if isinstance(self.rank, list) else [self.rank]


MethodConfig = Annotated[Union[FullMethod, LoraMethod], Field(discriminator="kind")]


class TrainingConfig(Strict):
    epochs: float = Field(default=3.0, gt=0)
    max_steps: int | None = Field(default=None, gt=0)  # caps epochs when set
    batch_size: int = Field(default=16, gt=0)
    max_length: int = Field(default=256, gt=8)
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_ratio: float = Field(default=0.05, ge=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0)
    grad_clip: float | None = Field(default=1.0, gt=0)
    log_every: int = Field(default=10, gt=0)


class ForgettingConfig(Strict):
    n_chunks: int = Field(default=64, gt=0)
    chunk_tokens: int = Field(default=256, gt=8)


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
    cache: Literal["dynamic", "static"] = "dynamic"  # KV cache layout for generation
    compile: bool = False  # torch.compile the forward pass for generation (pays off on a GPU with a static cache)
    n_samples: int = Field(default=10, ge=0)  # sampled completions per problem (0: greedy only)
    k: list[int] = [1, 5, 10]
    temperature: float = Field(default=0.8, gt=0)
    top_p: float = Field(default=0.95, gt=0, le=1)
    max_new_tokens: int = Field(default=64, gt=0)
    batch_size: int = Field(default=64, gt=0)
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


class AnalysesConfig(Strict):
    spectral: SpectralConfig | None = SpectralConfig()
    representations: RepresentationsConfig | None = None


class StudyConfig(Strict):
    experiment: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    base: BaseModelConfig = BaseModelConfig()
    task: TaskConfig = GeneratedTask()
    extra_suites: list[SuiteConfig] = []  # more evaluation suites, e.g. QuixBugs out of domain
    methods: list[MethodConfig] = Field(min_length=1)
    seeds: list[int] = Field(default=[0], min_length=1)
    training: TrainingConfig = TrainingConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    analyses: AnalysesConfig = AnalysesConfig()
    device: Literal["auto", "cpu", "cuda"] = "auto"
    save_weights: bool = True  # full FT: the tuned weights; LoRA: the PEFT adapter

    @model_validator(mode="after")
    def _robustness_on_known_suites(self) -> "StudyConfig":
        robustness = self.evaluation.robustness
        if robustness is not None:
            has_ood = self.task.kind == "generated" or (self.task.kind == "jsonl" and self.task.ood is not None)
            known = {"test", "ood"} if has_ood else {"test"}
            known |= {suite.name for suite in self.extra_suites}
            unknown = sorted(set(robustness.suites) - known)
            if unknown:
                raise ValueError(f"evaluation.robustness.suites: unknown suites {unknown}; this study has {sorted(known)}")
            if not self.evaluation.greedy:
                raise ValueError("evaluation.robustness needs greedy: true (robust pass@1 is scored on greedy outputs)")
        return self

    @model_validator(mode="after")
    def _unique_run_ids(self) -> "StudyConfig":
        ids = [run.run_id for run in expand(self)]
        duplicated = sorted({i for i in ids if ids.count(i) > 1})
        if duplicated:
            raise ValueError(f"methods: two methods expand to the same run id {duplicated}; give them distinct `name`s")
        return self


class RunSpec(Strict):
    """One cell of the run matrix: a method at one rank and seed, with its resolved learning rate."""

    run_id: str
    method: Literal["full", "lora"]
    seed: int
    lr: float
    rank: int | None = None
    alpha: float | None = None
    target_modules: list[str] | Literal["all-linear"] | None = None
    dropout: float = 0.0

    @property
    def label(self) -> str:
        return "full FT" if self.method == "full" else f"LoRA r={self.rank}"


DEFAULT_LORA_LR = 1e-3


def expand(config: StudyConfig) -> list[RunSpec]:
    """The run matrix: methods × ranks × seeds, in config order."""
    runs: list[RunSpec] = []
    for method in config.methods:
        for seed in config.seeds:
            if isinstance(method, FullMethod):
                name = method.name or "full"
                runs.append(RunSpec(run_id=f"{name}-s{seed}", method="full", seed=seed, lr=method.lr))
                continue
            for rank in method.ranks:
                alpha = method.alpha if method.alpha is not None else 2.0 * rank
                if method.alpha_lr_product is not None:
                    lr = method.alpha_lr_product / alpha
                else:
                    lr = method.lr if method.lr is not None else DEFAULT_LORA_LR
                name = method.name or "lora"
                runs.append(
                    RunSpec(
                        run_id=f"{name}-r{rank}-s{seed}",
                        method="lora",
                        seed=seed,
                        lr=lr,
                        rank=rank,
                        alpha=alpha,
                        target_modules=method.target_modules,
                        dropout=method.dropout,
                    )
                )
    return runs


def fingerprint(payload: object) -> str:
    """A short stable hash of a JSON-able payload (cache keys, config identity)."""
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _field_path(loc: tuple) -> str:
    return ".".join(str(part) for part in loc if not (isinstance(part, str) and part in ("generated", "jsonl", "mbpp", "quixbugs", "full", "lora")))


def parse_config(data: object, source: str = "<config>") -> StudyConfig:
    """Validate a parsed YAML document; raise ConfigError naming the first offending field."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the config must be a mapping of fields, got {type(data).__name__}")
    try:
        return StudyConfig.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        field = _field_path(first["loc"]) or "(top level)"
        message = first["msg"]
        if first["type"] == "extra_forbidden":
            message = "unknown key"
        message = message.removeprefix("Value error, ")
        extra = f" ({len(error.errors()) - 1} more)" if len(error.errors()) > 1 else ""
        raise ConfigError(f"{source}: {field}: {message}{extra}") from None


PATH_KEYS = ("train", "test", "ood", "data", "extra_train", "extra_tests", "support")


def _resolve_data_paths(data: dict, folder: Path) -> dict:
    """Relative data paths in `task` and `extra_suites` resolve against the config file's folder."""
    def resolve(section: object) -> object:
        if not isinstance(section, dict):
            return section
        return {key: str(folder / value) if key in PATH_KEYS and isinstance(value, str) and not Path(value).is_absolute()
                else value for key, value in section.items()}

    resolved = {**data, "task": resolve(data.get("task"))} if "task" in data else dict(data)
    if isinstance(data.get("extra_suites"), list):
        resolved["extra_suites"] = [resolve(suite) for suite in data["extra_suites"]]
    return resolved


def load_config(path: Path) -> StudyConfig:
    """Read and validate a YAML study config. Relative data paths resolve against the file's folder."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}".replace("\n", " ")) from None
    if isinstance(data, dict):
        data = _resolve_data_paths(data, path.parent)
    return parse_config(data, source=str(path))
