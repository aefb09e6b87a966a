"""Representation similarity (linear CKA) and attention structure of two models on the same inputs.

Linear CKA follows Kornblith, Norouzi, Lee & Hinton, "Similarity of Neural Network Representations
Revisited" (ICML 2019), the linear-kernel form on column-centred features:
    CKA(X, Y) = ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F).
It is invariant to orthogonal transforms, isotropic scaling and translation of either argument.

Attention maps are compared per head: the mean Shannon entropy of each query row, and the mean
Jensen-Shannon divergence between corresponding rows of two models. Both are in nats (0 log 0 = 0), so
JS lies in [0, log 2].

All arithmetic is on CPU in float64.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def linear_cka(x: Tensor, y: Tensor) -> float:
    """Linear CKA between x (n, d1) and y (n, d2), rows are the same n examples; a float in [0, 1]."""
    if x.ndim != 2 or y.ndim != 2:
        raise ValueError(f"linear_cka expects 2-D (n, d) inputs, got shapes {tuple(x.shape)} and {tuple(y.shape)}")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"linear_cka needs the same number of examples, got {x.shape[0]} and {y.shape[0]}")
    if x.shape[0] < 2:
        raise ValueError(f"linear_cka needs at least 2 examples, got {x.shape[0]}")
    xc = _centered(x)
    yc = _centered(y)
    # d x d Gram forms: cheaper than n x n kernels when there are more tokens than features
    cross = torch.linalg.matrix_norm(yc.T @ xc) ** 2
    norm_x = torch.linalg.matrix_norm(xc.T @ xc)
    norm_y = torch.linalg.matrix_norm(yc.T @ yc)
    if norm_x == 0 or norm_y == 0:
        raise ValueError("linear_cka is undefined for constant features (zero variance after centring)")
    return float(cross / (norm_x * norm_y))


def layerwise_cka(hidden_a: Sequence[Tensor], hidden_b: Sequence[Tensor], mask: Tensor | None = None) -> list[float]:
    """Linear CKA per layer between two models' hidden states on the same inputs.

    hidden_a[i], hidden_b[i]: (batch, seq, dim_a) and (batch, seq, dim_b); mask: (batch, seq) of 1/0 or
    None (all tokens). Each layer is flattened to (n_valid_tokens, dim) over the non-padding tokens.
    """
    if len(hidden_a) != len(hidden_b):
        raise ValueError(f"layerwise_cka needs the same number of layers, got {len(hidden_a)} and {len(hidden_b)}")
    return [linear_cka(_valid_tokens(a, mask), _valid_tokens(b, mask)) for a, b in zip(hidden_a, hidden_b)]


def layer_io_cka(hidden: Sequence[Tensor], mask: Tensor | None = None) -> list[float]:
    """Per decoder layer i, linear CKA between its input hidden_states[i] and output hidden_states[i+1]
    of one model (len(hidden) - 1 scores): near 1, the layer changes the representation little.
    The score layer-wise LoRA ranks layers by (see ftcompare.analyze.intervene.select_layers)."""
    return layerwise_cka(hidden[:-1], hidden[1:], mask)


def attention_entropy(attn: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean Shannon entropy (nats) of each head's attention rows: attn (batch, heads, q, k) -> (heads,).

    mask: (batch, q) of 1/0 selecting the query positions averaged over, or None (all positions).
    """
    p = attn.detach().to("cpu", torch.float64)
    row_entropy = -torch.special.xlogy(p, p).sum(dim=-1)  # (batch, heads, q)
    return _mean_over_queries(row_entropy, mask)


def attention_distance(attn_a: Tensor, attn_b: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean Jensen-Shannon divergence (nats) per head between corresponding attention rows.

    attn_a, attn_b: (batch, heads, q, k) with rows summing to 1; mask: (batch, q) of 1/0 or None.
    Returns (heads,), each in [0, log 2].
    """
    if attn_a.shape != attn_b.shape:
        raise ValueError(f"attention maps differ in shape: {tuple(attn_a.shape)} and {tuple(attn_b.shape)}")
    p = attn_a.detach().to("cpu", torch.float64)
    q = attn_b.detach().to("cpu", torch.float64)
    m = (p + q) / 2
    # KL(p || m) = sum p log(p / m) = sum p log p - p log m; terms with p = 0 vanish (and m >= p/2 > 0 elsewhere)
    kl_pm = (torch.special.xlogy(p, p) - torch.special.xlogy(p, m)).sum(dim=-1)
    kl_qm = (torch.special.xlogy(q, q) - torch.special.xlogy(q, m)).sum(dim=-1)
    row_js = ((kl_pm + kl_qm) / 2).clamp_min(0.0)  # rounding can leave tiny negatives
    return _mean_over_queries(row_js, mask)


@torch.no_grad()
def hidden_states_and_attentions(
    model: torch.nn.Module, input_ids: Tensor, attention_mask: Tensor | None = None
) -> tuple[list[Tensor], list[Tensor]]:
    """One forward pass returning (hidden states, attention maps), all on CPU.

    input_ids, attention_mask: (batch, seq). Hidden states: num_layers + 1 tensors (batch, seq, dim), the
    embeddings first. Attentions: num_layers tensors (batch, heads, seq, seq).

    Fused kernels (sdpa, flash) do not return attention weights, so the model is switched to the "eager"
    implementation for this call and switched back afterwards.
    """
    config = getattr(model, "config", None)
    previous = getattr(config, "_attn_implementation", None)
    switched = previous is not None and previous != "eager"
    if switched:
        _set_attn_implementation(model, "eager")
    try:
        out = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            output_hidden_states=True,
            output_attentions=True,
            return_dict=True,
        )
    finally:
        if switched:
            _set_attn_implementation(model, previous)
    if out.attentions is None or any(a is None for a in out.attentions):
        raise RuntimeError("the model returned no attention weights; it may not support output_attentions")
    hidden = [h.detach().to("cpu") for h in out.hidden_states]
    attentions = [a.detach().to("cpu") for a in out.attentions]
    return hidden, attentions


def _set_attn_implementation(model: torch.nn.Module, implementation: str) -> None:
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(implementation)
    else:  # older transformers read the private config field at forward time
        model.config._attn_implementation = implementation


def _centered(x: Tensor) -> Tensor:
    x = x.detach().to("cpu", torch.float64)
    return x - x.mean(dim=0, keepdim=True)


def _valid_tokens(hidden: Tensor, mask: Tensor | None) -> Tensor:
    """(batch, seq, dim) -> (n_valid_tokens, dim)."""
    if mask is None:
        return hidden.reshape(-1, hidden.shape[-1])
    if mask.shape != hidden.shape[:2]:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match hidden states {tuple(hidden.shape[:2])}")
    return hidden[mask.to(hidden.device).bool()]


def _mean_over_queries(per_row: Tensor, mask: Tensor | None) -> Tensor:
    """per_row (batch, heads, q) -> (heads,) averaged over the valid query positions of mask (batch, q)."""
    if mask is None:
        return per_row.mean(dim=(0, 2))
    batch, _, n_q = per_row.shape
    if mask.shape != (batch, n_q):
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match (batch, q) = {(batch, n_q)}")
    weights = mask.to("cpu", torch.float64)[:, None, :]  # (batch, 1, q)
    count = weights.sum()
    if count == 0:
        raise ValueError("mask selects no query positions")
    return (per_row * weights).sum(dim=(0, 2)) / count
