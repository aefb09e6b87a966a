import copy
import dataclasses
import json
import math

import pytest
import torch
from torch import nn

from ftcompare.analyze.intervene import (
    choose_directions,
    control_positions,
    model_directions,
    scale_directions,
    scale_model_directions,
    select_layers,
)
from ftcompare.analyze.spectral import base_spectrum, intruder_mask

M, N = 64, 48
GROUP = 16  # planted direction spread evenly over 16 base singular vectors: max |cos| = 0.25


def _orthonormal(rows, cols, gen):
    q, _ = torch.linalg.qr(torch.randn(rows, cols, generator=gen, dtype=torch.float64))
    return q


def _base(seed=0):
    """(w0 = U diag(10 * 0.9^i) V^T, U, V)."""
    gen = torch.Generator().manual_seed(seed)
    u, v = _orthonormal(M, N, gen), _orthonormal(N, N, gen)
    s = 10 * 0.9 ** torch.arange(N, dtype=torch.float64)
    return u @ torch.diag(s) @ v.T, u, v


def _planted(seed=0, strength=30.0):
    """(w0, w_tuned, u_star): W0 plus strength * u* v*^T, u* spread over 16 base left vectors."""
    w0, u, _ = _base(seed)
    gen = torch.Generator().manual_seed(seed + 100)
    u_star = u[:, 10 : 10 + GROUP].sum(dim=1) / math.sqrt(GROUP)
    v_star = torch.randn(N, generator=gen, dtype=torch.float64)
    v_star /= v_star.norm()
    return w0, w0 + strength * torch.outer(u_star, v_star), u_star


def _two_intruders():
    """(w0, w): two planted directions, each in base blocks of its own, at positions 0 and 2 of the tuned
    spectrum (σ ≈ 31.8 and 9.83, around the base's 10 and 9): non-intruders at 1, 3, 4, ..."""
    w0, u, v = _base()
    block = slice(10, 26), slice(26, 42)
    plant = [
        (30.0, u[:, block[0]].sum(1) / 4, v[:, block[0]].sum(1) / 4),
        (9.5, u[:, block[1]].sum(1) / 4, v[:, block[1]].sum(1) / 4),
    ]
    return w0, w0 + sum(strength * torch.outer(a, b) for strength, a, b in plant)


def _top_cos(w, direction, k=10):
    u, _, _ = torch.linalg.svd(w, full_matrices=False)
    return float((u[:, :k].T @ direction).abs().max())


def _removed(w, positions):
    """w less its rank-1 SVD components at `positions`, computed here from torch's SVD."""
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    return w - sum((s[j] * torch.outer(u[:, j], vh[j]) for j in positions), torch.zeros_like(w))


# ---------------------------------------------------------------- choosing the directions


def test_planted_intruder_found_and_removed_at_zero():
    w0, w, u_star = _planted()
    base = base_spectrum(w0)
    intruders = choose_directions(base, w)["intruders"]
    assert intruders.positions == [0]
    assert _top_cos(w, u_star) > 0.99
    out = scale_directions(w, intruders, 0.0)
    torch.testing.assert_close(out, _removed(w, [0]))
    assert _top_cos(out, u_star) < 0.3
    assert not intruder_mask(base, out).any()


def test_the_control_is_as_many_of_the_highest_ranked_non_intruders():
    w0, w = _two_intruders()
    base = base_spectrum(w0)
    chosen = choose_directions(base, w)
    mask = intruder_mask(base, w)  # Algorithm 1, computed on its own
    assert chosen["intruders"].positions == [int(j) for j in torch.nonzero(mask).flatten()] == [0, 2]
    assert chosen["control"].positions == [1, 3]  # skips the intruder at 2
    assert not mask[chosen["control"].positions].any()
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    for kind in ("intruders", "control"):
        positions = chosen[kind].positions
        torch.testing.assert_close(chosen[kind].s, s[positions])
        torch.testing.assert_close(chosen[kind].u, u[:, positions])
        torch.testing.assert_close(chosen[kind].vh, vh[positions])


