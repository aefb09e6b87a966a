from ftcompare.report.tables import markdown_table, result_row


def test_result_row_reads_a_metrics_record_and_computes_the_gap():
    record = {"run_id": "lora-r4-s0", "label": "LoRA r=4", "method": "lora", "rank": 4, "seed": 0, "lr": 1e-3,
              "train": {"trainable_params": 10, "tokens_per_s": 5.0, "peak_memory_mb": 7.0},
              "suites": {"test": {"greedy": {"pass@1": 0.5}, "sampled": {"pass@1": 0.4, "pass@5": 0.75}},
                         "ood": {"greedy": {"pass@1": 0.125}}},
              "forgetting": {"increase": 0.25}, "spectral": {"total_intruders": 3}}
    row = result_row(record)
    assert (row["id_pass1"], row["id_passk"], row["id_k_name"], row["ood_pass1"]) == (0.5, 0.75, "pass@5", 0.125)
    assert row["generalisation_gap"] == 0.375 and row["intruders"] == 3 and row["forgetting"] == 0.25
    table = markdown_table([row])
    assert "| LoRA r=4 | 0 | 1.0e-03 | 10 | 0.500 | 0.750 | 0.125 | – | +0.375 | +0.250 |" in table


def test_learning_rate_selection_marks_the_best_multiplier_per_method():
    from ftcompare.report.plots import series_name
    from ftcompare.report.tables import mark_selected

    def row(run, multiplier, score):
        return {"run": run, "lr_multiplier": multiplier, "selection_pass1": score}

    rows = [{"run": "base", "selection_pass1": None},
            row("full-x1-s0", 1, 0.2), row("full-x10-s0", 10, 0.3),
            row("lora-r4-x1-s0", 1, 0.4), row("lora-r4-x10-s0", 10, 0.1),
            row("lora-r16-x1-s0", 1, 0.3), row("lora-r16-x10-s0", 10, 0.3)]  # a tie: the smaller rate
    marked = {r["run"]: r.get("selected") for r in mark_selected(rows, lambda r: series_name(r, "lr_multiplier"))}
    assert marked == {"base": None, "full-x1-s0": False, "full-x10-s0": True, "lora-r4-x1-s0": True,
                      "lora-r4-x10-s0": False, "lora-r16-x1-s0": True, "lora-r16-x10-s0": False}
