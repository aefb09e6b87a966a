import math

import pytest
import torch

from ftcompare.analyze.similarity import (
    attention_distance,
    attention_entropy,
    hidden_states_and_attentions,
    layer_io_cka,
    layerwise_cka,
    linear_cka,
)


def _features(n=200, d=8, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# --- linear CKA ---------------------------------------------------------------------------------


def test_cka_of_a_representation_with_itself_is_one():
    x = _features()
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)


def test_cka_is_invariant_to_orthogonal_transform_isotropic_scaling_and_translation():
    x = _features(d=6)
    mixing = torch.randn(6, 10, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y = x @ mixing + 0.1 * _features(d=10, seed=2)
    q, _ = torch.linalg.qr(torch.randn(10, 10, generator=torch.Generator().manual_seed(3), dtype=torch.float64))
    base = linear_cka(x, y)
    assert 0.2 < base < 0.999  # a non-trivial value, so the invariances are tested
    assert linear_cka(x, y @ q) == pytest.approx(base, rel=1e-10)
    assert linear_cka(x, 7.5 * y) == pytest.approx(base, rel=1e-10)
    assert linear_cka(x, y + 3.0) == pytest.approx(base, rel=1e-10)


def test_cka_is_not_invariant_to_anisotropic_scaling():
    x = _features(d=4)
    y = x * torch.tensor([1.0, 1.0, 1.0, 50.0], dtype=torch.float64)
    assert linear_cka(x, y) < 0.9


def test_cka_is_symmetric_and_accepts_float32():
    x, y = _features(seed=4), _features(d=5, seed=5)
    assert linear_cka(x, y) == pytest.approx(linear_cka(y, x), rel=1e-12)
    assert linear_cka(x.float(), y.float()) == pytest.approx(linear_cka(x, y), rel=1e-5)


def test_cka_of_independent_features_is_small():
    assert linear_cka(_features(n=2000, d=5, seed=6), _features(n=2000, d=5, seed=7)) < 0.1


@pytest.mark.parametrize(
    ("x", "y"),
    [
        (torch.randn(10, 3), torch.randn(11, 3)),  # mismatched n
        (torch.randn(1, 3), torch.randn(1, 3)),  # n < 2
        (torch.randn(10), torch.randn(10)),  # not 2-D
        (torch.ones(10, 3), torch.randn(10, 3)),  # constant features
    ],
)
def test_cka_rejects_invalid_inputs(x, y):
    with pytest.raises(ValueError):
        linear_cka(x, y)


def test_layerwise_cka_uses_only_unmasked_tokens():
    g = torch.Generator().manual_seed(8)
    a = torch.randn(2, 6, 4, generator=g)
    b = a.clone()
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 0]])
    b[mask == 0] = torch.randn(3, 4, generator=g)  # padding differs, real tokens agree
    assert layerwise_cka([a, a], [b, b], mask) == pytest.approx([1.0, 1.0], abs=1e-12)
    assert layerwise_cka([a], [b], None)[0] < 0.999
    with pytest.raises(ValueError):
        layerwise_cka([a, a], [b], mask)


def test_layer_io_cka_scores_each_layer_by_its_input_and_output():
    g = torch.Generator().manual_seed(9)
    h0 = torch.randn(2, 8, 4, generator=g)
    q, _ = torch.linalg.qr(torch.randn(4, 4, generator=g))
    h1 = 3 * h0 @ q  # an orthogonal map and a scale: the layer keeps the representation (CKA 1)
    h2 = torch.randn(2, 8, 4, generator=g)  # a layer that replaces it
    scores = layer_io_cka([h0, h1, h2])
    assert len(scores) == 2
    assert scores[0] == pytest.approx(1.0, abs=1e-9)
    assert scores[1] < 0.9


# --- attention structure -------------------------------------------------------------------------


def test_entropy_of_uniform_attention_is_log_n():
    n = 7
    attn = torch.full((2, 3, 5, n), 1.0 / n)
    assert torch.allclose(attention_entropy(attn), torch.full((3,), math.log(n), dtype=torch.float64))