def test_the_control_goes_past_the_top_k_when_it_holds_too_few_non_intruders():
    w0, w = _two_intruders()
    chosen = choose_directions(base_spectrum(w0), w, k=3)  # top 3: intruders at 0 and 2, one non-intruder
    assert chosen["intruders"].positions == [0, 2]
    assert chosen["control"].positions == [1, 3]  # 3 lies past the top k
    assert control_positions([0, 2], rank=10) == [1, 3]
    assert control_positions([1, 2, 3], rank=10) == [0, 4, 5]
    assert control_positions([0, 1, 2], rank=4) == [3]  # a matrix with too few directions: every non-intruder
    assert control_positions([], rank=10) == []


@pytest.mark.parametrize("kind", ["intruders", "control"])
def test_lambda_zero_removes_exactly_those_components_and_two_doubles_them(kind):
    w0, w = _two_intruders()
    directions = choose_directions(base_spectrum(w0), w)[kind]
    positions = directions.positions
    removed = scale_directions(w, directions, 0.0)
    torch.testing.assert_close(removed, _removed(w, positions))
    s = torch.linalg.svdvals(w)
    kept = [j for j in range(len(s)) if j not in positions]
    torch.testing.assert_close(torch.linalg.svdvals(removed)[: len(kept)], s[kept])  # the rest of the spectrum as it was
    doubled = torch.linalg.svdvals(scale_directions(w, directions, 2.0))
    expected = s.clone()
    expected[positions] *= 2
    torch.testing.assert_close(doubled, expected.sort(descending=True).values)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_lambda_one_leaves_the_matrix_bit_identical(dtype):
    w0, w = _two_intruders()
    w = w.to(dtype)
    for kind, directions in choose_directions(base_spectrum(w0), w).items():
        assert directions.positions, kind
        same = scale_directions(w, directions, 1.0)
        assert torch.equal(same, w) and same is not w and same.dtype == dtype


def test_no_intruders_means_no_control_and_an_unchanged_copy():
    w0, _, _ = _planted()
    w = w0 * 1.01
    chosen = choose_directions(base_spectrum(w0), w)
    assert chosen["intruders"].positions == [] and chosen["control"].positions == []
    out = scale_directions(w, chosen["control"], 0.0)
    assert torch.equal(out, w) and out is not w


def test_keeps_dtype_and_rejects_negative_lambda():
    w0, w, _ = _planted()
    directions = choose_directions(base_spectrum(w0), w.to(torch.bfloat16))["intruders"]
    out = scale_directions(w.to(torch.bfloat16), directions, 0.0)
    assert out.dtype == torch.bfloat16 and directions.positions == [0]
    for lam in (-1.0, math.inf, math.nan):
        with pytest.raises(ValueError):
            scale_directions(w, directions, lam)


# ---------------------------------------------------------------- on a model's weights


