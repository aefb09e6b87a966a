"""Interventions on tuned weights and layer choices that the spectral analysis motivates.

The causal test of Shuttleworth et al., "LoRA vs Full Fine-tuning: An Illusion of Equivalence" (2024,
arXiv:2410.21228, §6) scales the singular values of a tuned matrix's intruder dimensions by lambda and sees what
the model gains or forgets; its control scales as many of the matrix's top non-intruder directions by the same
lambda, so that an effect of the intruders is told apart from one of scaling any top direction.
`choose_directions` picks both sets from one SVD and `scale_directions` scales either (one code path);
`model_directions` and `scale_model_directions` do the same over a model's weights. `select_layers` picks the
layers that get LoRA adapters from a per-layer similarity score (applied through PEFT's `layers_to_transform`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import islice

import torch
from torch import nn

from ftcompare.analyze.spectral import (
    PAPER_EPSILON,
    PAPER_K,
    BaseSpectrum,
    _as_matrix,
    _check_epsilon,
    _check_shape,
    _similarity_from_svd,
    _svd,
    base_spectrum,
)
from ftcompare.models.weights import as_out_in

# ---------------------------------------------------------------- scaling singular directions

# what the causal test scales: the intruder dimensions, or as many top non-intruder directions (the control)
DIRECTIONS = ("intruders", "control")


@dataclass(frozen=True)
class Directions:
    """Rank-1 components s_j u_j v_j^T of a tuned matrix W (m, n) = U diag(S) V^T, chosen by position j in its
    spectrum (0: the largest singular value)."""

    positions: list[int]  # ascending
    u: torch.Tensor  # (m, d) the chosen left singular vectors, as columns
    s: torch.Tensor  # (d,) their singular values
    vh: torch.Tensor  # (d, n) the chosen right singular vectors, as rows


def control_positions(intruders: Sequence[int], rank: int) -> list[int]:
    """The control of a matrix's intruder dimensions: as many directions, the highest-ranked that are not intruders.

    `intruders` are positions among the top k (Algorithm 1 examines only those); `rank` = min(m, n) is how many
    singular directions the matrix has. Where the top k holds fewer non-intruders than there are intruders, the
    control goes on down the spectrum past k (a direction past the top k is not an intruder by the definition):
    the count always matches, except in a matrix with fewer than 2 * len(intruders) directions, where the control
    is every non-intruder. Returns ascending positions.
    """
    taken = set(intruders)
    return list(islice((j for j in range(rank) if j not in taken), len(intruders)))


def choose_directions(
    base: BaseSpectrum, w_tuned: torch.Tensor, *, k: int = PAPER_K, epsilon: float = PAPER_EPSILON
) -> dict[str, Directions]:
    """{"intruders": ..., "control": ...} of w_tuned (m, n), from one SVD of it.

    The intruders are the j among the top-k left singular vectors flagged by Algorithm 1 (what
    `spectral.intruder_mask(base, w_tuned, k=k, epsilon=epsilon)` flags); the control is `control_positions` of
    them. Vectors are on the CPU, in float64 for float64 input, else float32.
    """
    _check_epsilon(epsilon)
    w = _as_matrix(w_tuned, "w_tuned")
    _check_shape(base, w)
    u, s, vh = _svd(w)
    intruders = [int(j) for j in torch.nonzero(_similarity_from_svd(base, u, vh, k, "left") < epsilon).flatten()]
    chosen = {"intruders": intruders, "control": control_positions(intruders, s.numel())}
    result = {}
    for kind, positions in chosen.items():
        index = torch.tensor(positions, dtype=torch.long)
        result[kind] = Directions(positions, u[:, index], s[index], vh[index])
    return result


def scale_directions(w_tuned: torch.Tensor, directions: Directions, lam: float) -> torch.Tensor:
    """w_tuned (m, n) with the chosen directions' singular values scaled by `lam`.

    Computed as w_tuned + sum_j (lam - 1) s_j u_j v_j^T over the chosen j, which equals U diag(S') V^T with
    S'_j = lam * S_j but leaves the rest of the matrix bit-for-bit untouched (no reconstruction error): lam = 0
    removes exactly those rank-1 components, and lam = 1 (or no direction chosen) returns a bit-identical copy.
    The result has w_tuned's shape, dtype and device; arithmetic is in float64 for float64 input, else float32.
    `lam` must be finite and >= 0 (a negative lam would flip a component, not scale a singular value).
    """
    if not math.isfinite(lam) or lam < 0:
        raise ValueError(f"lam must be finite and >= 0, got {lam}")
    if lam == 1.0 or not directions.positions:
        return w_tuned.detach().clone()
    w = _as_matrix(w_tuned, "w_tuned")
    delta = (directions.u * ((lam - 1.0) * directions.s)) @ directions.vh  # (m, n), rank len(positions)
    return (w + delta.to(w.dtype)).to(dtype=w_tuned.dtype, device=w_tuned.device)


def model_directions(
    model: nn.Module,
    base_weights: dict[str, torch.Tensor],
    spectra: dict[str, BaseSpectrum],
    *,
    k: int = PAPER_K,
    epsilon: float = PAPER_EPSILON,
) -> dict[str, dict[str, Directions]]:
    """`choose_directions` for each named 2-D weight of a (merged) model: {name: {"intruders": ..., "control": ...}}.

    The matrices are the keys of `base_weights` (names as in `model.named_parameters()`, base matrices (out, in));
    each uses `spectra[name]` when given, else the SVD of `base_weights[name]`. A Conv1D weight (GPT-2, stored
    (in, out)) is read through its (out, in) view, so its directions are left singular vectors in the output
    space, as for nn.Linear. They are those of the weights the model runs with (its merge), the weights the
    intervention changes. Raises KeyError for a name the model does not have.
    """
    params = dict(model.named_parameters())
    missing = [name for name in base_weights if name not in params]
    if missing:
        raise KeyError(f"model has no parameters named {missing}")
    return {
        name: choose_directions(
            spectra[name] if name in spectra else base_spectrum(w_base),
            as_out_in(model, name, params[name]),
            k=k,
            epsilon=epsilon,
        )
        for name, w_base in base_weights.items()
    }


def scale_model_directions(model: nn.Module, tuned: dict[str, torch.Tensor], chosen: dict[str, Directions], lam: float) -> None:
    """Set, in place, each weight named in `chosen` to its tuned value `tuned[name]` (laid out as the parameter)
    with the chosen directions scaled by `lam` (`scale_directions`); lam = 1 puts the tuned weights back."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, directions in chosen.items():
            scaled = scale_directions(as_out_in(model, name, tuned[name]), directions, lam)
            as_out_in(model, name, params[name]).copy_(scaled)


# ---------------------------------------------------------------- layer-wise LoRA selection


def select_layers(scores: Sequence[float], fraction: float) -> list[int]:
    """Layers to adapt, chosen by representation similarity.

    `scores[i]` is the CKA between layer i's input and output hidden states on a probe set (high =
    the layer changes representations little). Of the L = len(scores) layers, returns the
    n = ceil(fraction * L) with the LOWEST score (those that change representations most); equal
    scores are broken by the lower layer index; the result is sorted ascending. fraction * L is
    rounded to 9 decimals before the ceiling so that e.g. 0.3 * 10 gives 3, not 4.
    Raises ValueError if fraction is not in (0, 1], scores is empty, or a score is NaN.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if len(scores) == 0:
        raise ValueError("scores is empty")
    values = [float(x) for x in scores]
    if any(math.isnan(x) for x in values):
        raise ValueError(f"scores contain NaN: {values}")
    n = math.ceil(round(fraction * len(values), 9))
    ranked = sorted(range(len(values)), key=lambda i: (values[i], i))
    return sorted(ranked[:n])
