"""Metrics over evaluated samples: pass@k, its standard error, and paired comparisons of two runs."""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping, Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimate of pass@k for one problem from n samples of which c passed.

    Chen et al. 2021, "Evaluating Large Language Models Trained on Code": 1 - C(n-c, k) / C(n, k), the
    chance that k samples drawn without replacement from the n include a passing one; 1.0 when n - c < k.
    Computed as 1 - prod_{i=n-c+1..n} (1 - k/i), the paper's product form, which never builds the huge
    binomials.
    """
    n, c, k = operator.index(n), operator.index(c), operator.index(k)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not 0 <= c <= n:
        raise ValueError(f"c must be between 0 and n={n}, got {c}")
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and n={n}, got {k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def mean_stderr(values: Sequence[float]) -> float | None:
    """Standard error of a mean over problems: the sample standard deviation over √n, as
    lm-evaluation-harness reports it for accuracies. None below two problems."""
    n = len(values)
    if n < 2:
        return None
    mean = sum(values) / n
    return math.sqrt(sum((value - mean) ** 2 for value in values) / (n - 1) / n)


def sign_test_p(better: int, worse: int) -> float:
    """Two-sided exact sign test of `better` against `worse` problems (ties dropped). With pass/fail
    outcomes on the same problems this is the exact McNemar test."""
    discordant = better + worse
    if discordant == 0:
        return 1.0
    tail = sum(math.comb(discordant, i) for i in range(min(better, worse) + 1)) / 2**discordant
    return min(1.0, 2 * tail)


def paired_difference(scores: Mapping[str, float], reference: Mapping[str, float]) -> dict:
    """`scores` − `reference` over the problems both scored (per-problem pass@1: 0/1 when greedy): the mean
    difference, its standard error, on how many problems each was better, and the sign test's p-value.

    Pairing by problem removes the between-problem variance that two independent standard errors carry,
    which is most of it when two models solve mostly the same problems."""
    shared = [task for task in scores if task in reference]
    if not shared:
        raise ValueError("the two score sets share no problem")
    differences = [scores[task] - reference[task] for task in shared]
    better, worse = sum(d > 0 for d in differences), sum(d < 0 for d in differences)
    return {
        "problems": len(shared),
        "difference": sum(differences) / len(differences),
        "stderr": mean_stderr(differences),
        "better": better,
        "worse": worse,
        "p_value": sign_test_p(better, worse),
    }