def test_scale_model_directions_in_place_and_back():
    w0, w = _two_intruders()
    model = nn.Sequential(nn.Linear(N, M, bias=False), nn.Linear(M, M, bias=False))
    other0 = torch.randn(M, M, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        model[0].weight.copy_(w)
        model[1].weight.copy_(other0)
    tuned = {name: p.detach().clone() for name, p in model.named_parameters()}
    base_weights = {"0.weight": w0.float(), "1.weight": other0.float()}
    chosen = model_directions(model, base_weights, {"0.weight": base_spectrum(w0)})
    assert {name: {k: d.positions for k, d in c.items()} for name, c in chosen.items()} == {
        "0.weight": {"intruders": [0, 2], "control": [1, 3]},
        "1.weight": {"intruders": [], "control": []},
    }
    for kind in ("intruders", "control"):
        scale_model_directions(model, tuned, {name: c[kind] for name, c in chosen.items()}, 0.0)
        torch.testing.assert_close(model[0].weight.detach(), _removed(tuned["0.weight"], chosen["0.weight"][kind].positions))
        assert torch.equal(model[1].weight, tuned["1.weight"])
        assert model[0].weight.requires_grad
    scale_model_directions(model, tuned, {name: c["control"] for name, c in chosen.items()}, 1.0)
    assert all(torch.equal(p, tuned[name]) for name, p in model.named_parameters())
    with pytest.raises(KeyError):
        model_directions(model, {"nope": w0}, {})


def test_model_directions_read_a_conv1d_weight_as_out_by_in():
    from transformers.pytorch_utils import Conv1D

    w0, w, u_star = _planted()  # (out, in) = (M, N)
    model = nn.Sequential(Conv1D(M, N))  # GPT-2's layer: weight stored (in, out) = (N, M)
    with torch.no_grad():
        model[0].weight.copy_(w.T)
    tuned = {"0.weight": model[0].weight.detach().clone()}
    chosen = model_directions(model, {"0.weight": w0.float()}, {"0.weight": base_spectrum(w0)})
    assert chosen["0.weight"]["intruders"].positions == [0]  # a left singular vector of the (out, in) matrix
    scale_model_directions(model, tuned, {"0.weight": chosen["0.weight"]["intruders"]}, 0.0)
    assert model[0].weight.shape == (N, M) and _top_cos(model[0].weight.detach().double().T, u_star) < 0.3


# ---------------------------------------------------------------- the stage


PLANTED = ("model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight")


def _plant_intruders(model, names):
    """Add to each named (out, in) weight a direction spread over 16 of its singular vectors, three times its
    largest singular value: an intruder at position 0, so that its control is position 1."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name in names:
            u, s, vh = torch.linalg.svd(params[name].double(), full_matrices=False)
            direction = torch.outer(u[:, 8:24].sum(1) / 4, vh[8:24].sum(0) / 4)
            params[name].add_((3 * s[0] * direction).float())


@pytest.fixture(scope="module")
def tokenizer(tiny_base):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_base[0])


def _stage_setup(tmp_path, tokenizer, backend="generate"):
    """(run, run_dir, context, tuned model, reference): a tiny Llama with two planted intruders, two problems, two
    forgetting corpora of random tokens, and the base's losses on them in `_base/eval.json`."""
    from ftcompare.analyze.spectral import SpectrumCache
    from ftcompare.analyze.stage import Reference
    from ftcompare.config import StudyConfig
    from ftcompare.context import StudyContext
    from ftcompare.data.problems import Problem, TaskSplits
    from ftcompare.evaluate.forgetting import mean_token_loss
    from ftcompare.matrix import RunSpec
    from ftcompare.runs.store import RunDir, write_json
    from tests.helpers import tiny_llama

    base = tiny_llama(len(tokenizer), pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id).eval()
    model = copy.deepcopy(base)
    _plant_intruders(model, PLANTED)
    config = StudyConfig(
        experiment="causal",
        methods=[{"kind": "full", "lr": 1e-3}],
        evaluation={
            "n_samples": 0,
            "k": [1],
            "max_new_tokens": 4,
            "batch_size": 2,
            "timeout_s": 3,
            "latency": None,
            "backend": backend,
            "forgetting": {"n_chunks": 2, "chunk_tokens": 16, "corpora": ["stdlib", "prose"]},
        },
        analyses={"spectral": {"k": 4}, "intervene": {"lambdas": [0.0, 1.0]}},
    )
    gen = torch.Generator().manual_seed(0)
    heldout = {corpus: torch.randint(3, len(tokenizer), (2, 16), generator=gen) for corpus in ("stdlib", "prose")}
    problems = tuple(
        Problem(
            f"p{i}",
            f"def f{i}():\n    return",
            f" {i}\n",
            (f"assert f{i}() == {i}",),
            f"f{i}",
            code_prefix=f"def f{i}():\n    return",
        )
        for i in range(2)
    )
    context = StudyContext(
        config=config,
        device=torch.device("cpu"),
        base=None,
        tokenizer=tokenizer,
        task=TaskSplits("causal", (), {"test": problems}),
        experiment=tmp_path,
        heldout=heldout,
    )
    base_losses = {corpus: {"heldout_loss": mean_token_loss(base, chunks)} for corpus, chunks in heldout.items()}
    write_json(tmp_path / "_base" / "eval.json", {"forgetting": {"corpora": base_losses}})
    weights = {name: p.detach().clone() for name, p in base.named_parameters()}
    run = RunSpec(run_id="full-s0", method="full", seed=0, lr=1e-3)
    return run, RunDir(tmp_path / "full-s0"), context, model, Reference(weights, SpectrumCache(None, "tiny"))


def test_the_stage_scales_intruders_then_the_control_and_measures_forgetting_on_every_corpus(tmp_path, tokenizer):
    from ftcompare.analyze.stage import intervention_stage
    from ftcompare.evaluate.forgetting import mean_token_loss

    run, run_dir, context, model, reference = _stage_setup(tmp_path, tokenizer)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    result = intervention_stage(run, run_dir, context, model, reference, context.config.analyses.intervene)
    assert json.loads(run_dir.file("intervene.json").read_text()) == json.loads(json.dumps(result))
    rows = {(row["lambda"], row["directions"]): row for row in result["rows"]}
    assert list(rows) == [(0.0, "intruders"), (0.0, "control"), (1.0, "intruders"), (1.0, "control")]
    assert all(row["scaled"] == row["intruders"] == 2 for row in rows.values())  # one per planted matrix, matched
    assert rows[0.0, "control"]["beyond_k"] == 0 and rows[0.0, "control"]["unmatched"] == 0
    assert {name: m["intruders"]["positions"] for name, m in result["matrices"].items() if m["intruders"]["positions"]} == {
        name: [0] for name in PLANTED
    }
    assert all(result["matrices"][name]["control"]["positions"] == [1] for name in PLANTED)
    assert result["backend"] == "generate" and result["control"] is True
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())  # the tuned weights back

    base = json.loads((tmp_path / "_base" / "eval.json").read_text())["forgetting"]["corpora"]
    for (lam, kind), row in rows.items():
        edited = copy.deepcopy(model)  # what the row measured, rebuilt here from torch's SVD
        params = dict(edited.named_parameters())
        with torch.no_grad():
            for name in PLANTED:
                if lam == 0.0:
                    params[name].copy_(_removed(before[name], [0 if kind == "intruders" else 1]))
        assert row["unchanged"] is (lam == 1.0)
        assert set(row["corpora"]) == {"stdlib", "prose"}
        for corpus, chunks in context.heldout.items():
            loss = mean_token_loss(edited, chunks)
            assert row["corpora"][corpus]["heldout_loss"] == pytest.approx(loss, abs=1e-5), (lam, kind, corpus)
            assert row["corpora"][corpus]["forgetting"] == pytest.approx(loss - base[corpus]["heldout_loss"], abs=1e-5)
        assert row["heldout_loss"] == row["corpora"]["stdlib"]["heldout_loss"]  # the headline corpus: the first
        assert row["forgetting"] == row["corpora"]["stdlib"]["forgetting"]
    assert rows[1.0, "intruders"] | {"directions": "control"} == {
        k: v for k, v in rows[1.0, "control"].items() if k not in ("beyond_k", "unmatched")
    }
    # removing the intruders and removing the control change the model differently
    assert rows[0.0, "intruders"]["heldout_loss"] != pytest.approx(rows[0.0, "control"]["heldout_loss"], abs=1e-4)
    assert rows[0.0, "intruders"]["heldout_loss"] != pytest.approx(rows[1.0, "intruders"]["heldout_loss"], abs=1e-4)


