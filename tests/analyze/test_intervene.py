import math

import pytest
import torch
from torch import nn

from ftcompare.analyze.intervene import (
    scale_intruders,
    scale_model_intruders,
    select_layers,
)
from ftcompare.analyze.spectral import base_spectrum, intruder_mask

M, N = 64, 48
GROUP = 16  # planted direction spread evenly over 16 base left vectors: max |cos| = 0.25


def _orthonormal(rows, cols, gen):
    q, _ = torch.linalg.qr(torch.randn(rows, cols, generator=gen, dtype=torch.float64))
    return q


def _planted(seed=0, strength=30.0):
    """(w0, w_tuned, u_star): W0 with s = 10 * 0.9^i, plus strength * u* v*^T."""
    gen = torch.Generator().manual_seed(seed)
    u, v = _orthonormal(M, N, gen), _orthonormal(N, N, gen)
    s = 10 * 0.9 ** torch.arange(N, dtype=torch.float64)
    w0 = u @ torch.diag(s) @ v.T
    u_star = u[:, 10 : 10 + GROUP].sum(dim=1) / math.sqrt(GROUP)
    v_star = torch.randn(N, generator=gen, dtype=torch.float64)
    v_star /= v_star.norm()
    return w0, w0 + strength * torch.outer(u_star, v_star), u_star


def _top_cos(w, direction, k=10):
    u, _, _ = torch.linalg.svd(w, full_matrices=False)
    return float((u[:, :k].T @ direction).abs().max())


def test_planted_intruder_found_and_removed_at_zero():
    w0, w, u_star = _planted()
    base = base_spectrum(w0)
    out, idx = scale_intruders(base, w, 0.0)
    assert idx == [0]
    assert _top_cos(w, u_star) > 0.99
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    expected = w - sum(s[j] * torch.outer(u[:, j], vh[j]) for j in idx)
    torch.testing.assert_close(out, expected)
    assert _top_cos(out, u_star) < 0.3
    assert not intruder_mask(base, out).any()


def test_lambda_one_is_identity_and_two_doubles():
    w0, w, _ = _planted()
    base = base_spectrum(w0)
    same, idx = scale_intruders(base, w, 1.0)
    assert idx == [0]
    torch.testing.assert_close(same, w)
    doubled, _ = scale_intruders(base, w, 2.0)
    s = torch.linalg.svdvals(w)
    s2 = torch.linalg.svdvals(doubled)
    torch.testing.assert_close(s2[0], 2 * s[0])
    torch.testing.assert_close(s2[1:], s[1:])


def test_no_intruders_returns_unchanged_copy():
    w0, _, _ = _planted()
    w = w0 * 1.01
    out, idx = scale_intruders(base_spectrum(w0), w, 0.0)
    assert idx == []
    assert torch.equal(out, w) and out is not w


def test_keeps_dtype_and_rejects_negative_lambda():
    w0, w, _ = _planted()
    base = base_spectrum(w0)
    out, idx = scale_intruders(base, w.to(torch.bfloat16), 0.0)
    assert out.dtype == torch.bfloat16 and idx == [0]
    with pytest.raises(ValueError):
        scale_intruders(base, w, -1.0)


def test_scale_model_intruders_in_place():
    w0, w, u_star = _planted()
    model = nn.Sequential(nn.Linear(N, M, bias=False), nn.Linear(M, M, bias=False))
    other0 = torch.randn(M, M, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        model[0].weight.copy_(w)
        model[1].weight.copy_(other0)
    before = model[1].weight.detach().clone()
    base_weights = {"0.weight": w0.float(), "1.weight": other0.float()}
    found = scale_model_intruders(model, base_weights, {"0.weight": base_spectrum(w0)}, 0.0)
    assert found == {"0.weight": [0], "1.weight": []}
    assert _top_cos(model[0].weight.detach().double(), u_star) < 0.3
    assert torch.equal(model[1].weight, before)
    assert model[0].weight.requires_grad
    with pytest.raises(KeyError):
        scale_model_intruders(model, {"nope": w0}, {}, 0.0)


def test_scale_model_intruders_reads_a_conv1d_weight_as_out_by_in():
    from transformers.pytorch_utils import Conv1D

    w0, w, u_star = _planted()  # (out, in) = (M, N)
    model = nn.Sequential(Conv1D(M, N))  # GPT-2's layer: weight stored (in, out) = (N, M)
    with torch.no_grad():
        model[0].weight.copy_(w.T)
    found = scale_model_intruders(model, {"0.weight": w0.float()}, {"0.weight": base_spectrum(w0)}, 0.0)
    assert found == {"0.weight": [0]}  # a left singular vector of the (out, in) matrix, as for nn.Linear
    assert model[0].weight.shape == (N, M) and _top_cos(model[0].weight.detach().double().T, u_star) < 0.3


@pytest.mark.parametrize(
    ("scores", "fraction", "expected"),
    [
        ([0.9, 0.1, 0.5, 0.3], 0.5, [1, 3]),
        ([0.9, 0.1, 0.5, 0.3], 0.25, [1]),
        ([0.9, 0.1, 0.5, 0.3], 0.3, [1, 3]),  # ceil(1.2) = 2
        ([0.9, 0.1, 0.5, 0.3], 1.0, [0, 1, 2, 3]),
        ([0.5, 0.2, 0.2, 0.2, 0.9], 0.4, [1, 2]),  # tie among 1, 2, 3: lower indices win
        ([0.7, 0.7, 0.7], 0.01, [0]),
        ([float(i) for i in range(10)], 0.3, [0, 1, 2]),  # 0.3 * 10 is 3, not 4
    ],
)
def test_select_layers(scores, fraction, expected):
    assert select_layers(scores, fraction) == expected


@pytest.mark.parametrize(
    ("scores", "fraction"), [([0.1], 0.0), ([0.1], 1.5), ([0.1], -0.2), ([], 0.5), ([0.1, float("nan")], 0.5)]
)
def test_select_layers_errors(scores, fraction):
    with pytest.raises(ValueError):
        select_layers(scores, fraction)


def test_peft_adapts_only_selected_layers():
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    config = transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    layers = select_layers([0.9, 0.2, 0.8, 0.1], 0.5)
    assert layers == [1, 3]
    from ftcompare.matrix import RunSpec
    from ftcompare.models.methods.lora import lora_peft_config

    run = RunSpec(
        run_id="lora-r2-l50-s0", method="lora", seed=0, lr=1e-3, rank=2, alpha=4, target_modules="all-linear", layer_fraction=0.5
    )
    peft_model = peft.get_peft_model(model, lora_peft_config(run, model, layers))
    adapted = set()
    for name, _ in peft_model.named_parameters():
        if "lora_" in name:
            parts = name.split(".")
            adapted.add((int(parts[parts.index("layers") + 1]), name.split(".lora_")[0].split(".")[-1]))
    assert adapted == {
        (i, m) for i in layers for m in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    }
