import math
from fractions import Fraction

import pytest

from ftcompare.evaluate.metrics import mean_stderr, paired_difference, pass_at_k, sign_test_p


def exact_pass_at_k(n: int, c: int, k: int) -> Fraction:
    return 1 - Fraction(math.comb(n - c, k), math.comb(n, k))


def test_pass_at_k_equals_the_combinatorial_formula():
    grid = [(n, c, k) for n in range(1, 21) for c in range(n + 1) for k in range(1, n + 1)]
    wrong = [(n, c, k) for n, c, k in grid if pass_at_k(n, c, k) != pytest.approx(float(exact_pass_at_k(n, c, k)), abs=1e-12)]
    assert wrong == []


def test_pass_at_k_is_one_when_fewer_than_k_samples_fail():
    assert pass_at_k(10, 8, 3) == 1.0
    assert pass_at_k(5, 5, 1) == 1.0


def test_pass_at_k_is_zero_without_a_passing_sample():
    assert pass_at_k(20, 0, 5) == 0.0


def test_pass_at_1_is_the_fraction_passed():
    for n, c in [(1, 1), (7, 3), (200, 37)]:
        assert pass_at_k(n, c, 1) == pytest.approx(c / n)


def test_pass_at_k_is_stable_where_binomials_are_huge():
    # C(2000, 100) is a 180-digit number; the product form still matches the exact value.
    assert pass_at_k(2000, 3, 100) == pytest.approx(float(exact_pass_at_k(2000, 3, 100)), rel=1e-12)


@pytest.mark.parametrize(
    "n, c, k, argument",
    [(0, 0, 1, "n"), (5, -1, 1, "c"), (5, 6, 1, "c"), (5, 2, 0, "k"), (5, 2, 6, "k")],
)
def test_pass_at_k_rejects_arguments_out_of_range(n, c, k, argument):
    with pytest.raises(ValueError, match=rf"^{argument} must be"):
        pass_at_k(n, c, k)


def test_pass_at_k_rejects_non_integers():
    with pytest.raises(TypeError):
        pass_at_k(10, 2.5, 1)


def test_mean_stderr_is_the_sample_sd_over_root_n_and_needs_two_values():
    assert mean_stderr([1.0, 0.0, 0.0, 0.0]) == pytest.approx(math.sqrt(0.25) / 2)  # sd √(1/4) over √4
    assert mean_stderr([0.5, 0.5]) == 0.0
    assert mean_stderr([1.0]) is None


def test_sign_test_is_the_exact_two_sided_binomial_on_the_discordant_problems():
    assert sign_test_p(0, 5) == pytest.approx(2 / 32)
    assert sign_test_p(9, 1) == pytest.approx(2 * (1 + 10) / 1024)
    assert sign_test_p(3, 3) == 1.0 and sign_test_p(0, 0) == 1.0
    assert sign_test_p(250, 250) == 1.0  # large counts stay exact, no overflow


def test_paired_difference_counts_the_problems_each_side_won_on_the_shared_ones():
    tuned = {"a": 1.0, "b": 1.0, "c": 0.0, "d": 1.0, "only-tuned": 1.0}
    base = {"a": 0.0, "b": 1.0, "c": 1.0, "d": 0.0, "only-base": 0.0}
    result = paired_difference(tuned, base)
    assert (result["problems"], result["better"], result["worse"]) == (4, 2, 1)
    assert result["difference"] == pytest.approx(1 / 4)
    assert result["stderr"] == pytest.approx(mean_stderr([1.0, 0.0, -1.0, 1.0]))
    assert result["p_value"] == pytest.approx(1.0)  # 2 vs 1: min(1, 2 · 4/8)
    with pytest.raises(ValueError, match="share no problem"):
        paired_difference({"a": 1.0}, {"b": 0.0})
