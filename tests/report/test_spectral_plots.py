import dataclasses
import json

import pytest
import torch

from ftcompare.analyze.spectral import analyze_matrix, base_spectrum, summarize
from ftcompare.report import spectral_plots

PNG = b"\x89PNG"


def _records(run_seed: int, layers=(0, 1, 2), modules=("q_proj", "v_proj"), scale=0.5):
    """spectral.json's "matrices" and "summary" for a fake run over tiny random matrices."""
    gen = torch.Generator().manual_seed(run_seed)
    reports = []
    for layer in layers:
        for module in modules:
            w0 = torch.randn(12, 8, generator=gen, dtype=torch.float64)
            w = w0 + scale * torch.randn(12, 8, generator=gen, dtype=torch.float64)
            reports.append(analyze_matrix(f"model.layers.{layer}.self_attn.{module}.weight", base_spectrum(w0), w0, w, k=4))
    summary = json.loads(json.dumps(summarize(reports)))
    return json.loads(json.dumps([dataclasses.asdict(r) for r in reports])), summary


@pytest.fixture(scope="module")
def runs():
    return {"full-s0": _records(0, scale=2.0), "lora-r4-s0": _records(1), "dora-r16-s0": _records(2, scale=0.0)}


def test_styles_draw_full_fine_tuning_in_black():
    styles = spectral_plots._styles(["lora-r4-s0", "full-s0", "full-s1", "dora-r16-s0"])
    assert styles["full-s0"][0] == styles["full-s1"][0] == "black" and styles["full-s0"][1] != styles["full-s1"][1]
    assert "black" not in (styles["lora-r4-s0"][0], styles["dora-r16-s0"][0])
    assert styles["lora-r4-s0"][0] != styles["dora-r16-s0"][0]


def test_intruders_by_layer(runs):
    summaries = {run: summary for run, (_, summary) in runs.items()}
    assert summaries["dora-r16-s0"]["total_intruders"] == 0  # unchanged weights: a run with no intruders
    assert spectral_plots.intruders_by_layer(summaries).startswith(PNG)


def test_intruder_positions(runs):
    summaries = {run: summary for run, (_, summary) in runs.items()}
    assert spectral_plots.intruder_positions(summaries, k=4).startswith(PNG)
    assert spectral_plots.intruder_positions(summaries).startswith(PNG)
    assert spectral_plots.intruder_positions({"full-s0": {"intruder_positions": {"0": 3, "9": 1}}}, k=10).startswith(PNG)


def test_spectral_features_by_layer(runs):
    matrices = {run: records for run, (records, _) in runs.items()}
    assert spectral_plots.spectral_features_by_layer(matrices).startswith(PNG)


def test_edge_cases_single_layer_no_intruders_and_empty():
    records, summary = _records(3, layers=(5,), modules=("q_proj",), scale=0.0)
    assert summary["total_intruders"] == 0 and summary["intruder_positions"] == {}
    assert spectral_plots.intruders_by_layer({"lora-r4-s0": summary}).startswith(PNG)
    assert spectral_plots.intruder_positions({"lora-r4-s0": summary}).startswith(PNG)
    assert spectral_plots.spectral_features_by_layer({"lora-r4-s0": records}).startswith(PNG)
    # Nothing at all, a summary from an older spectral.json (no by_layer / intruder_positions), matrices
    # without a layer number or without the new features, and an infinite relative norm.
    assert spectral_plots.intruders_by_layer({}).startswith(PNG)
    assert spectral_plots.intruder_positions({}).startswith(PNG)
    assert spectral_plots.spectral_features_by_layer({}).startswith(PNG)
    assert spectral_plots.intruders_by_layer({"full-s0": {"total_intruders": 0}}).startswith(PNG)
    assert spectral_plots.intruder_positions({"full-s0": {"total_intruders": 0}}).startswith(PNG)
    old = [
        {"name": "lm_head.weight", "delta_effective_rank": 2.0},
        {"name": "model.layers.0.q_proj.weight", "delta_effective_rank": 2.0, "relative_delta_norm": float("inf")},
    ]
    assert spectral_plots.spectral_features_by_layer({"full-s0": old, "lora-r4-s0": []}).startswith(PNG)
