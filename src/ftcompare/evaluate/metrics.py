"""Metrics over evaluated samples: pass@k."""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence


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


def mean_pass_at_k(counts: Sequence[tuple[int, int]], k: int) -> float:
    """pass@k averaged over problems; counts holds one (n samples, c passed) pair per problem."""
    if not counts:
        raise ValueError("counts must hold at least one (n, c) pair")
    for index, (n, _) in enumerate(counts):
        if n < k:
            raise ValueError(f"counts[{index}] has n={n} samples, fewer than k={k}")
    return sum(pass_at_k(n, c, k) for n, c in counts) / len(counts)
