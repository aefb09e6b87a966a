"""Spectral analysis of fine-tuned weight matrices against their base: intruder dimensions and ranks.

Intruder dimensions follow Shuttleworth, Andreas, Torralba & Sharma, "LoRA vs Full Fine-tuning: An
Illusion of Equivalence" (2024, arXiv:2410.21228), Algorithm 1: take the SVDs of the base W0 and the
tuned W; the j-th of the top-k left singular vectors of W is an intruder dimension when its largest
|cosine similarity| with *every* left singular vector of W0 is below epsilon. Signs of singular vectors
are arbitrary, hence the absolute value.

Defaults k = 10 and epsilon = 0.5 are the authors' own: their released code
(github.com/reeceshuttle/intruder-dimensions, `find_intruder_dimensions.py`: `k=10`,
`--intruder_dimension_threshold` default 0.5) and PEFT's port of it (`detect_intruder_dimensions`,
`top_k=10, epsilon=0.5`) use them; the paper also reports counts over a range of epsilon, which
`epsilon_sweep` reproduces from one similarity computation.

Note: a full-rank base spans the whole space, so "intruder" means "not aligned with any single base
singular vector": a direction spread evenly over m base vectors scores 1/sqrt(m) (m = 4 gives 0.5).

All arithmetic is on CPU in float64 when an input is float64, else float32 (bf16/fp16 are upcast).
Matrices are (out, in), nn.Linear's layout, so "left" singular vectors live in the output space; a
caller holding GPT-2's Conv1D weights, stored (in, out), transposes them first (`models.methods.as_out_in`).
ΔW features should be read from the exact update, not from a tuned matrix rounded to bf16: an update
much smaller than W0 would otherwise show the rounding's full rank (`analyze_matrix(..., delta=...)`).
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

PAPER_K = 10
PAPER_EPSILON = 0.5
# Written out so that str(epsilon) gives clean JSON keys ("0.3", not "0.30000000000000004").
DEFAULT_EPSILONS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)

_SIDES = ("left", "right")


@dataclass(frozen=True)
class BaseSpectrum:
    """The thin SVD of a base matrix W0 (m, n) with r = min(m, n): W0 = u @ diag(s) @ vh."""

    u: torch.Tensor  # (m, r) left singular vectors as columns
    s: torch.Tensor  # (r,) singular values, descending
    vh: torch.Tensor  # (r, n) right singular vectors as rows

    @property
    def shape(self) -> tuple[int, int]:
        return (self.u.shape[0], self.vh.shape[1])


@dataclass(frozen=True)
class MatrixReport:
    """Spectral comparison of one adapted weight matrix of one run against its base."""

    name: str
    shape: tuple[int, int]
    intruders: int  # at the default epsilon, left singular vectors
    intruders_right: int  # same with right singular vectors
    intruder_ranks: list[int]  # 0-based positions among the tuned top-k (left) that are intruders
    epsilon_sweep: dict[str, int]  # str(epsilon) -> left-intruder count
    delta_fro_norm: float  # ||W - W0||_F
    delta_spectral_norm: float  # ||W - W0||_2
    delta_effective_rank: float  # effective_rank(W - W0)
    delta_stable_rank: float  # stable_rank(W - W0)
    relative_delta_norm: float  # ||W - W0||_F / ||W0||_F
    # Rank trade-offs: the same spectral features of ΔW, of the tuned W and of the base W0, all from
    # singular values analyze_matrix has anyway (no extra SVD). None = not computed (records written
    # before these fields existed). A zero ΔW gives 0 for every delta feature (rank 0, not exp(0) = 1).
    delta_sv_entropy: float | None = None  # singular_value_entropy(W - W0), nats
    tuned_effective_rank: float | None = None
    tuned_sv_entropy: float | None = None
    tuned_stable_rank: float | None = None
    tuned_spectral_norm: float | None = None  # ||W||_2
    base_effective_rank: float | None = None
    base_sv_entropy: float | None = None
    base_stable_rank: float | None = None
    base_spectral_norm: float | None = None  # ||W0||_2


# Per-matrix float features that features_by_layer / features_by_module_type average.
SPECTRAL_FEATURES: tuple[str, ...] = (
    "tuned_effective_rank",
    "tuned_sv_entropy",
    "tuned_stable_rank",
    "tuned_spectral_norm",
    "base_effective_rank",
    "base_sv_entropy",
    "base_stable_rank",
    "base_spectral_norm",
    "delta_effective_rank",
    "delta_sv_entropy",
    "delta_stable_rank",
    "delta_spectral_norm",
    "delta_fro_norm",
    "relative_delta_norm",
)


# ---------------------------------------------------------------- helpers


def _as_matrix(w: torch.Tensor, what: str = "w") -> torch.Tensor:
    """A detached CPU 2-D copy in float64 if `w` is float64, else float32."""
    if w.ndim != 2:
        raise ValueError(f"{what}: expected a 2-D weight matrix, got shape {tuple(w.shape)}")
    dtype = torch.float64 if w.dtype == torch.float64 else torch.float32
    return w.detach().to(device="cpu", dtype=dtype)


def _svd(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch.linalg.svd(w, full_matrices=False)


def _check_k(k: int) -> None:
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")


def _check_epsilon(epsilon: float) -> None:
    # |cos| lies in [0, 1], so a threshold outside it is a mistake rather than a choice.
    if not 0.0 <= epsilon <= 1.0:
        raise ValueError(f"epsilon must be in [0, 1], got {epsilon}")


def _check_shape(base: BaseSpectrum, w: torch.Tensor) -> None:
    if tuple(w.shape) != base.shape:
        raise ValueError(f"tuned matrix has shape {tuple(w.shape)}, base spectrum is for {base.shape}")


def _similarity_from_svd(base: BaseSpectrum, u_t: torch.Tensor, vh_t: torch.Tensor, k: int, side: str) -> torch.Tensor:
    """(min(k, r),) max |cos| of each top-k tuned singular vector with all base singular vectors."""
    _check_k(k)
    if side not in _SIDES:
        raise ValueError(f"side must be one of {_SIDES}, got {side!r}")
    k = min(k, u_t.shape[1])
    if side == "left":
        tuned, reference = u_t[:, :k].T, base.u.T  # rows are unit vectors in R^m
    else:
        tuned, reference = vh_t[:k], base.vh  # rows are unit vectors in R^n
    dtype = torch.promote_types(tuned.dtype, reference.dtype)
    # Both sets are orthonormal, so the dot product is the cosine.
    cos = (tuned.to(dtype) @ reference.to(dtype).T).abs()  # (k, r)
    return cos.max(dim=1).values


def _singular_values(w: torch.Tensor) -> torch.Tensor:
    return torch.linalg.svdvals(_as_matrix(w))


def _entropy(s: torch.Tensor) -> float:
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s / total
    p = p[p > 0]  # 0 log 0 = 0
    return float(-(p * p.log()).sum())


def _effective_rank(s: torch.Tensor) -> float:
    # A zero matrix has rank 0; exp(0) would claim 1.
    return 0.0 if float(s.sum()) <= 0 else math.exp(_entropy(s))


def _stable_rank(s: torch.Tensor) -> float:
    top = float(s.max()) if s.numel() else 0.0
    return 0.0 if top <= 0 else float((s**2).sum()) / top**2


def _spectral_norm(s: torch.Tensor) -> float:
    return float(s.max()) if s.numel() else 0.0


def _features(s: torch.Tensor, prefix: str) -> dict[str, float]:
    """{prefix_effective_rank, prefix_sv_entropy, prefix_stable_rank, prefix_spectral_norm} from singular values."""
    s = s.double()
    return {
        f"{prefix}_effective_rank": _effective_rank(s),
        f"{prefix}_sv_entropy": _entropy(s),
        f"{prefix}_stable_rank": _stable_rank(s),
        f"{prefix}_spectral_norm": _spectral_norm(s),
    }


# ---------------------------------------------------------------- intruder dimensions


def base_spectrum(w_base: torch.Tensor) -> BaseSpectrum:
    """Thin SVD of the base matrix (m, n) -> BaseSpectrum(u (m, r), s (r,), vh (r, n))."""
    u, s, vh = _svd(_as_matrix(w_base, "w_base"))
    return BaseSpectrum(u=u, s=s, vh=vh)


def max_base_similarity(base: BaseSpectrum, w_tuned: torch.Tensor, *, k: int = PAPER_K, side: str = "left") -> torch.Tensor:
    """Max |cos| of each of the tuned matrix's top-k singular vectors with all base singular vectors.

    Takes the base spectrum and the tuned matrix (m, n); returns a float tensor of shape (k,), or
    (min(m, n),) when the matrix has fewer than k singular vectors (then all of them are examined).
    `side="left"` compares columns of U (the paper's choice); `"right"` compares rows of Vh.
    Thresholding this at epsilon gives the intruder mask, so an epsilon sweep needs it only once.
    """
    w = _as_matrix(w_tuned, "w_tuned")
    _check_shape(base, w)
    u_t, _, vh_t = _svd(w)
    return _similarity_from_svd(base, u_t, vh_t, k, side)


def epsilon_sweep(max_similarity: torch.Tensor, epsilons: Sequence[float]) -> list[int]:
    """Intruder counts (max |cos| < epsilon) at each epsilon, from one `max_base_similarity` result."""
    for epsilon in epsilons:
        _check_epsilon(epsilon)
    return [int((max_similarity < epsilon).sum()) for epsilon in epsilons]


def intruder_mask(
    base: BaseSpectrum,
    w_tuned: torch.Tensor,
    *,
    k: int = PAPER_K,
    epsilon: float = PAPER_EPSILON,
    side: str = "left",
) -> torch.Tensor:
    """Bool (k,): True where the j-th top singular vector of w_tuned is an intruder (Algorithm 1)."""
    _check_epsilon(epsilon)
    return max_base_similarity(base, w_tuned, k=k, side=side) < epsilon


def count_intruders(
    w_base: torch.Tensor | BaseSpectrum,
    w_tuned: torch.Tensor,
    k: int = PAPER_K,
    epsilon: float = PAPER_EPSILON,
) -> int:
    """Number of intruder dimensions among the top-k left singular vectors of w_tuned.

    `w_base` is the base matrix (m, n) or its precomputed `BaseSpectrum`, so sweeps can reuse it.
    """
    base = w_base if isinstance(w_base, BaseSpectrum) else base_spectrum(w_base)
    return int(intruder_mask(base, w_tuned, k=k, epsilon=epsilon).sum())


# ---------------------------------------------------------------- ranks and norms


def singular_value_entropy(w: torch.Tensor) -> float:
    """Shannon entropy (nats) of the singular values normalised to sum to 1; 0 for a zero matrix."""
    return _entropy(_singular_values(w))


def effective_rank(w: torch.Tensor) -> float:
    """Roy & Vetterli (2007) effective rank: exp(singular_value_entropy(w)); 0 for a zero matrix."""
    return _effective_rank(_singular_values(w))


def stable_rank(w: torch.Tensor) -> float:
    """||W||_F^2 / ||W||_2^2; 0 for a zero matrix."""
    return _stable_rank(_singular_values(w))


def spectral_norm(w: torch.Tensor) -> float:
    """Largest singular value ||W||_2."""
    return _spectral_norm(_singular_values(w))


# ---------------------------------------------------------------- per-matrix report and summary


def analyze_matrix(
    name: str,
    base: BaseSpectrum,
    w_base: torch.Tensor,
    w_tuned: torch.Tensor,
    *,
    k: int = PAPER_K,
    epsilon: float = PAPER_EPSILON,
    epsilons: Sequence[float] = DEFAULT_EPSILONS,
    delta: torch.Tensor | None = None,
) -> MatrixReport:
    """Intruders (both sides, plus the epsilon sweep), ΔW statistics, and the spectral features (effective
    rank, SV entropy, stable rank, spectral norm) of w_tuned, w_base and ΔW.

    `base` must be the spectrum of `w_base` (m, n); its singular values give the base features. The tuned
    matrix's SVD is computed once here and gives both the intruders and the tuned features. `delta` (m, n)
    is ΔW when the caller has it exactly (an adapter's own update, `models.methods.weight_updates`);
    without it ΔW = w_tuned - w_base, which for a low-precision w_tuned measures its rounding as well.
    """
    _check_epsilon(epsilon)
    w0 = _as_matrix(w_base, "w_base")
    w = _as_matrix(w_tuned, "w_tuned")
    _check_shape(base, w0)
    _check_shape(base, w)
    u_t, s_t, vh_t = _svd(w)
    left = _similarity_from_svd(base, u_t, vh_t, k, "left")
    right = _similarity_from_svd(base, u_t, vh_t, k, "right")
    is_intruder = left < epsilon

    if delta is None:
        dtype = torch.promote_types(w0.dtype, w.dtype)
        delta = w.to(dtype) - w0.to(dtype)
    else:
        delta = _as_matrix(delta, "delta")
        _check_shape(base, delta)
    s_delta = torch.linalg.svdvals(delta)
    delta_fro = float(torch.linalg.matrix_norm(delta))
    base_fro = float(torch.linalg.matrix_norm(w0))
    if base_fro > 0:
        relative = delta_fro / base_fro
    else:
        relative = 0.0 if delta_fro == 0 else math.inf

    return MatrixReport(
        name=name,
        shape=(w.shape[0], w.shape[1]),
        intruders=int(is_intruder.sum()),
        intruders_right=int((right < epsilon).sum()),
        intruder_ranks=[int(j) for j in torch.nonzero(is_intruder).flatten()],
        epsilon_sweep={str(e): c for e, c in zip(epsilons, epsilon_sweep(left, epsilons))},
        delta_fro_norm=delta_fro,
        delta_spectral_norm=_spectral_norm(s_delta),
        delta_effective_rank=_effective_rank(s_delta),
        delta_stable_rank=_stable_rank(s_delta),
        relative_delta_norm=relative,
        delta_sv_entropy=_entropy(s_delta),
        **_features(s_t, "tuned"),
        **_features(base.s, "base"),
    )


_LAYER_INDEX = re.compile(r"\.(\d+)\.")


def layer_of(name: str) -> str:
    """The layer index of a matrix name as a string: its first `.N.` number (`model.layers.3.mlp...` → "3"),
    or "-" when it has none."""
    match = _LAYER_INDEX.search(name)
    return match.group(1) if match else "-"


# leaves that name two different matrices of a layer: GPT-2 (and CodeParrot, StarCoder) call both the attention
# output and the MLP's down projection `c_proj`
_SHARED_LEAVES = frozenset({"c_proj"})


def module_type_of(name: str) -> str:
    """The name's last component before `.weight`: `model.layers.3.self_attn.q_proj.weight` → "q_proj";
    with its parent where the leaf alone is ambiguous: `transformer.h.0.mlp.c_proj.weight` → "mlp.c_proj"."""
    parts = name.removesuffix(".weight").rsplit(".", 2)
    return ".".join(parts[-2:]) if parts[-1] in _SHARED_LEAVES and len(parts) > 1 else parts[-1]


def layer_sort_key(layer: str) -> tuple[int, int, str]:
    """Numeric order for layer keys ("2" before "10"), with "-" (no layer) last."""
    return (0, int(layer), "") if layer.isdigit() else (1, 0, layer)


def intruders_by_position(reports: Sequence[MatrixReport]) -> dict[str, dict[str, int]]:
    """Intruder totals per layer index (the first number in a matrix's name, e.g. `layers.3.`) and per
    module type (the name's last component before `.weight`, e.g. `q_proj`); JSON-friendly keys."""
    by_layer: dict[str, int] = {}
    by_type: dict[str, int] = {}
    for report in reports:
        layer, module = layer_of(report.name), module_type_of(report.name)
        by_layer[layer] = by_layer.get(layer, 0) + report.intruders
        by_type[module] = by_type.get(module, 0) + report.intruders
    return {"by_layer": dict(sorted(by_layer.items(), key=lambda item: layer_sort_key(item[0]))), "by_module_type": by_type}


def _feature_means(matrices: Sequence[dict], group_of, features: Sequence[str]) -> dict[str, dict[str, float]]:
    sums: dict[str, dict[str, list[float]]] = {}
    for record in matrices:
        group = sums.setdefault(group_of(record["name"]), {})
        for feature in features:
            value = record.get(feature)
            if value is not None:  # None / absent: not computed for this record
                group.setdefault(feature, []).append(float(value))
    return {key: {f: sum(v) / len(v) for f, v in group.items()} for key, group in sums.items()}


def features_by_layer(matrices: Sequence[dict], features: Sequence[str] = SPECTRAL_FEATURES) -> dict[str, dict[str, float]]:
    """Mean of each spectral feature per layer index, from the `matrices` records of spectral.json
    (dicts of MatrixReport fields): {layer: {feature: mean}}, layers in numeric order ("-" = no layer
    number, last). A feature that is absent or None in a record is left out of that mean (and out of
    the layer's dict when no record of the layer has it); non-finite values are kept."""
    means = _feature_means(matrices, layer_of, features)
    return dict(sorted(means.items(), key=lambda item: layer_sort_key(item[0])))


def features_by_module_type(matrices: Sequence[dict], features: Sequence[str] = SPECTRAL_FEATURES) -> dict[str, dict[str, float]]:
    """Like features_by_layer, grouped by module type (`q_proj`, `up_proj`, ...) in order of first appearance."""
    return _feature_means(matrices, module_type_of, features)


def intruder_position_histogram(reports: Sequence[MatrixReport]) -> dict[str, int]:
    """{str(position): count} of intruders over all matrices, position 0-based among the tuned top-k
    (0 = the top singular vector, as in MatrixReport.intruder_ranks); only positions that occur, in
    numeric order."""
    counts: dict[int, int] = {}
    for report in reports:
        for position in report.intruder_ranks:
            counts[position] = counts.get(position, 0) + 1
    return {str(position): counts[position] for position in sorted(counts)}


def summarize(reports: Sequence[MatrixReport]) -> dict:
    """Totals over the matrices of one run; JSON-friendly (means are None when there are no reports)."""
    n = len(reports)
    grids = {tuple(r.epsilon_sweep) for r in reports}
    if len(grids) > 1:
        raise ValueError("reports were swept over different epsilon grids; totals would mix them")
    sweep_keys = next(iter(grids)) if grids else ()

    def mean(values: list[float]) -> float | None:
        return sum(values) / n if n else None

    def mean_known(field: str) -> float | None:  # skips None (reports made without the new features)
        values = [getattr(r, field) for r in reports if getattr(r, field) is not None]
        return sum(values) / len(values) if values else None

    counts = [r.intruders for r in reports]
    return {
        "matrices": n,
        "total_intruders": sum(counts),
        "total_intruders_right": sum(r.intruders_right for r in reports),
        "matrices_with_intruders": sum(c >= 1 for c in counts),
        "mean_intruders_per_matrix": mean(counts),
        "max_intruders_per_matrix": max(counts) if counts else None,
        "epsilon_sweep": {key: sum(r.epsilon_sweep[key] for r in reports) for key in sweep_keys},
        **intruders_by_position(reports),
        "intruder_positions": intruder_position_histogram(reports),
        "mean_delta_fro_norm": mean([r.delta_fro_norm for r in reports]),
        "mean_delta_spectral_norm": mean([r.delta_spectral_norm for r in reports]),
        "mean_delta_effective_rank": mean([r.delta_effective_rank for r in reports]),
        "mean_delta_stable_rank": mean([r.delta_stable_rank for r in reports]),
        "mean_relative_delta_norm": mean([r.relative_delta_norm for r in reports]),
        "mean_delta_sv_entropy": mean_known("delta_sv_entropy"),
        "mean_tuned_effective_rank": mean_known("tuned_effective_rank"),
        "mean_base_effective_rank": mean_known("base_effective_rank"),
    }


# ---------------------------------------------------------------- cache of base spectra


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)[:120]


class SpectrumCache:
    """Base SVDs keyed by (base fingerprint, matrix name): computed once per base, kept in memory and
    on disk (one safetensors file per matrix under `directory/<fingerprint>/`) so that every run of a
    sweep reuses them. `directory=None` keeps them in memory only.

    The fingerprint must identify the base weights (e.g. a hash of the checkpoint); as a guard against
    a stale fingerprint, a loaded spectrum whose energy sum(s^2) differs from ||w_base||_F^2 is refused.
    """

    def __init__(self, directory: Path | None, base_fingerprint: str):
        self.directory = Path(directory) if directory is not None else None
        self.base_fingerprint = base_fingerprint
        self.computed = 0  # SVDs computed rather than loaded; lets callers check reuse
        self._memory: dict[str, BaseSpectrum] = {}

    def path(self, name: str) -> Path | None:
        """Where the spectrum of matrix `name` lives on disk (None without a directory)."""
        if self.directory is None:
            return None
        # The hash keeps names that sanitise alike (e.g. "a/b" and "a_b") apart.
        digest = hashlib.sha256(f"{self.base_fingerprint}\0{name}".encode()).hexdigest()[:16]
        folder = self.directory / _safe_name(self.base_fingerprint)
        return folder / f"{_safe_name(name)}.{digest}.safetensors"

    def get(self, name: str, w_base: torch.Tensor) -> BaseSpectrum:
        """The spectrum of `w_base` (m, n): from memory, else disk, else computed and stored."""
        if name in self._memory:
            return self._memory[name]
        path = self.path(name)
        if path is not None and path.exists():
            spectrum = self._load(path, name, w_base)
        else:
            spectrum = base_spectrum(w_base)
            self.computed += 1
            if path is not None:
                self._store(path, name, spectrum)
        self._memory[name] = spectrum
        return spectrum

    def _load(self, path: Path, name: str, w_base: torch.Tensor) -> BaseSpectrum:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            spectrum = BaseSpectrum(u=f.get_tensor("u"), s=f.get_tensor("s"), vh=f.get_tensor("vh"))
        if metadata.get("name") != name or metadata.get("base_fingerprint") != self.base_fingerprint:
            raise ValueError(f"{path}: holds {metadata}, expected name={name!r}, base_fingerprint={self.base_fingerprint!r}")
        if spectrum.shape != tuple(w_base.shape):
            raise ValueError(
                f"{path}: cached spectrum is for shape {spectrum.shape}, "
                f"w_base has {tuple(w_base.shape)}; the base fingerprint is stale"
            )
        energy = float((spectrum.s.double() ** 2).sum())
        expected = float(torch.linalg.matrix_norm(_as_matrix(w_base).double()) ** 2)
        if not math.isclose(energy, expected, rel_tol=1e-3, abs_tol=1e-8):
            raise ValueError(
                f"{path}: cached spectrum does not match w_base (sum s^2 = {energy:.6g}, "
                f"||w_base||_F^2 = {expected:.6g}); the base fingerprint is stale"
            )
        return spectrum

    def _store(self, path: Path, name: str, spectrum: BaseSpectrum) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {"u": spectrum.u.contiguous(), "s": spectrum.s.contiguous(), "vh": spectrum.vh.contiguous()}
        metadata = {"name": name, "base_fingerprint": self.base_fingerprint}
        # Temp file in the same directory + os.replace: readers never see a half-written file.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        try:
            save_file(tensors, tmp, metadata=metadata)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
