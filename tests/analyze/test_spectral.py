import dataclasses
import json
import math

import pytest
import torch

from ftcompare.analyze.spectral import (
    DEFAULT_EPSILONS,
    PAPER_EPSILON,
    PAPER_K,
    BaseSpectrum,
    SpectrumCache,
    analyze_matrix,
    base_spectrum,
    count_intruders,
    effective_rank,
    epsilon_sweep,
    intruder_mask,
    max_base_similarity,
    singular_value_entropy,
    spectral_norm,
    stable_rank,
    summarize,
)

M, N = 64, 48
GROUP = 12  # each planted direction is spread over 12 base singular vectors: max |cos| = 1/sqrt(12)
SPREAD_FROM = 10  # planted directions use base indices >= 10, so the base's top 10 stay exact


def _orthonormal(rows: int, cols: int, gen: torch.Generator) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(rows, cols, generator=gen, dtype=torch.float64))
    return q


def _base(seed: int = 0):
    """W0 = U diag(s) V^T (64x48) with s = 10 * 0.9^i."""
    gen = torch.Generator().manual_seed(seed)
    u, v = _orthonormal(M, N, gen), _orthonormal(N, N, gen)
    s = 10.0 * 0.9 ** torch.arange(N, dtype=torch.float64)
    return u @ torch.diag(s) @ v.T, u, v


def _spread(basis: torch.Tensor, group: int, gen: torch.Generator) -> torch.Tensor:
    """Unit vector = random-sign sum of 12 basis columns (group `group`), normalised."""
    start = SPREAD_FROM + group * GROUP
    signs = torch.randint(0, 2, (GROUP,), generator=gen).double() * 2 - 1
    return basis[:, start : start + GROUP] @ signs / math.sqrt(GROUP)


def _planted(sigmas, seed: int = 0, right_aligned: bool = False):
    """(W0, W0 + sum_j sigma_j x_j y_j^T) with x_j (and y_j unless right_aligned) spread over base vectors."""
    w0, u, v = _base(seed)
    gen = torch.Generator().manual_seed(seed + 1)
    update = torch.zeros_like(w0)
    for j, sigma in enumerate(sigmas):
        x = _spread(u, j, gen)
        y = v[:, SPREAD_FROM + j] if right_aligned else _spread(v, j, gen)
        update += sigma * torch.outer(x, y)
    return w0, w0 + update


def test_paper_defaults():
    assert (PAPER_K, PAPER_EPSILON) == (10, 0.5)
    assert PAPER_EPSILON in DEFAULT_EPSILONS


@pytest.mark.parametrize("sigmas", [(30.0,), (30.0, 25.0), (30.0, 25.0, 20.0)])
def test_count_intruders_finds_exactly_the_planted_directions(sigmas):
    w0, w = _planted(sigmas)
    assert count_intruders(w0, w) == len(sigmas)


def test_intruder_mask_marks_the_ranks_of_planted_directions():
    # 7.5 sits between the base's 8.1 and 7.29, so it is the tuned matrix's 4th singular vector.
    w0, w = _planted((7.5,))
    mask = intruder_mask(base_spectrum(w0), w)
    assert mask.dtype == torch.bool and mask.shape == (10,)
    assert torch.nonzero(mask).flatten().tolist() == [3]


def test_right_side_uses_right_singular_vectors():
    # New left directions written along existing right singular vectors: intruders on the left only.
    w0, w = _planted((30.0, 25.0), right_aligned=True)
    base = base_spectrum(w0)
    assert int(intruder_mask(base, w, side="left").sum()) == 2
    assert int(intruder_mask(base, w, side="right").sum()) == 0
    w0, w = _planted((30.0, 25.0))
    assert int(intruder_mask(base_spectrum(w0), w, side="right").sum()) == 2


