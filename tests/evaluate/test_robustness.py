import math
import random
from fractions import Fraction

import pytest

from ftcompare.evaluate.robustness import (
    family_robustness,
    robust_drop_at_k,
    robust_pass_at_k,
    robust_relative_at_k,
)

T, F = True, False

# Greedy decoding (n = 1), s = 3 variants per problem.
GREEDY_NOMINAL = {"stable": [T], "breaks": [T], "recovers": [F], "never": [F]}
GREEDY_PERTURBED = {
    "stable": [[T], [T], [T]],  # passes everywhere
    "breaks": [[T], [F], [T]],  # nominal passes, one variant fails
    "recovers": [[F], [T], [F]],  # nominal fails, one variant passes
    "never": [[F], [F], [F]],
}


def test_greedy_metrics_by_hand():
    # RP: only "stable" passes on all 3 variants -> 1/4. Nominal pass@1: 2/4.
    assert robust_pass_at_k(GREEDY_PERTURBED, 1) == pytest.approx(1 / 4)
    # RD = (2/4 - 1/4) / (2/4)
    assert robust_drop_at_k(GREEDY_NOMINAL, GREEDY_PERTURBED, 1) == pytest.approx(1 / 2)
    # RR: "breaks" went pass -> fail (1/4), "recovers" went fail -> pass (1/4)
    assert robust_relative_at_k(GREEDY_NOMINAL, GREEDY_PERTURBED, 1) == pytest.approx(1 / 2)


def _exact_pass_at_k(n, c, k):
    return 1 - Fraction(math.comb(n - c, k), math.comb(n, k))


# n = 3 samples per prompt, s = 2 variants; sample i is the i-th generation on every prompt.
SAMPLED_NOMINAL = {"x": [T, T, F], "y": [F, F, F]}
SAMPLED_PERTURBED = {
    "x": [[T, F, F], [T, T, F]],  # sample 0 passes on both variants; sample 1 passes nominally, fails on v0
    "y": [[F, T, F], [F, F, F]],  # sample 1 fails nominally, passes on v0
}


@pytest.mark.parametrize("k", [1, 2, 3])
def test_sampled_metrics_by_hand(k):
    # rc_s: x -> 1 (sample 0), y -> 0. Nominal c: x -> 2, y -> 0.
    rp = (_exact_pass_at_k(3, 1, k) + _exact_pass_at_k(3, 0, k)) / 2
    nominal = (_exact_pass_at_k(3, 2, k) + _exact_pass_at_k(3, 0, k)) / 2
    # rc^-: x -> 1 (sample 1), y -> 0; rc^+: x -> 0, y -> 1 (sample 1).
    rr = (_exact_pass_at_k(3, 1, k) + 0) / 2 + (0 + _exact_pass_at_k(3, 1, k)) / 2
    assert robust_pass_at_k(SAMPLED_PERTURBED, k) == pytest.approx(float(rp))
    assert robust_drop_at_k(SAMPLED_NOMINAL, SAMPLED_PERTURBED, k) == pytest.approx(float((nominal - rp) / nominal))
    assert robust_relative_at_k(SAMPLED_NOMINAL, SAMPLED_PERTURBED, k) == pytest.approx(float(rr))


def test_k_2_values_written_out():
    # x: RP@2 = 1 - C(2,2)/C(3,2) = 2/3; y: 0 -> RP = 1/3. Pass@2: x = 1, y = 0 -> 1/2. RD = (1/2-1/3)/(1/2) = 1/3.
    assert robust_pass_at_k(SAMPLED_PERTURBED, 2) == pytest.approx(1 / 3)
    assert robust_drop_at_k(SAMPLED_NOMINAL, SAMPLED_PERTURBED, 2) == pytest.approx(1 / 3)
    # RC^-@2 = (2/3 + 0)/2, RC^+@2 = (0 + 2/3)/2
    assert robust_relative_at_k(SAMPLED_NOMINAL, SAMPLED_PERTURBED, 2) == pytest.approx(2 / 3)