def test_without_the_control_the_stage_scales_the_intruders_only(tmp_path, tokenizer):
    from ftcompare.analyze.stage import intervention_stage
    from ftcompare.config import InterveneConfig

    run, run_dir, context, model, reference = _stage_setup(tmp_path, tokenizer)
    result = intervention_stage(run, run_dir, context, model, reference, InterveneConfig(lambdas=[0.5], control=False))
    assert [(row["lambda"], row["directions"], row["unchanged"]) for row in result["rows"]] == [(0.5, "intruders", False)]
    assert result["control"] is False


def test_a_record_without_control_rows_is_measured_again_when_the_control_is_asked(tmp_path, tokenizer, monkeypatch):
    from ftcompare.analyze import stage

    run, run_dir, context, model, reference = _stage_setup(tmp_path, tokenizer)
    old = {"run_id": run.run_id, "rows": [{"lambda": 0.0, "pass@1": 0.0, "intruders": 2}]}  # before the control
    run_dir.path.mkdir()
    run_dir.file("intervene.json").write_text(json.dumps(old))
    measured = []
    monkeypatch.setattr(stage, "intervention_stage", lambda *args, **_: measured.append(args[-1]) or {"rows": ["new"]})
    evaluation = {"suites": {context.config.primary_suite: {"greedy": {"pass@1": 0.5}}}, "forgetting": None}
    monkeypatch.setattr(stage, "measured_in", lambda evaluation, context: {})
    assert stage.intervention_record(run, run_dir, context, model, reference, evaluation) == {"rows": ["new"]}
    assert measured == [context.config.analyses.intervene]
    without = context.config.model_copy(
        update={
            "analyses": context.config.analyses.model_copy(
                update={"intervene": measured[0].model_copy(update={"control": False})}
            )
        }
    )
    assert (
        stage.intervention_record(run, run_dir, dataclasses.replace(context, config=without), model, reference, evaluation) == old
    )


