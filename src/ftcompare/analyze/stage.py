"""The analysis stages of a run: the spectra of its weight updates (intruder dimensions), its hidden
states and attention against the base's on fixed probes, and the causal test that scales its intruder
dimensions (and, as its control, as many top non-intruder directions); with the base's probes and layer scores
they need, computed once per study.

Records: `<run>/spectral.json`, `<run>/representations.json`, `<run>/intervene.json`; the base's SVDs
are cached under `_base/svd` (`_base/svd-nf4` for QLoRA's quantized base).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from peft import PeftModel

from ftcompare.analyze.intervene import DIRECTIONS, model_directions, scale_model_directions
from ftcompare.analyze.similarity import (
    attention_distance,
    attention_entropy,
    hidden_states_and_attentions,
    layer_io_cka,
    layerwise_cka,
)
from ftcompare.analyze.spectral import SpectrumCache, analyze_matrix, summarize
from ftcompare.config import InterveneConfig, RepresentationsConfig, SpectralConfig
from ftcompare.console import console
from ftcompare.context import StudyContext
from ftcompare.data.problems import Problem
from ftcompare.evaluate.forgetting import mean_token_loss
from ftcompare.evaluate.stage import evaluate_suite, generation_backend
from ftcompare.matrix import RunSpec
from ftcompare.models.methods import method_for
from ftcompare.models.weights import EXACT_DELTA, EXACT_DELTA_RULE, adapted_weight_names, as_out_in, weight_updates
from ftcompare.runs.store import BASE_DIR, RunDir, read_json, write_json


@dataclass(frozen=True)
class Probe:
    """A fixed probe batch and the base model's hidden states and attention maps on it."""

    input_ids: torch.Tensor  # (batch, tokens)
    attention_mask: torch.Tensor  # (batch, tokens), 1 for real tokens
    base_hidden: list[torch.Tensor]  # layers + 1 of (batch, tokens, dim)
    base_attentions: list[torch.Tensor]  # layers of (batch, heads, tokens, tokens)


