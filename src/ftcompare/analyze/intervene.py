"""Interventions on tuned weights and layer choices that the spectral analysis motivates.

`scale_intruders` is the causal test of Shuttleworth et al., "LoRA vs Full Fine-tuning: An Illusion
of Equivalence" (2024, arXiv:2410.21228): scale the singular values of a tuned matrix's intruder
dimensions by lambda and see what the model gains or forgets. `select_layers` picks the layers that get
LoRA adapters from a per-layer similarity score (applied through PEFT's `layers_to_transform`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ftcompare.analyze.spectral import (
    PAPER_EPSILON,
    PAPER_K,
    BaseSpectrum,
    _as_matrix,
    _svd,
    base_spectrum,
    intruder_mask,
)
from ftcompare.models.weights import as_out_in

# ---------------------------------------------------------------- intruder scaling


def scale_intruders(
    base: BaseSpectrum,
    w_tuned: torch.Tensor,
    lam: float,
    *,
    k: int = PAPER_K,
    epsilon: float = PAPER_EPSILON,
) -> tuple[torch.Tensor, list[int]]:
    """Scale the singular values of w_tuned's intruder dimensions by `lam`.

    With w_tuned (m, n) = U diag(S) V^T, the intruders are the j among the top-k left singular
    vectors flagged by `spectral.intruder_mask(base, w_tuned, k=k, epsilon=epsilon)`. Returns
    (U diag(S') V^T with S'_j = lam * S_j for intruder j and S_j otherwise, sorted intruder indices j).
    The result is computed as w_tuned + sum_j (lam - 1) S_j u_j v_j^T, which equals U S' V^T but
    leaves the non-intruder part bit-for-bit untouched (no reconstruction error), so lam = 1 gives
    w_tuned and lam = 0 removes exactly the intruder rank-1 components. It has w_tuned's shape,
    dtype and device; arithmetic is in float64 for float64 input, else float32.
    With no intruders the result is a copy of w_tuned (unchanged) and the index list is empty.
    `lam` must be finite and >= 0 (a negative lam would flip a component, not scale a singular value).
    """
    if not math.isfinite(lam) or lam < 0:
        raise ValueError(f"lam must be finite and >= 0, got {lam}")
    mask = intruder_mask(base, w_tuned, k=k, epsilon=epsilon)
    indices = [int(j) for j in torch.nonzero(mask).flatten()]
    if not indices:
        return w_tuned.detach().clone(), []
    w = _as_matrix(w_tuned, "w_tuned")
    # Same input and routine as inside intruder_mask, so the indices refer to these vectors.
    u, s, vh = _svd(w)
    idx = torch.tensor(indices)
    delta = (u[:, idx] * ((lam - 1.0) * s[idx])) @ vh[idx]  # (m, n), rank len(indices)
    out = w + delta
    return out.to(dtype=w_tuned.dtype, device=w_tuned.device), indices


def scale_model_intruders(
    model: nn.Module,
    base_weights: dict[str, torch.Tensor],
    spectra: dict[str, BaseSpectrum],
    lam: float,
    *,
    k: int = PAPER_K,
    epsilon: float = PAPER_EPSILON,
) -> dict[str, list[int]]:
    """Apply `scale_intruders` in place to the named 2-D weights of a (merged) model.

    The matrices acted on are the keys of `base_weights` (names as in `model.named_parameters()`,
    base matrices (out, in)); each uses `spectra[name]` when given, else the SVD of `base_weights[name]`.
    A Conv1D weight (GPT-2, stored (in, out)) is read and written through its (out, in) view, so its
    intruders are left singular vectors in the output space, as for nn.Linear. The intruders are those
    of the weights the model runs with (its merge), since those are the weights the intervention changes.
    Returns {name: intruder indices}. Raises KeyError for a name the model does not have.
    """
    params = dict(model.named_parameters())
    missing = [name for name in base_weights if name not in params]
    if missing:
        raise KeyError(f"model has no parameters named {missing}")
    found: dict[str, list[int]] = {}
    with torch.no_grad():
        for name, w_base in base_weights.items():
            spectrum = spectra[name] if name in spectra else base_spectrum(w_base)
            param = as_out_in(model, name, params[name])
            scaled, indices = scale_intruders(spectrum, param, lam, k=k, epsilon=epsilon)
            if indices:
                param.copy_(scaled)
            found[name] = indices
    return found


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