def test_the_tuned_models_row_is_the_evaluation_stages_measurement_not_a_second_one(tmp_path, tokenizer):
    from ftcompare.analyze.stage import intervention_stage, measured_in
    from ftcompare.config import InterveneConfig

    run, run_dir, context, model, reference = _stage_setup(tmp_path, tokenizer)
    corpora = {"stdlib": {"heldout_loss": 9.0, "increase": 0.25}, "prose": {"heldout_loss": 8.0, "increase": 0.5}}
    evaluation = {"suites": {context.config.primary_suite: {"greedy": {"pass@1": 0.123}}}, "forgetting": {"corpora": corpora}}
    tuned = measured_in(evaluation, context)  # values no tiny model measures: a second measurement would show
    assert tuned == {
        "pass@1": 0.123,
        "heldout_loss": 9.0,
        "forgetting": 0.25,
        "corpora": {"stdlib": {"heldout_loss": 9.0, "forgetting": 0.25}, "prose": {"heldout_loss": 8.0, "forgetting": 0.5}},
    }
    result = intervention_stage(
        run, run_dir, context, model, reference, InterveneConfig(lambdas=[0.0, 1.0]), tuned_measurement=tuned
    )
    for row in result["rows"]:
        measurement = {key: row[key] for key in tuned}
        assert (measurement == tuned) is row["unchanged"], (row["lambda"], row["directions"])


def test_the_stage_decodes_with_the_static_decoder_when_the_study_does(tmp_path, tokenizer, monkeypatch):
    from ftcompare.analyze.stage import intervention_stage
    from ftcompare.evaluate import static_decoding

    calls = []
    real = static_decoding.generate_static
    monkeypatch.setattr(static_decoding, "generate_static", lambda *args, **kwargs: calls.append(1) or real(*args, **kwargs))
    run, run_dir, context, model, reference = _stage_setup(tmp_path, tokenizer, backend="static")
    result = intervention_stage(run, run_dir, context, model, reference, context.config.analyses.intervene)
    assert result["backend"] == "static"
    assert len(calls) == 3  # λ = 0: intruders, control; λ = 1 once, for both


# ---------------------------------------------------------------- layer-wise LoRA selection


@pytest.mark.parametrize(
    ("scores", "fraction", "expected"),
    [
        ([0.9, 0.1, 0.5, 0.3], 0.5, [1, 3]),
        ([0.9, 0.1, 0.5, 0.3], 0.25, [1]),
        ([0.9, 0.1, 0.5, 0.3], 0.3, [1, 3]),  # ceil(1.2) = 2
        ([0.9, 0.1, 0.5, 0.3], 1.0, [0, 1, 2, 3]),
        ([0.5, 0.2, 0.2, 0.2, 0.9], 0.4, [1, 2]),  # tie among 1, 2, 3: lower indices win
        ([0.7, 0.7, 0.7], 0.01, [0]),
        ([float(i) for i in range(10)], 0.3, [0, 1, 2]),  # 0.3 * 10 is 3, not 4
    ],
)
def test_select_layers(scores, fraction, expected):
    assert select_layers(scores, fraction) == expected


@pytest.mark.parametrize(
    ("scores", "fraction"), [([0.1], 0.0), ([0.1], 1.5), ([0.1], -0.2), ([], 0.5), ([0.1, float("nan")], 0.5)]
)
def test_select_layers_errors(scores, fraction):
    with pytest.raises(ValueError):
        select_layers(scores, fraction)


def test_peft_adapts_only_selected_layers():
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    config = transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    layers = select_layers([0.9, 0.2, 0.8, 0.1], 0.5)
    assert layers == [1, 3]
    from ftcompare.matrix import RunSpec
    from ftcompare.models.methods.lora import lora_peft_config

    run = RunSpec(
        run_id="lora-r2-l50-s0", method="lora", seed=0, lr=1e-3, rank=2, alpha=4, target_modules="all-linear", layer_fraction=0.5
    )
    peft_model = peft.get_peft_model(model, lora_peft_config(run, model, layers))
    adapted = set()
    for name, _ in peft_model.named_parameters():
        if "lora_" in name:
            parts = name.split(".")
            adapted.add((int(parts[parts.index("layers") + 1]), name.split(".lora_")[0].split(".")[-1]))
    assert adapted == {
        (i, m) for i in layers for m in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    }