def probe_batch(tokenizer, texts: Sequence[str], length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded token ids (batch, tokens) of `texts` cut to `length` tokens, and their attention mask."""
    encoded = [ids[:length] for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]
    width = max(len(ids) for ids in encoded)
    input_ids = torch.full((len(encoded), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    for row, ids in enumerate(encoded):
        input_ids[row, : len(ids)], mask[row, : len(ids)] = torch.tensor(ids), 1
    return input_ids, mask


def base_probes(
    settings: RepresentationsConfig, model, tokenizer, problems: Sequence[Problem], heldout: torch.Tensor | None
) -> dict[str, Probe]:
    """The probe sets, each with the base's hidden states and attentions (computed once per study)."""
    size, length = settings.probe_size, settings.probe_tokens
    batches = {"task": probe_batch(tokenizer, [p.prompt + p.completion for p in problems[:size]], length)}
    if heldout is not None:
        chunk = heldout[:size, :length]
        batches["pretraining"] = (chunk, torch.ones_like(chunk))
    device = next(model.parameters()).device
    probes = {}
    for name, (ids, attention_mask) in batches.items():
        hidden, attentions = hidden_states_and_attentions(model, ids.to(device), attention_mask.to(device))
        probes[name] = Probe(ids, attention_mask, hidden, attentions)
    return probes


def layer_similarity_scores(model, tokenizer, train: Sequence[Problem], settings: RepresentationsConfig) -> list[float]:
    """Per decoder layer, linear CKA between its input and output hidden states on the first `probe_size`
    training examples (prompt and reference completion, cut to `probe_tokens`), with the base model.
    Training inputs, not test ones: the choice of layers must not see the evaluation."""
    ids, mask = probe_batch(tokenizer, [p.prompt + p.completion for p in train[: settings.probe_size]], settings.probe_tokens)
    device = next(model.parameters()).device
    hidden, _ = hidden_states_and_attentions(model, ids.to(device), mask.to(device))
    return layer_io_cka(hidden, mask)


def representations_stage(run_dir: RunDir, context: StudyContext, model: torch.nn.Module) -> dict:
    """Per probe set and layer: linear CKA between base and tuned hidden states, the tuned model's and the
    base's mean attention entropy, and the mean Jensen–Shannon distance between their attention maps."""
    return run_dir.reuse("representations.json", lambda: compare_representations(run_dir, context, model), key="summary")


def compare_representations(run_dir: RunDir, context: StudyContext, model: torch.nn.Module) -> dict:
    """The representations stage's measurement; writes `representations.json` and returns its record."""
    started = time.perf_counter()
    device = next(model.parameters()).device
    result = {}
    for name, probe in context.probes.items():
        hidden, attentions = hidden_states_and_attentions(model, probe.input_ids.to(device), probe.attention_mask.to(device))
        mask = probe.attention_mask
        result[name] = {
            "cka": layerwise_cka(probe.base_hidden, hidden, mask),
            "attention_entropy": [float(attention_entropy(a, mask).mean()) for a in attentions],
            "base_attention_entropy": [float(attention_entropy(a, mask).mean()) for a in probe.base_attentions],
            "attention_js": [float(attention_distance(b, a, mask).mean()) for b, a in zip(probe.base_attentions, attentions)],
        }
    # mean over the transformer layers' outputs (hidden_states[1:]); [0] is the embedding output
    summary = {f"{name}_mean_cka": sum(v["cka"][1:]) / len(v["cka"][1:]) for name, v in result.items()}
    summary["wall_s"] = time.perf_counter() - started
    record = {"summary": summary, "probes": result}
    write_json(run_dir.file("representations.json"), record)
    console.print(
        "  representations: mean CKA to the base "
        + ", ".join(f"{k.removesuffix('_mean_cka')} {v:.3f}" for k, v in summary.items() if k.endswith("_mean_cka"))
    )
    return record


@dataclass(frozen=True)
class Reference:
    """The base weights a run is compared against, and their cached SVDs."""

    weights: dict[str, torch.Tensor]
    spectra: SpectrumCache


def reference_for(run: RunSpec, model: torch.nn.Module, context: StudyContext) -> Reference:
    """The base a run actually trained on: the base, or for a method on a quantized base (QLoRA) its dequantized
    version (quantization alone moves the weights, and those moves are not the adapter's). `model` is the
    unmerged tuned model."""
    method = method_for(run.method)
    weights = method.reference_weights(model)
    if weights is None:
        return Reference(context.base_weights, context.spectra)
    tag = method.quantized_base or method.kind
    return Reference(weights, SpectrumCache(context.experiment / BASE_DIR / f"svd-{tag}", f"{context.base.fingerprint}-{tag}"))


def spectral_stage(run: RunSpec, run_dir: RunDir, context: StudyContext, model: torch.nn.Module, reference: Reference) -> dict:
    """Spectral analysis of every adapted matrix against the run's base (its SVDs come from the cache).

    `model` is the tuned model before `merge_adapter`: ΔW is the adapter's exact update, not the difference
    of a bf16 merge (whose rounding reads as a full-rank update). Intruders read the exact fine-tuned
    W0 + ΔW too (the paper's W is the fine-tuned matrix, and the count should not depend on the dtype the
    merge is held in). A run with no matrix to analyse is an error, never a silent "0 over 0"."""
    if context.config.analyses.spectral is None:
        return {}
    return run_dir.reuse("spectral.json", lambda: analyse_spectra(run, run_dir, context, model, reference), key="summary")


def analyse_spectra(run: RunSpec, run_dir: RunDir, context: StudyContext, model: torch.nn.Module, reference: Reference) -> dict:
    """The spectral stage's analysis; writes `spectral.json` and returns its record."""
    spectral = context.config.analyses.spectral
    if run.is_adapter and not isinstance(model, PeftModel):
        raise ValueError(f"{run.run_id}: the spectral stage needs the adapter unmerged, to read its exact update")
    started = time.perf_counter()
    reports = [
        analyze_matrix(
            update.name,
            reference.spectra.get(update.name, update.base),
            update.base,
            update.tuned,
            delta=update.delta,
            k=spectral.k,
            epsilon=spectral.epsilon,
            epsilons=spectral.epsilons,
        )
        for update in weight_updates(model, reference.weights)
    ]
    if not reports:
        raise RuntimeError(
            f"{run.run_id}: the spectral analysis found no adapted weight matrix (nn.Linear or Conv1D) in "
            f"{type(model).__name__}; set analyses.spectral: null to run without it"
        )
    summary = {**summarize(reports), "delta": EXACT_DELTA, "wall_s": time.perf_counter() - started}
    record = {
        "summary": summary,
        "matrices": [asdict(r) for r in reports],
        "k": spectral.k,
        "epsilon": spectral.epsilon,
        "delta": EXACT_DELTA,
        "delta_rule": EXACT_DELTA_RULE,
    }
    write_json(run_dir.file("spectral.json"), record)
    console.print(
        f"  analyse: {summary['total_intruders']} intruder dimensions over {len(reports)} matrices "
        f"(ε={spectral.epsilon}; ΔW {EXACT_DELTA})"
    )
    return record


def intervention_record(
    run: RunSpec, run_dir: RunDir, context: StudyContext, model: torch.nn.Module, reference: Reference, evaluation: dict
) -> dict:
    """The causal test as a stage of the study (`analyses.intervene`): the record an earlier session wrote when it
    holds what the config asks, else `intervention_stage`'s, the tuned model's row taken from its `evaluation`
    record. A record without control rows (written before the control existed, or with `control: false`) is
    measured again when the config asks for the control."""
    settings = context.config.analyses.intervene
    if run_dir.has("intervene.json"):
        record = read_json(run_dir.file("intervene.json"))
        if not settings.control or any(row.get("directions") == "control" for row in record["rows"]):
            return record
    return intervention_stage(
        run, run_dir, context, model, reference, settings, tuned_measurement=measured_in(evaluation, context)
    )


def measured_in(evaluation: dict, context: StudyContext) -> dict:
    """The tuned model's measurement as `intervention_measurement` gives it, read from the evaluation stage's record,
    which scored the same model on the same problems with the same decoding and corpora: the causal test's λ = 1
    (and every row with nothing to scale) costs nothing more."""
    result: dict = {"pass@1": evaluation["suites"][context.config.primary_suite]["greedy"]["pass@1"]}
    if context.heldout:
        recorded = evaluation["forgetting"]["corpora"]
        corpora = {
            corpus: {"heldout_loss": recorded[corpus]["heldout_loss"], "forgetting": recorded[corpus]["increase"]}
            for corpus in context.heldout
        }
        result.update(next(iter(corpora.values())), corpora=corpora)
    return result


def intervention_stage(
    run: RunSpec,
    run_dir: RunDir,
    context: StudyContext,
    model: torch.nn.Module,
    reference: Reference,
    settings: InterveneConfig,
    tuned_measurement: dict | None = None,
) -> dict:
    """The causal test of Shuttleworth et al. 2024 (§6) with its control: at each λ, scale the singular values of
    every adapted matrix's intruder dimensions by λ, then (`settings.control`) as many of its top non-intruder
    directions (`intervene.control_positions`), and measure the in-domain greedy pass@1 and the held-out loss on
    every forgetting corpus (forgetting: its increase over the base's, `_base/eval.json`).

    Rows, λ by λ: one per kind of directions scaled ("directions": "intruders" or "control"), with `scaled` (the
    directions scaled, over all matrices), `intruders` (the run's intruder count, which the control matches), and
    the control's `beyond_k` (its directions past the top k) and `unmatched` (intruders it could not match). A row
    whose weights are the tuned model's own (λ = 1, or nothing to scale) says `unchanged` and repeats the tuned
    model's one measurement (`tuned_measurement`, when the evaluation stage made it; else measured here). The directions are
    chosen once, from one SVD per matrix. `model` is the merged tuned model; its weights are restored afterwards.
    Writes `<run>/intervene.json`.
    """
    started = time.perf_counter()
    config = context.config
    spectral = config.analyses.spectral or SpectralConfig()
    names = adapted_weight_names(model, run.target_modules if run.is_adapter else None)
    parameters = dict(model.named_parameters())
    tuned = {name: parameters[name].detach().clone() for name in names}
    base_weights = {name: as_out_in(model, name, reference.weights[name]) for name in names}  # (out, in), as the spectra
    spectra = {name: reference.spectra.get(name, w) for name, w in base_weights.items()}
    chosen = model_directions(model, base_weights, spectra, k=spectral.k, epsilon=spectral.epsilon)
    intruders = sum(len(directions["intruders"].positions) for directions in chosen.values())
    measure = intervention_measurement(run, context)
    rows = []
    for lam in settings.lambdas:
        for kind in DIRECTIONS if settings.control else DIRECTIONS[:1]:
            picked = {name: directions[kind] for name, directions in chosen.items()}
            scale_model_directions(model, tuned, picked, lam)  # from the tuned weights (λ = 1: the tuned weights)
            positions = [p for directions in picked.values() for p in directions.positions]
            row = {"lambda": lam, "directions": kind, "scaled": len(positions), "intruders": intruders}
            if kind == "control":
                row.update(beyond_k=sum(p >= spectral.k for p in positions), unmatched=intruders - len(positions))
            row["unchanged"] = lam == 1.0 or not positions
            if row["unchanged"]:  # the tuned model itself: measured once
                tuned_measurement = tuned_measurement or measure(model)
            row.update(tuned_measurement if row["unchanged"] else measure(model))
            console.print(
                f"  λ={lam:g} {kind}: pass@1 {row['pass@1']:.3f}"
                + (f", forgetting {row['forgetting']:+.3f}" if "forgetting" in row else "")
                + (" (the tuned model)" if row["unchanged"] else "")
            )
            rows.append(row)
    with torch.no_grad():  # the tuned weights back
        for name in names:
            parameters[name].copy_(tuned[name])
    result = {
        "run_id": run.run_id,
        "k": spectral.k,
        "epsilon": spectral.epsilon,
        "suite": config.primary_suite,
        "problems": len(evaluated_problems(context)),
        "control": settings.control,
        # static decodes with a copy of the weights taken at each call, so it sees every λ's edit; vLLM's engine holds
        # the weights it loaded: transformers generates then
        "backend": generation_backend(model, config.evaluation.backend),
        "matrices": {
            name: {
                kind: {"positions": directions[kind].positions, "singular_values": directions[kind].s.tolist()}
                for kind in DIRECTIONS
            }
            for name, directions in chosen.items()
        },
        "rows": rows,
        "wall_s": time.perf_counter() - started,
    }
    write_json(run_dir.file("intervene.json"), result)
    return result


def evaluated_problems(context: StudyContext) -> tuple[Problem, ...]:
    """The primary suite's problems the evaluation scores (its first `evaluation.limit`)."""
    limit = context.config.evaluation.limit
    return context.primary_problems[:limit] if limit else context.primary_problems


def intervention_measurement(run: RunSpec, context: StudyContext):
    """A function of the model: its greedy pass@1 on the primary suite and, per forgetting corpus, its held-out loss
    and forgetting (the increase over the base's loss); the headline corpus's also as `heldout_loss` and
    `forgetting`."""
    base_losses = {}
    if context.heldout:
        recorded = read_json(context.experiment / BASE_DIR / "eval.json")["forgetting"]["corpora"]
        base_losses = {corpus: recorded[corpus]["heldout_loss"] for corpus in context.heldout}
    problems = evaluated_problems(context)

    def measure(model: torch.nn.Module) -> dict:
        _, metrics = evaluate_suite(model, problems, context.config.primary_suite, context, seed=run.seed, greedy_only=True)
        result: dict = {"pass@1": metrics["greedy"]["pass@1"]}
        if context.heldout:
            losses = {corpus: mean_token_loss(model, chunks) for corpus, chunks in context.heldout.items()}
            corpora = {
                corpus: {"heldout_loss": loss, "forgetting": loss - base_losses[corpus]} for corpus, loss in losses.items()
            }
            result.update(next(iter(corpora.values())), corpora=corpora)
        return result

    return measure