def test_greedy_forms_match_counting_on_random_tables():
    rng = random.Random(0)
    for _ in range(50):
        tasks = [f"t{i}" for i in range(rng.randint(1, 8))]
        s = rng.randint(1, 5)
        nominal = {t: [rng.random() < 0.5] for t in tasks}
        perturbed = {t: [[rng.random() < 0.5] for _ in range(s)] for t in tasks}
        worst = [all(v[0] for v in perturbed[t]) for t in tasks]
        flips = [
            (nominal[t][0] and not all(v[0] for v in perturbed[t])) or (not nominal[t][0] and any(v[0] for v in perturbed[t]))
            for t in tasks
        ]
        assert robust_pass_at_k(perturbed, 1) == pytest.approx(sum(worst) / len(tasks))
        assert robust_relative_at_k(nominal, perturbed, 1) == pytest.approx(sum(flips) / len(tasks))
        nominal_pass = sum(nominal[t][0] for t in tasks) / len(tasks)
        drop = robust_drop_at_k(nominal, perturbed, 1)
        if nominal_pass:
            assert drop == pytest.approx((nominal_pass - sum(worst) / len(tasks)) / nominal_pass)
        else:
            assert math.isnan(drop)


def test_drop_is_negative_when_variants_do_better():
    assert robust_drop_at_k({"a": [T], "b": [F]}, {"a": [[T]], "b": [[T]]}, 1) == pytest.approx(-1.0)


def test_tables_are_validated():
    with pytest.raises(ValueError, match="no problem"):
        robust_pass_at_k({}, 1)
    with pytest.raises(ValueError, match="no perturbed variant"):
        robust_pass_at_k({"a": []}, 1)
    with pytest.raises(ValueError, match="different numbers of samples"):
        robust_pass_at_k({"a": [[T, F], [T]]}, 1)
    with pytest.raises(ValueError, match="k=3"):
        robust_pass_at_k({"a": [[T, F]]}, 3)
    with pytest.raises(ValueError, match="different problems"):
        robust_relative_at_k({"a": [T]}, {"b": [[T]]}, 1)
    with pytest.raises(ValueError, match="nominal samples"):
        robust_drop_at_k({"a": [T, T]}, {"a": [[T]]}, 1)


def test_family_scored_on_the_problems_it_applies_to():
    nominal = {**GREEDY_NOMINAL, "no_function": [T]}
    record = family_robustness(nominal, GREEDY_PERTURBED, {"no_function": "no variable to rename"}, s=3)
    assert record["problems"] == 4 and record["not_applicable"] == {"no_function": "no variable to rename"}
    # the same numbers as on the 4 perturbed problems alone: the unperturbed one is not counted as robust
    assert record["nominal_pass@1"] == pytest.approx(2 / 4)
    assert record["robust_pass@1"] == pytest.approx(1 / 4)
    assert record["robust_drop@1"] == pytest.approx(1 / 2)
    assert record["robust_relative@1"] == pytest.approx(1 / 2)


def test_family_that_applies_to_no_problem_has_no_scores():
    reasons = {task: "the prompt shows no function" for task in GREEDY_NOMINAL}
    record = family_robustness(GREEDY_NOMINAL, {}, reasons, s=3)
    assert record == {
        "s": 3,
        "problems": 0,
        "not_applicable": reasons,
        "nominal_pass@1": None,
        "robust_pass@1": None,
        "robust_drop@1": None,
        "robust_relative@1": None,
    }


def test_family_tables_must_cover_the_suite_once():
    with pytest.raises(ValueError, match="missing"):
        family_robustness(GREEDY_NOMINAL, {"stable": [[T]]}, {}, s=1)
    with pytest.raises(ValueError, match="both"):
        family_robustness({"stable": [T]}, {"stable": [[T]]}, {"stable": "n/a"}, s=1)
