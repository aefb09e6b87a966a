"""ReCode's robustness metrics (Wang et al. 2022, "ReCode: Robustness Evaluation of Code Generation Models",
arXiv:2212.10264, §3.6 "Evaluation Metrics"): Robust Pass_s@k, Robust Drop_s@k, Robust Relative_s@k.

Inputs are tables of correctness, keyed by task_id, for one perturbation family:

- nominal[task][i]: did sample i on the unperturbed prompt pass;
- perturbed[task][j][i]: did sample i on perturbed variant j (j < s) pass.

The nominal prompt is not one of the s variants. Sample i is the i-th generation for each prompt (the
same generation seed), the pairing ReCode's per-sample worst case is written over; every prompt of a
problem needs the same number n of samples. With greedy decoding n = 1, and each metric reduces to
ReCode's counting form (the one its released `run_robust.py` reports). Metrics are means over problems
of Chen et al.'s unbiased estimator `pass_at_k(n, c, k)` (ftcompare.evaluate.metrics) applied to a
count c of "samples" defined per metric:

- RP_s@k = E_x[pass_at_k(n, rc_s(x), k)], rc_s(x) = #{i : sample i passes on all s variants}: the
  worst case over the variants.
- RD_s@k = (Pass@k - RP_s@k) / Pass@k, Pass@k on the nominal prompts: the relative drop from nominal to
  worst-case performance; it is negative where the variants do better than the nominal prompt.
- RR_s@k = RC^-_s@k + RC^+_s@k, RC^±_s@k = E_x[pass_at_k(n, rc^±_s(x), k)], with
  rc^-_s(x) = #{i : passes nominally, fails on some variant} and
  rc^+_s(x) = #{i : fails nominally, passes on some variant}: changes of outcome in either direction.
  (ReCode's released report script, greedy only, counts nominal != worst case, i.e. for the second term
  "fails nominally, passes on all variants"; we follow the paper's "on some variant".)

A family that cannot perturb a problem's prompt (`ftcompare.data.perturb.NotApplicable`: variable renaming
on an MBPP prompt, which shows no function) gives that problem no variant. `family_robustness` scores a
family on the problems it applies to, nominal Pass@k included (so the drop compares the same problems),
and records the others with their reasons; a family that applies to none has no scores, never the
nominal prompt scored as its own variant (which would force its drop to 0).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from ftcompare.evaluate.metrics import pass_at_k

NominalTable = Mapping[str, Sequence[bool]]  # task_id -> n samples on the nominal prompt
PerturbedTable = Mapping[str, Sequence[Sequence[bool]]]  # task_id -> s variants -> n samples


def robust_pass_at_k(perturbed: PerturbedTable, k: int) -> float:
    """RP_s@k: the mean over problems of pass@k where a sample counts as passing only if it passes on all
    of the problem's s perturbed variants (ReCode §3.6)."""
    _check_perturbed(perturbed, k)
    return _mean(pass_at_k(_n(variants), _robust_count(variants), k) for variants in perturbed.values())


def robust_drop_at_k(nominal: NominalTable, perturbed: PerturbedTable, k: int) -> float:
    """RD_s@k = (Pass@k - RP_s@k) / Pass@k, Pass@k on the nominal prompts (ReCode §3.6); nan where the
    nominal Pass@k is 0 and the ratio undefined."""
    _check_pair(nominal, perturbed, k)
    nominal_pass = _mean(pass_at_k(len(samples), sum(map(bool, samples)), k) for samples in nominal.values())
    if nominal_pass == 0:
        return math.nan
    return (nominal_pass - robust_pass_at_k(perturbed, k)) / nominal_pass