def test_entropy_of_one_hot_attention_is_zero():
    attn = torch.zeros(2, 3, 4, 4)
    attn[..., 0] = 1.0
    assert torch.equal(attention_entropy(attn), torch.zeros(3, dtype=torch.float64))


def test_entropy_of_causal_uniform_attention_averages_log_i_plus_one():
    n = 6
    attn = torch.tril(torch.ones(n, n)) / torch.arange(1, n + 1)[:, None]
    attn = attn.expand(2, 4, n, n)
    expected = sum(math.log(i + 1) for i in range(n)) / n
    assert torch.allclose(attention_entropy(attn), torch.full((4,), expected, dtype=torch.float64))
    # masking out the last two queries averages over the first four rows only
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]] * 2)
    expected_masked = sum(math.log(i + 1) for i in range(4)) / 4
    assert torch.allclose(attention_entropy(attn, mask), torch.full((4,), expected_masked, dtype=torch.float64))


def test_js_distance_of_identical_maps_is_zero():
    attn = torch.softmax(torch.randn(2, 3, 5, 5, generator=torch.Generator().manual_seed(9)), dim=-1)
    assert torch.allclose(attention_distance(attn, attn), torch.zeros(3, dtype=torch.float64), atol=1e-12)


def test_js_distance_of_disjoint_one_hot_rows_is_log_two():
    a = torch.zeros(1, 2, 3, 4)
    b = torch.zeros(1, 2, 3, 4)
    a[..., 0] = 1.0
    b[..., 1] = 1.0
    assert torch.allclose(attention_distance(a, b), torch.full((2,), math.log(2), dtype=torch.float64))
    assert torch.allclose(attention_distance(b, a), torch.full((2,), math.log(2), dtype=torch.float64))


def test_js_distance_per_head_and_mask():
    a = torch.zeros(1, 2, 2, 2)
    a[..., 0] = 1.0
    b = a.clone()
    b[0, 1, 1] = torch.tensor([0.0, 1.0])  # head 1, query 1 differs
    assert torch.allclose(attention_distance(a, b), torch.tensor([0.0, math.log(2) / 2], dtype=torch.float64))
    assert torch.allclose(attention_distance(a, b, torch.tensor([[1, 0]])), torch.zeros(2, dtype=torch.float64))
    with pytest.raises(ValueError):
        attention_distance(a, b[..., :1, :])


# --- model I/O ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32,
        attn_implementation="sdpa",  # the function must switch to eager to get attention weights
    )
    return LlamaForCausalLM(config).eval()


def test_hidden_states_and_attentions_of_tiny_llama(tiny_llama):
    input_ids = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(10))
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[1, 6:] = 0
    hidden, attentions = hidden_states_and_attentions(tiny_llama, input_ids, mask)

    assert len(hidden) == 3 and len(attentions) == 2
    assert all(h.shape == (2, 8, 32) and h.device.type == "cpu" for h in hidden)
    assert all(a.shape == (2, 4, 8, 8) for a in attentions)
    for a in attentions:
        assert torch.allclose(a.sum(-1), torch.ones(2, 4, 8), atol=1e-5)
        assert torch.all(torch.triu(a, diagonal=1) == 0)  # causal
    assert tiny_llama.config._attn_implementation == "sdpa"  # restored after the call

    assert layerwise_cka(hidden, hidden, mask) == pytest.approx([1.0] * 3, abs=1e-9)
    self_distance = attention_distance(attentions[0], attentions[0], mask)
    assert torch.allclose(self_distance, torch.zeros(4, dtype=torch.float64), atol=1e-9)
    # the first query attends only to itself under a causal mask: entropy is bounded by log(8)
    entropy = attention_entropy(attentions[0], mask)
    assert entropy.shape == (4,) and torch.all((entropy >= 0) & (entropy <= math.log(8)))
