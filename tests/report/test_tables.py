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
