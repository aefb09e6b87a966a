import math
from fractions import Fraction

import pytest

from ftcompare.evaluate.metrics import mean_pass_at_k, pass_at_k

def exact_pass_at_k(n: int, c: int, k: int) -> Fraction:
    return 1 - Fraction(math.comb(n - c, k), math.comb(n, k))


def test_pass_at_k_equals_the_combinatorial_formula():
    grid = [(n, c, k) for n in range(1, 21) for c in range(n + 1) for k in range(1, n + 1)]
    wrong = [
        (n, c, k)
        for n, c, k in grid
        if pass_at_k(n, c, k) != pytest.approx(float(exact_pass_at_k(n, c, k)), abs=1e-12)
    ]
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


def test_mean_pass_at_k_averages_over_problems():
    counts = [(10, 0), (10, 10), (10, 3)]
    expected = (0.0 + 1.0 + pass_at_k(10, 3, 5)) / 3
    assert mean_pass_at_k(counts, 5) == pytest.approx(expected)


def test_mean_pass_at_k_rejects_a_problem_with_fewer_than_k_samples():
    with pytest.raises(ValueError, match=r"counts\[1\] has n=3"):
        mean_pass_at_k([(10, 2), (3, 1)], 5)


def test_mean_pass_at_k_rejects_no_problems():
    with pytest.raises(ValueError, match="counts"):
        mean_pass_at_k([], 1)