def test_base_like_tuned_matrices_have_no_intruders():
    w0, _, _ = _base()
    noise = 1e-3 * torch.randn(M, N, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert count_intruders(w0, w0) == 0
    assert count_intruders(w0, w0 + noise) == 0
    assert count_intruders(w0, 3.0 * w0) == 0
    assert count_intruders(w0, -w0) == 0  # sign flips of singular vectors are not new directions


def test_max_base_similarity_values():
    w0, w = _planted((30.0, 25.0, 20.0))
    sim = max_base_similarity(base_spectrum(w0), w, k=10)
    assert sim.shape == (10,)
    # Planted directions score about 1/sqrt(12) = 0.289; the untouched base directions score 1.
    assert torch.allclose(sim[:3], torch.full((3,), GROUP**-0.5, dtype=sim.dtype), atol=0.05)
    assert torch.allclose(sim[3:], torch.ones(7, dtype=sim.dtype), atol=1e-6)


def test_epsilon_sweep_is_monotone_and_matches_count_intruders():
    w0, w = _planted((30.0, 25.0, 20.0))
    w = w + 0.05 * torch.randn(M, N, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    base = base_spectrum(w0)
    sim = max_base_similarity(base, w, k=10)
    counts = epsilon_sweep(sim, DEFAULT_EPSILONS)
    assert counts == sorted(counts)
    assert counts[0] == 0 and counts[DEFAULT_EPSILONS.index(0.5)] == 3
    assert counts == [count_intruders(base, w, epsilon=e) for e in DEFAULT_EPSILONS]


def test_count_intruders_accepts_a_base_spectrum():
    w0, w = _planted((30.0, 25.0))
    base = base_spectrum(w0)
    assert isinstance(base, BaseSpectrum)
    assert count_intruders(base, w) == count_intruders(w0, w) == 2
    assert count_intruders(base, w, k=1) == 1


def test_bf16_inputs_are_upcast():
    w0, w = _planted((30.0, 25.0, 20.0))
    base = base_spectrum(w0.to(torch.bfloat16))
    assert base.u.dtype == torch.float32
    assert count_intruders(base, w.to(torch.bfloat16)) == 3
    assert effective_rank(torch.eye(8, dtype=torch.bfloat16)) == pytest.approx(8.0, abs=1e-5)


def test_k_larger_than_the_matrix_examines_every_singular_vector():
    w0, _, _ = _base()
    small = w0[:8, :6]
    assert intruder_mask(base_spectrum(small), small, k=10).shape == (6,)


def test_invalid_arguments_are_rejected():
    w0, w = _planted((30.0,))
    base = base_spectrum(w0)
    with pytest.raises(ValueError, match="shape"):
        count_intruders(base, w[:, :10])
    with pytest.raises(ValueError, match="side"):
        intruder_mask(base, w, side="up")
    with pytest.raises(ValueError, match="epsilon"):
        count_intruders(base, w, epsilon=1.5)


@pytest.mark.parametrize("n", [1, 5, 32])
def test_ranks_of_identity(n):
    eye = torch.eye(n)
    assert effective_rank(eye) == pytest.approx(n, abs=1e-5)
    assert singular_value_entropy(eye) == pytest.approx(math.log(n), abs=1e-6)
    assert stable_rank(eye) == pytest.approx(n, abs=1e-5)


def test_ranks_of_rank_one_matrix():
    gen = torch.Generator().manual_seed(0)
    w = torch.outer(torch.randn(20, generator=gen), torch.randn(12, generator=gen))
    assert effective_rank(w) == pytest.approx(1.0, abs=1e-4)
    assert stable_rank(w) == pytest.approx(1.0, abs=1e-5)


def test_effective_rank_between_one_and_full():
    w0, _, _ = _base()
    assert 1.0 < effective_rank(w0) < N
    assert effective_rank(torch.zeros(4, 3)) == 0.0 and stable_rank(torch.zeros(4, 3)) == 0.0
    # Exact zero singular values contribute 0 log 0 = 0, not NaN.
    assert effective_rank(torch.diag(torch.tensor([2.0, 2.0, 0.0]))) == pytest.approx(2.0, abs=1e-6)


def test_spectral_norm_is_largest_singular_value():
    w = torch.randn(30, 17, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert spectral_norm(w) == pytest.approx(float(torch.linalg.svdvals(w)[0]), rel=1e-12)
    w0, _, _ = _base()
    assert spectral_norm(w0) == pytest.approx(10.0, rel=1e-9)


def test_analyze_matrix_report():
    sigmas = (30.0, 25.0, 20.0)
    w0, w = _planted(sigmas)
    report = analyze_matrix("layers.0.q_proj", base_spectrum(w0), w0, w)
    assert report.shape == (M, N)
    assert report.intruders == 3 and report.intruders_right == 3
    assert report.intruder_ranks == [0, 1, 2]
    assert report.epsilon_sweep["0.5"] == 3 and report.epsilon_sweep["0.1"] == 0
    assert list(report.epsilon_sweep) == [str(e) for e in DEFAULT_EPSILONS]
    # The update is sum_j sigma_j x_j y_j^T with orthonormal x's and y's: its SVD is known exactly.
    fro = math.sqrt(sum(s * s for s in sigmas))
    assert report.delta_fro_norm == pytest.approx(fro, rel=1e-9)
    assert report.delta_spectral_norm == pytest.approx(30.0, rel=1e-9)
    assert report.delta_stable_rank == pytest.approx(fro**2 / 30.0**2, rel=1e-9)
    p = torch.tensor(sigmas, dtype=torch.float64) / sum(sigmas)
    assert report.delta_effective_rank == pytest.approx(math.exp(-float((p * p.log()).sum())), rel=1e-9)
    assert report.relative_delta_norm == pytest.approx(fro / float(torch.linalg.matrix_norm(w0)), rel=1e-9)
    json.dumps(dataclasses.asdict(report))


def test_summarize_totals():
    w0, w3 = _planted((30.0, 25.0, 20.0))
    _, w1 = _planted((30.0,))
    base = base_spectrum(w0)
    reports = [analyze_matrix(f"m{i}", base, w0, w) for i, w in enumerate((w3, w1, w0))]
    summary = summarize(reports)
    assert summary["matrices"] == 3
    assert summary["total_intruders"] == 4
    assert summary["matrices_with_intruders"] == 2
    assert summary["mean_intruders_per_matrix"] == pytest.approx(4 / 3)
    assert summary["max_intruders_per_matrix"] == 3
    assert summary["epsilon_sweep"]["0.5"] == 4 and summary["epsilon_sweep"]["0.1"] == 0
    assert summary["mean_delta_fro_norm"] == pytest.approx(sum(r.delta_fro_norm for r in reports) / 3)
    json.dumps(summary)
    assert summarize([])["total_intruders"] == 0


def test_spectrum_cache_computes_once_and_reuses_from_disk(tmp_path):
    w0, _, _ = _base()
    cache = SpectrumCache(tmp_path, "base-abc")
    first = cache.get("layers.0.q_proj", w0)
    assert cache.get("layers.0.q_proj", w0) is first
    assert cache.computed == 1
    assert [p.name for p in tmp_path.rglob("*.tmp")] == []  # atomic write leaves no temp files

    reloaded = SpectrumCache(tmp_path, "base-abc")
    again = reloaded.get("layers.0.q_proj", w0)
    assert reloaded.computed == 0
    for a, b in ((first.u, again.u), (first.s, again.s), (first.vh, again.vh)):
        assert a.dtype == b.dtype and torch.equal(a, b)

    other = SpectrumCache(tmp_path, "base-xyz")
    other.get("layers.0.q_proj", w0)
    assert other.computed == 1

    memory_only = SpectrumCache(None, "base-abc")
    memory_only.get("layers.0.q_proj", w0)
    assert memory_only.computed == 1


def test_spectrum_cache_refuses_a_stale_fingerprint(tmp_path):
    w0, _, _ = _base(seed=0)
    w_other, _, _ = _base(seed=7)
    SpectrumCache(tmp_path, "base-abc").get("layers.0.q_proj", w0)
    with pytest.raises(ValueError, match="stale"):
        SpectrumCache(tmp_path, "base-abc").get("layers.0.q_proj", 2.0 * w_other)


def test_intruders_are_totalled_per_layer_and_module_type():
    from ftcompare.analyze.spectral import MatrixReport, intruders_by_position

    def report(name, intruders):
        return MatrixReport(
            name=name,
            shape=(2, 2),
            intruders=intruders,
            intruders_right=0,
            intruder_ranks=[],
            epsilon_sweep={},
            delta_fro_norm=0.0,
            delta_spectral_norm=0.0,
            delta_effective_rank=0.0,
            delta_stable_rank=0.0,
            relative_delta_norm=0.0,
        )

    reports = [
        report("model.layers.0.self_attn.q_proj.weight", 2),
        report("model.layers.0.mlp.up_proj.weight", 1),
        report("model.layers.10.self_attn.q_proj.weight", 3),
        report("model.layers.2.mlp.up_proj.weight", 0),
    ]
    assert intruders_by_position(reports) == {
        "by_layer": {"0": 3, "2": 0, "10": 3},
        "by_module_type": {"q_proj": 5, "up_proj": 1},
    }
    gpt2 = [report(f"transformer.h.0.{module}.weight", 1) for module in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")]
    assert intruders_by_position(gpt2)["by_module_type"] == {"c_attn": 1, "attn.c_proj": 1, "c_fc": 1, "mlp.c_proj": 1}


# ---------------------------------------------------------------- spectral features (rank trade-offs)


def _features_of(w):
    return {
        "effective_rank": effective_rank(w),
        "sv_entropy": singular_value_entropy(w),
        "stable_rank": stable_rank(w),
        "spectral_norm": spectral_norm(w),
    }


def test_spectral_norm_of_a_diagonal():
    assert spectral_norm(torch.diag(torch.tensor([3.0, 2.0, 1.0]))) == pytest.approx(3.0)
    assert spectral_norm(torch.diag(torch.tensor([1.0, -3.0, 2.0]))) == pytest.approx(3.0)


def test_ranks_of_orthogonal_matrix():
    q = _orthonormal(9, 9, torch.Generator().manual_seed(4))
    assert stable_rank(q) == pytest.approx(9.0, rel=1e-9)
    assert effective_rank(q) == pytest.approx(9.0, rel=1e-9)
    assert spectral_norm(q) == pytest.approx(1.0, rel=1e-9)


def test_rank_one_matrix_has_zero_entropy():
    w = torch.outer(torch.arange(1.0, 6.0, dtype=torch.float64), torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64))
    assert singular_value_entropy(w) == pytest.approx(0.0, abs=1e-6)


def test_analyze_matrix_tuned_base_and_delta_features_by_construction():
    # W0 = I_4 (effective rank 4, entropy log 4, stable rank 4, norm 1); W = diag(3, 2, 1, 1):
    # ΔW = diag(2, 1, 0, 0) (effective rank exp(H(2/3, 1/3)), stable rank 5/4, norm 2).
    w0 = torch.eye(4, dtype=torch.float64)
    w = torch.diag(torch.tensor([3.0, 2.0, 1.0, 1.0], dtype=torch.float64))
    report = analyze_matrix("model.layers.0.mlp.up_proj.weight", base_spectrum(w0), w0, w)
    assert report.base_effective_rank == pytest.approx(4.0)
    assert report.base_sv_entropy == pytest.approx(math.log(4))
    assert report.base_stable_rank == pytest.approx(4.0)
    assert report.base_spectral_norm == pytest.approx(1.0)
    assert report.tuned_spectral_norm == pytest.approx(3.0)
    assert report.tuned_stable_rank == pytest.approx(15.0 / 9.0)
    p = torch.tensor([3.0, 2.0, 1.0, 1.0], dtype=torch.float64) / 7
    assert report.tuned_sv_entropy == pytest.approx(-float((p * p.log()).sum()))
    assert report.tuned_effective_rank == pytest.approx(math.exp(report.tuned_sv_entropy))
    h = -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3))
    assert report.delta_sv_entropy == pytest.approx(h)
    assert report.delta_effective_rank == pytest.approx(math.exp(h))
    assert report.delta_stable_rank == pytest.approx(5.0 / 4.0)
    assert report.delta_spectral_norm == pytest.approx(2.0)


def test_analyze_matrix_features_match_direct_computation():
    w0, w = _planted((30.0, 25.0, 20.0))
    report = analyze_matrix("layers.0.q_proj", base_spectrum(w0), w0, w)
    for prefix, matrix in (("base", w0), ("tuned", w), ("delta", w - w0)):
        for feature, value in _features_of(matrix).items():
            assert getattr(report, f"{prefix}_{feature}") == pytest.approx(value, rel=1e-9), (prefix, feature)
    # The base features come from the cached spectrum: a float32 cache gives the same answer.
    report32 = analyze_matrix("layers.0.q_proj", base_spectrum(w0.float()), w0, w)
    assert report32.base_effective_rank == pytest.approx(report.base_effective_rank, rel=1e-5)


def test_unchanged_matrix_has_zero_delta_features_and_no_nan():
    w0, _, _ = _base()
    report = analyze_matrix("layers.0.q_proj", base_spectrum(w0), w0, w0.clone())
    values = dataclasses.asdict(report)
    for field in (
        "delta_fro_norm",
        "delta_spectral_norm",
        "delta_effective_rank",
        "delta_stable_rank",
        "delta_sv_entropy",
        "relative_delta_norm",
    ):
        assert values[field] == 0.0, field
    assert report.tuned_effective_rank == pytest.approx(report.base_effective_rank, rel=1e-9)
    assert report.intruders == 0 and report.intruder_ranks == []
    assert all(not (isinstance(v, float) and math.isnan(v)) for v in values.values())
    json.dumps(values, allow_nan=False)


def test_features_by_layer_and_module_type_average_hand_made_records():
    from ftcompare.analyze.spectral import features_by_layer, features_by_module_type

    records = [
        {"name": "model.layers.10.self_attn.q_proj.weight", "delta_effective_rank": 4.0, "tuned_stable_rank": 1.0},
        {"name": "model.layers.2.self_attn.q_proj.weight", "delta_effective_rank": 1.0, "tuned_stable_rank": 3.0},
        {"name": "model.layers.2.mlp.up_proj.weight", "delta_effective_rank": 3.0, "tuned_stable_rank": None},
        {"name": "model.layers.10.mlp.up_proj.weight", "delta_effective_rank": 8.0},  # an older record
        {"name": "lm_head.weight", "delta_effective_rank": 5.0},
    ]
    by_layer = features_by_layer(records)
    assert list(by_layer) == ["2", "10", "-"]
    assert by_layer["2"] == {"delta_effective_rank": 2.0, "tuned_stable_rank": 3.0}
    assert by_layer["10"] == {"delta_effective_rank": 6.0, "tuned_stable_rank": 1.0}
    assert by_layer["-"] == {"delta_effective_rank": 5.0}
    by_type = features_by_module_type(records)
    assert list(by_type) == ["q_proj", "up_proj", "lm_head"]
    assert by_type["q_proj"] == {"delta_effective_rank": 2.5, "tuned_stable_rank": 2.0}
    assert by_type["up_proj"] == {"delta_effective_rank": 5.5}
    assert features_by_layer([]) == {} and features_by_module_type([]) == {}
    assert features_by_layer(records, features=("delta_effective_rank",))["2"] == {"delta_effective_rank": 2.0}


def test_features_by_layer_reads_spectral_json_records():
    from ftcompare.analyze.spectral import SPECTRAL_FEATURES, features_by_layer

    w0, w = _planted((30.0,))
    base = base_spectrum(w0)
    reports = [
        analyze_matrix(f"model.layers.{i}.self_attn.{m}.weight", base, w0, w if m == "q_proj" else w0)
        for i in (0, 1)
        for m in ("q_proj", "v_proj")
    ]
    records = json.loads(json.dumps([dataclasses.asdict(r) for r in reports]))
    by_layer = features_by_layer(records)
    assert list(by_layer) == ["0", "1"] and set(by_layer["0"]) == set(SPECTRAL_FEATURES)
    assert by_layer["1"]["delta_spectral_norm"] == pytest.approx(30.0 / 2, rel=1e-9)  # v_proj unchanged: 0


def test_summary_histogram_of_intruder_positions():
    w0, w3 = _planted((30.0, 25.0, 20.0))  # intruders at positions 0, 1, 2
    _, w4th = _planted((7.5,))  # the tuned matrix's 4th singular vector: position 3
    base = base_spectrum(w0)
    reports = [analyze_matrix(f"model.layers.{i}.q_proj.weight", base, w0, w) for i, w in enumerate((w3, w4th, w3, w0))]
    assert [r.intruder_ranks for r in reports] == [[0, 1, 2], [3], [0, 1, 2], []]
    summary = summarize(reports)
    assert summary["intruder_positions"] == {"0": 2, "1": 2, "2": 2, "3": 1}
    assert sum(summary["intruder_positions"].values()) == summary["total_intruders"]
    assert summary["mean_delta_sv_entropy"] == pytest.approx(sum(r.delta_sv_entropy for r in reports) / 4)
    assert summary["mean_base_effective_rank"] == pytest.approx(effective_rank(w0), rel=1e-9)
    assert summarize([])["intruder_positions"] == {}
    assert summarize([])["mean_tuned_effective_rank"] is None


def test_intruder_positions_are_ordered_numerically():
    from ftcompare.analyze.spectral import MatrixReport

    report = MatrixReport(
        name="m",
        shape=(2, 2),
        intruders=3,
        intruders_right=0,
        intruder_ranks=[10, 2, 9],
        epsilon_sweep={},
        delta_fro_norm=0.0,
        delta_spectral_norm=0.0,
        delta_effective_rank=0.0,
        delta_stable_rank=0.0,
        relative_delta_norm=0.0,
    )
    summary = summarize([report, report])
    assert list(summary["intruder_positions"].items()) == [("2", 2), ("9", 2), ("10", 2)]
    assert summary["mean_delta_sv_entropy"] is None  # a report made without the new features


# ---------------------------------------------------------------- ΔW of a tuned model, exact (models.methods.weight_updates)


def _trained(model, steps=5, lr=1e-2):
    from ftcompare.train.loop import TrainSettings, epoch_batches, train
    from tests.helpers import copy_examples

    train(model, epoch_batches(copy_examples(), batch_size=8, pad_id=0, max_length=8, seed=0), TrainSettings(lr=lr, steps=steps))
    return model


def _adapter(method, rank=4):
    from ftcompare.matrix import RunSpec

    return RunSpec(run_id=method, method=method, seed=0, lr=1e-2, rank=rank, alpha=2 * rank, target_modules="all-linear")


def _base_weights(model):
    from ftcompare.models.weights import adapted_weight_names

    names = adapted_weight_names(model, None)
    return {n: p.detach().clone() for n, p in model.named_parameters() if n in names}


def test_a_rank_1_lora_on_the_bf16_builtin_model_has_a_rank_1_update(tiny_base):
    from transformers import AutoModelForCausalLM

    from ftcompare.models.methods import apply_method
    from ftcompare.models.weights import merge_adapter, weight_updates

    def load():
        return AutoModelForCausalLM.from_pretrained(tiny_base[0], dtype=torch.bfloat16)

    w0 = _base_weights(load())
    model = _trained(apply_method(load(), _adapter("lora", rank=1)), lr=1e-3)
    updates = list(weight_updates(model, w0))
    assert [u.name for u in updates] == list(w0) and {u.delta.dtype for u in updates} == {torch.float32}
    exact = [analyze_matrix(u.name, base_spectrum(u.base), u.base, u.tuned, delta=u.delta) for u in updates]
    for report in exact:
        assert report.delta_effective_rank == pytest.approx(1.0, abs=1e-3), report.name
        assert report.delta_stable_rank == pytest.approx(1.0, abs=1e-3) and report.delta_sv_entropy < 1e-3
    # the same adapter read from its bf16 merge, as the spectral stage did: the rounding's rank
    merged = dict(merge_adapter(model).named_parameters())
    rounded = [analyze_matrix(n, base_spectrum(w), w, merged[n].detach()) for n, w in w0.items()]
    assert sum(r.delta_effective_rank for r in rounded) / len(rounded) > 5


def test_an_untrained_dora_on_a_bf16_base_has_no_update_and_a_magnitude_change_is_one():
    from peft.tuners.lora import LoraLayer

    from ftcompare.models.methods import apply_method
    from ftcompare.models.weights import weight_updates
    from tests.helpers import tiny_llama

    w0 = _base_weights(tiny_llama(dtype=torch.bfloat16))
    model = apply_method(tiny_llama(dtype=torch.bfloat16), _adapter("dora"))
    # PEFT's init makes DoRA the identity: the magnitude's bf16 rounding is not an update
    assert all(torch.equal(u.delta, torch.zeros_like(u.delta)) for u in weight_updates(model, w0))

    initial = {}
    with torch.no_grad():
        for name, layer in model.base_model.model.named_modules():
            if isinstance(layer, LoraLayer):
                magnitude = layer.lora_magnitude_vector["default"].weight
                initial[f"{name}.weight"] = magnitude.detach().double().clone()
                magnitude.mul_(1.5)  # B is still 0: only the magnitude moved, so s·BA says 0
    for update in weight_updates(model, w0):
        m = (
            dict(model.base_model.model.named_modules())[update.name.removesuffix(".weight")]
            .lora_magnitude_vector["default"]
            .weight
        )
        expected = (m.detach().double() / initial[update.name] - 1).view(-1, 1) * w0[update.name].double()
        torch.testing.assert_close(update.delta.double(), expected, rtol=1e-6, atol=1e-7)
        assert float(update.delta.norm()) > 0.3 * float(w0[update.name].float().norm())


@pytest.mark.parametrize("method", ["lora", "rslora", "dora", "pissa", "qlora"])
def test_the_exact_update_is_what_peft_merges_in_fp32(method):
    """On an fp32 base PEFT's merge is itself exact, so W0 + ΔW must match it for every adapter kind."""
    from ftcompare.models.methods import apply_method
    from ftcompare.models.weights import merge_adapter, quantized_base_weights, weight_updates
    from tests.helpers import tiny_llama

    model = _trained(apply_method(tiny_llama(), _adapter(method)), steps=3)
    w0 = quantized_base_weights(model) if method == "qlora" else _base_weights(tiny_llama())
    updates = list(weight_updates(model, w0))
    merged = dict(merge_adapter(model).named_parameters())
    assert len(updates) == 2 * 7
    for update in updates:
        torch.testing.assert_close(update.tuned, merged[update.name].detach(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(update.delta, update.tuned - update.base, rtol=1e-4, atol=1e-6)
        if method != "dora":  # LoRA kinds: rank r; PiSSA's update s(BA - B0A0) is rank 2r
            assert int(torch.linalg.matrix_rank(update.delta, rtol=1e-5)) <= (8 if method == "pissa" else 4)


def test_gpt2_conv1d_weights_are_adapted_and_analysed_as_out_by_in():
    import warnings

    from transformers import GPT2Config, GPT2LMHeadModel

    from ftcompare.models.methods import apply_method
    from ftcompare.models.weights import adapted_weight_names, as_out_in, merge_adapter, weight_updates

    def gpt2():
        torch.manual_seed(0)
        return GPT2LMHeadModel(GPT2Config(vocab_size=32, n_embd=32, n_layer=2, n_head=4, n_positions=64))

    names = adapted_weight_names(gpt2(), None)
    assert [n.split(".", 3)[-1] for n in names[:4]] == [
        "attn.c_attn.weight",
        "attn.c_proj.weight",
        "mlp.c_fc.weight",
        "mlp.c_proj.weight",
    ]
    assert len(names) == 2 * 4 and adapted_weight_names(gpt2(), ["c_fc"]) == [n for n in names if "c_fc" in n]
    w0 = _base_weights(gpt2())
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # PEFT warns when it has to flip fan_in_fan_out itself
        model = apply_method(gpt2(), _adapter("lora"))
    assert model.peft_config["default"].fan_in_fan_out is True
    updates = list(weight_updates(_trained(model, steps=3), w0))
    plain = merge_adapter(model)
    shapes = {u.name.split(".", 3)[-1]: tuple(u.delta.shape) for u in updates}
    assert shapes == {
        "attn.c_attn.weight": (96, 32),
        "attn.c_proj.weight": (32, 32),
        "mlp.c_fc.weight": (128, 32),
        "mlp.c_proj.weight": (32, 128),
    }  # (out, in), as nn.Linear
    merged = dict(plain.named_parameters())
    for update in updates:
        torch.testing.assert_close(
            update.tuned, as_out_in(plain, update.name, merged[update.name].detach()), rtol=1e-5, atol=1e-6
        )
        assert int(torch.linalg.matrix_rank(update.delta, rtol=1e-5)) <= 4