def robust_relative_at_k(nominal: NominalTable, perturbed: PerturbedTable, k: int) -> float:
    """RR_s@k = RC^-_s@k + RC^+_s@k (ReCode §3.6): pass@k-style rates of samples that pass nominally but
    fail on some variant, plus of samples that fail nominally but pass on some variant."""
    _check_pair(nominal, perturbed, k)
    worse, better = [], []
    for task, samples in nominal.items():
        variants = perturbed[task]
        n = len(samples)
        columns = [[bool(variant[i]) for variant in variants] for i in range(n)]
        worse.append(pass_at_k(n, sum(1 for i in range(n) if samples[i] and not all(columns[i])), k))
        better.append(pass_at_k(n, sum(1 for i in range(n) if not samples[i] and any(columns[i])), k))
    return _mean(worse) + _mean(better)


def family_robustness(nominal: NominalTable, perturbed: PerturbedTable, not_applicable: Mapping[str, str], s: int) -> dict:
    """One family's robustness record (greedy, k = 1) over a suite: `nominal` for every problem, `perturbed`
    for those the family applies to, `not_applicable` {task_id: reason} for the others.

    Keys: "s"; "problems", how many problems were perturbed; "not_applicable", the reasons by task_id;
    "nominal_pass@1", "robust_pass@1", "robust_drop@1", "robust_relative@1" over the perturbed problems,
    each None when there is none.
    """
    overlap = sorted(set(perturbed) & set(not_applicable))
    if overlap:
        raise ValueError(f"problems both perturbed and not applicable: {overlap[:5]}")
    if set(perturbed) | set(not_applicable) != set(nominal):
        raise ValueError(
            f"perturbed and not-applicable problems must be the suite's: missing "
            f"{sorted(set(nominal) - set(perturbed) - set(not_applicable))[:5]}, unknown "
            f"{sorted(set(perturbed) | set(not_applicable) - set(nominal))[:5]}"
        )
    record = {"s": s, "problems": len(perturbed), "not_applicable": dict(sorted(not_applicable.items()))}
    if not perturbed:
        return {**record, "nominal_pass@1": None, "robust_pass@1": None, "robust_drop@1": None, "robust_relative@1": None}
    scored = {task: nominal[task] for task in perturbed}
    return {
        **record,
        "nominal_pass@1": _mean(pass_at_k(len(v), sum(map(bool, v)), 1) for v in scored.values()),
        "robust_pass@1": robust_pass_at_k(perturbed, 1),
        "robust_drop@1": robust_drop_at_k(scored, perturbed, 1),
        "robust_relative@1": robust_relative_at_k(scored, perturbed, 1),
    }


def _robust_count(variants: Sequence[Sequence[bool]]) -> int:
    """rc_s(x): how many sample indices pass on every variant."""
    return sum(1 for i in range(_n(variants)) if all(variant[i] for variant in variants))


def _n(variants: Sequence[Sequence[bool]]) -> int:
    return len(variants[0])


def _mean(values) -> float:
    values = list(values)
    return math.fsum(values) / len(values)


def _check_perturbed(perturbed: PerturbedTable, k: int) -> None:
    if not perturbed:
        raise ValueError("the perturbed table holds no problem")
    for task, variants in perturbed.items():
        if len(variants) < 1:
            raise ValueError(f"{task}: no perturbed variant (s must be >= 1)")
        lengths = {len(variant) for variant in variants}
        if len(lengths) != 1:
            raise ValueError(
                f"{task}: variants hold different numbers of samples {sorted(lengths)}; "
                "sample i must be the i-th generation on every prompt"
            )
        n = lengths.pop()
        if not 1 <= k <= n:
            raise ValueError(f"{task}: k={k} needs 1 <= k <= n, the problem has n={n} samples")


def _check_pair(nominal: NominalTable, perturbed: PerturbedTable, k: int) -> None:
    _check_perturbed(perturbed, k)
    if set(nominal) != set(perturbed):
        missing = sorted(set(perturbed) - set(nominal))
        extra = sorted(set(nominal) - set(perturbed))
        raise ValueError(
            f"nominal and perturbed tables cover different problems: missing from nominal "
            f"{missing[:5]}, missing from perturbed {extra[:5]}"
        )
    for task, samples in nominal.items():
        if len(samples) != _n(perturbed[task]):
            raise ValueError(f"{task}: {len(samples)} nominal samples but {_n(perturbed[task])} per variant")
