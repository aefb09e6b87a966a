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
    return basis[:, start:start + GROUP] @ signs / math.sqrt(GROUP)


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
    assert summary["mean_delta_fro_norm"] == pytest.approx(
        sum(r.delta_fro_norm for r in reports) / 3)
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
        return MatrixReport(name=name, shape=(2, 2), intruders=intruders, intruders_right=0, intruder_ranks=[],
                            epsilon_sweep={}, delta_fro_norm=0.0, delta_spectral_norm=0.0, delta_effective_rank=0.0,
                            delta_stable_rank=0.0, relative_delta_norm=0.0)

    reports = [report("model.layers.0.self_attn.q_proj.weight", 2), report("model.layers.0.mlp.up_proj.weight", 1),
               report("model.layers.10.self_attn.q_proj.weight", 3), report("model.layers.2.mlp.up_proj.weight", 0)]
    assert intruders_by_position(reports) == {"by_layer": {"0": 3, "2": 0, "10": 3}, "by_module_type": {"q_proj": 5, "up_proj": 1}}
