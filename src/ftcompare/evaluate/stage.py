"""The evaluation stage: latency (an adapter unmerged, then merged), pass@k on every suite (a judge's scores on
a judged one) with per-sample records, robustness under perturbations, forgetting as held-out loss and as
lm-evaluation-harness accuracy; and the base model's own evaluation.

Records: `<run>/eval.json` and `<run>/samples.jsonl` (with `evaluation.lm_eval`, `lm_eval_samples.jsonl` too); for
the base, `_base/eval.json`, `_base/samples.jsonl`, `_base/metrics.json` and (QLoRA studies)
`_base/quantized_base.json`. `ftcompare eval` (`evaluate_benchmark`) writes `metrics.json` and `samples.jsonl` in its
output folder.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch
from peft import PeftModel

from ftcompare.config import BaseModelConfig, EvaluationConfig, StudyConfig
from ftcompare.console import console, step_progress
from ftcompare.context import StudyContext, environment, resolve_device
from ftcompare.data.perturb import family_variants
from ftcompare.data.problems import Problem, TaskSplits
from ftcompare.data.suites import BENCHMARKS, evaluation_problems
from ftcompare.evaluate.forgetting import mean_token_loss
from ftcompare.evaluate.generation import SamplingSettings, check_compile, generate, generation_tokens_per_s
from ftcompare.evaluate.judge import judge_records, judged_metrics
from ftcompare.evaluate.lm_eval_forgetting import lm_eval_stage
from ftcompare.evaluate.repair import REPAIR_F1_KEYS, repair_f1_scores
from ftcompare.evaluate.robustness import family_robustness
from ftcompare.evaluate.scoring import SandboxSettings, execute_records, pass_at_k_table, sample_records
from ftcompare.evaluate.static_decoding import cache_record
from ftcompare.evaluate.vllm_engine import EnginePool, Served, lora_rank_for, save_servable
from ftcompare.matrix import RunSpec, expand
from ftcompare.models.base import BaseSource, load_model, load_tokenizer, resolve_base
from ftcompare.models.methods import method_for
from ftcompare.models.methods.full import FullSettings
from ftcompare.models.weights import merge_adapter
from ftcompare.runs.store import BASE_DIR, RunDir, read_json, write_json, write_jsonl


def evaluate_stage(
    run: RunSpec | None, run_dir: RunDir, context: StudyContext, model: torch.nn.Module
) -> tuple[dict, torch.nn.Module]:
    """Latency (unmerged, then merged), pass@k on every suite, forgetting: the evaluation record (the one
    an earlier session wrote, if any) and the merged model."""

    def evaluate() -> dict:
        nonlocal model
        started = time.perf_counter()
        latency, model = merged_with_latency(model, context)
        return evaluate_merged(run, run_dir, context, model, latency, started)

    if run_dir.has("eval.json"):
        console.print("  evaluate: finished earlier")
    record = run_dir.reuse("eval.json", evaluate)
    return record, merge_adapter(model)  # as is when `evaluate` merged it already


def merged_with_latency(model: torch.nn.Module, context: StudyContext) -> tuple[dict, torch.nn.Module]:
    """Generation throughput of an adapter unmerged, then merged (empty: latency is not measured); the
    latency record and the merged model."""
    evaluation = context.config.evaluation
    latency: dict = {}
    if evaluation.latency:
        prompts = latency_prompts(context)

        def measure(m: torch.nn.Module) -> float:
            return generation_tokens_per_s(
                m,
                context.tokenizer,
                prompts,
                new_tokens=evaluation.latency.new_tokens,
                repeats=evaluation.latency.repeats,
                cache=evaluation.cache,
                compile=evaluation.compile,
            )

        if isinstance(model, PeftModel):
            latency["unmerged_tokens_per_s"] = measure(model)
        model = merge_adapter(model)
        latency["merged_tokens_per_s"] = measure(model)
        latency.update(batch_size=len(prompts), new_tokens=evaluation.latency.new_tokens)
    return latency, merge_adapter(model)  # no-op when latency already merged it


def evaluate_merged(
    run: RunSpec | None, run_dir: RunDir, context: StudyContext, model: torch.nn.Module, latency: dict, started: float
) -> dict:
    """Score the merged `model` on every suite and measure its forgetting; writes `samples.jsonl` and
    `eval.json` and returns the latter's record (`started`: when the stage began, latency included)."""
    evaluation = context.config.evaluation
    model.eval()
    generator = served_model(run, run_dir, context, model) if context.engines else model
    suites, records = {}, []
    # the selection score is reused only if it was measured on this very model
    selection_suite = (
        context.config.training.select_lr_on
        if run is not None and not read_json(run_dir.file("train.json")).get("retrained_without_saved_weights")
        else None
    )
    for suite_name, problems in context.task.suites.items():
        problems = problems[: evaluation.limit] if evaluation.limit else problems
        if not problems:
            continue
        if suite_name == selection_suite and run_dir.has("selection.json"):  # scored greedily when the rate was chosen
            selection = read_json(run_dir.file("selection.json"))
            suites[suite_name] = {**{k: v for k, v in selection.items() if k != "suite"}, "in_domain": True}
            continue
        seed = run.seed if run else 0
        suite_records, suite_metrics = evaluate_suite(generator, problems, suite_name, context, seed=seed)
        suites[suite_name] = {**suite_metrics, "in_domain": context.task.suite_info(suite_name).in_domain}
        records.extend(suite_records)
        if evaluation.robustness and suite_name in evaluation.robustness.suites:
            robust_records, suites[suite_name]["robustness"] = evaluate_robustness(
                generator, problems, suite_records, suite_name, context, seed
            )
            records.extend(robust_records)
    write_jsonl(run_dir.file("samples.jsonl"), records)
    generation = context.engines.record(generator) if context.engines else generation_record(generator, evaluation.backend)
    if isinstance(generator, Served) and generator.path == "merged":  # written only to be served
        shutil.rmtree(generator.folder, ignore_errors=True)
    forgetting = {}
    if context.heldout:
        base_forgetting = read_json(context.experiment / BASE_DIR / "eval.json")["forgetting"] if run else {}
        corpora = {}
        for corpus, chunks in context.heldout.items():
            tuned_loss = mean_token_loss(model, chunks)
            base_loss = base_forgetting["corpora"][corpus]["heldout_loss"] if run else tuned_loss
            corpora[corpus] = {"heldout_loss": tuned_loss, "base_heldout_loss": base_loss, "increase": tuned_loss - base_loss}
            if run is not None and method_for(run.method).quantized_base:
                quantized = quantized_base_loss(run, context)[corpus]
                corpora[corpus].update(quantized_base_heldout_loss=quantized, increase_over_quantized_base=tuned_loss - quantized)
        forgetting = {**next(iter(corpora.values())), "corpus": next(iter(corpora)), "corpora": corpora}
    lm_eval = {}
    if evaluation.lm_eval:  # the harness's accuracies, against the base's
        base_lm_eval = read_json(context.experiment / BASE_DIR / "eval.json")["lm_eval"] if run else None
        lm_eval = {"lm_eval": lm_eval_stage(run_dir, context, model, base_lm_eval)}
    result = {
        "suites": suites,
        "forgetting": forgetting,
        **lm_eval,
        "latency": latency,
        "generation": generation,
        "merged_for_evaluation": run is not None and run.is_adapter,
        "wall_s": time.perf_counter() - started,
    }
    write_json(run_dir.file("eval.json"), result)
    console.print(
        f"  evaluate: greedy {', '.join(f'{name} {headline(metrics)}' for name, metrics in suites.items())}"
        + (f"; held-out loss {forgetting['increase']:+.3f}" if forgetting and run else "")
    )
    return result


def headline(suite_metrics: dict) -> str:
    """A suite's greedy score for a log line: pass@1, or a judged suite's macro average over categories."""
    greedy = suite_metrics.get("greedy", {})
    if greedy.get("scoring") == "judge":
        macro = greedy["macro_mean"]
        return f"judged {'–' if macro is None else f'{macro:.2f}'} ({greedy['verdict_counts']['scored']}/{greedy['problems']} scored)"
    return f"pass@1 {greedy.get('pass@1', float('nan')):.2f}"


def latency_prompts(context: StudyContext) -> list[str]:
    suite = context.primary_problems
    return [suite[i % len(suite)].prompt for i in range(context.config.evaluation.latency.batch_size)]


def evaluate_suite(
    model, problems: tuple[Problem, ...], suite: str, context: StudyContext, seed: int, greedy_only: bool = False
) -> tuple[list[dict], dict]:
    """Generate (greedy and/or sampled), extract, execute and score one suite (a judged suite's answers are
    scored by its judge instead: `judge_records`); per-sample records and metrics."""
    evaluation = context.config.evaluation
    info = context.task.suite_info(suite)
    sandbox = SandboxSettings(
        info.timeout_s or evaluation.timeout_s, info.memory_mb or evaluation.memory_mb, evaluation.sandbox_workers
    )
    common = {
        "max_new_tokens": evaluation.max_new_tokens,
        "batch_size": evaluation.batch_size,
        "seed": seed,
        "stop_strings": info.stop_strings,
        "backend": generation_backend(model, evaluation.backend),
        "round_tokens": evaluation.round_tokens,
        "cache": evaluation.cache,
        "compile": evaluation.compile,
        "static_cache_tokens": evaluation.static_cache_tokens,
    }
    modes = []
    if evaluation.greedy:
        modes.append(("greedy", SamplingSettings(n=1, do_sample=False, **common)))
    sampled = evaluation.sampled_suites is None or suite in evaluation.sampled_suites
    if evaluation.n_samples and sampled and not greedy_only:
        modes.append(
            (
                "sampled",
                SamplingSettings(
                    n=evaluation.n_samples, do_sample=True, temperature=evaluation.temperature, top_p=evaluation.top_p, **common
                ),
            )
        )
    all_problems, records, metrics = problems, [], {}
    for mode, settings in modes:
        problems = all_problems[: evaluation.sampled_limit] if mode == "sampled" and evaluation.sampled_limit else all_problems
        with step_progress(console, f"  {suite} {mode}", len(problems)) as advance:
            prompts = [p.prompt for p in problems]
            if isinstance(model, Served):
                generations, generate_s = context.engines.generate(model, prompts, settings, on_batch=running_total(advance))
            else:
                generations, generate_s = generate(model, context.tokenizer, prompts, settings, on_batch=running_total(advance))
        sampled = sample_records(
            problems, generations, suite=suite, mode=mode, extraction=info.extraction, tokenizer=context.tokenizer
        )
        if info.scoring == "judge":  # a judge scores the answers; nothing runs in the sandbox
            scored, metrics["judge"] = judge_records(
                sampled, problems, settings.n, info.judge, device=context.device.type, builtin=context.config.base.builtin
            )
            metrics[mode] = {**judged_metrics(scored), **judged_generation_statistics(scored, generate_s, len(problems))}
        else:
            scored = execute_records(sampled, sandbox)
            if info.scoring == "repair":
                scored = [
                    {**record, **repair_scores(problem, record)}
                    for problem, record in zip((p for p in problems for _ in range(settings.n)), scored, strict=True)
                ]
            metrics[mode] = {
                **pass_at_k_table(scored, evaluation.k if mode == "sampled" else [1]),
                **generation_statistics(scored, generate_s, len(problems)),
            }
            if info.scoring == "repair":
                metrics[mode].update({key: sum(r[key] for r in scored) / len(scored) for key in REPAIR_F1_KEYS})
        metrics[mode].update(n=settings.n, backend=settings.backend)
        records.extend(scored)
    return records, metrics


def judged_generation_statistics(scored: list[dict], generate_s: float, problems: int) -> dict:
    """`generation_statistics` of judged answers: no program ran, so no sandbox isolation to count."""
    return {k: v for k, v in generation_statistics(scored, generate_s, problems).items() if k != "isolation_counts"}


def generation_backend(model, configured: str) -> str:
    """The backend that generates for `model`: vLLM for a `Served` model; for a model in memory (a sequence's
    stages, which keep training, and the causal test, which edits the weights per λ) transformers' generate when
    vLLM was configured, recorded as such with every suite's metrics."""
    if isinstance(model, Served):
        return "vllm"
    return "generate" if configured == "vllm" else configured


def generation_record(model, backend: str) -> dict:
    """How a model in memory was generated from: the backend and, for the static decoder, its cache's size."""
    if backend != "static":
        return {"backend": backend}
    return {"backend": backend, "static_cache": cache_record(model)}


def vllm_engines(config: StudyConfig, base: BaseSource, device: torch.device) -> EnginePool:
    """The study's vLLM engine pool: LoRA enabled up to the largest adapter rank it will serve."""
    ranks = [method.saved_rank(run) for run in expand(config) if (method := method_for(run.method)).vllm_serves_adapter]
    return EnginePool(
        config.evaluation.vllm,
        dtype=str(base.dtype).removeprefix("torch."),
        seed=0,
        max_lora_rank=lora_rank_for(ranks),
        device=device.type,
    )


def served_model(run: RunSpec | None, run_dir: RunDir, context: StudyContext, model: torch.nn.Module) -> Served:
    """How vLLM serves this run (see `ftcompare.evaluate.vllm_engine`): the base's folder, the base with the run's
    saved adapter, the run's saved full model, or its merged weights saved for the purpose."""
    base = base_folder(context)
    if run is None:
        return Served(base, base, path="base")
    method = method_for(run.method)
    if method.vllm_serves_adapter:
        return Served(base, base, adapter=run_dir.file("weights"), adapter_rank=method.saved_rank(run), path="adapter")
    if not method.is_adapter:
        return Served(run_dir.file("weights"), base, path="model")
    return Served(save_servable(model, context.tokenizer, run_dir.file("served")), base, path="merged")


def base_folder(context: StudyContext) -> Path:
    """The base as a folder vLLM loads: where it was loaded from, or (a hub id, a GGUF file) saved once."""
    if (Path(context.base.path) / "config.json").is_file():
        return Path(context.base.path)
    folder = context.experiment / BASE_DIR / "served"
    if not (folder / "config.json").is_file():
        save_servable(load_model(context.base, torch.device("cpu")), context.tokenizer, folder)
    return folder


def running_total(advance: Callable[[int], None]) -> Callable[[int], None]:
    """A `generate` batch callback (problems finished in the batch) that moves a progress bar to the total so far."""
    finished = 0

    def add(count: int) -> None:
        nonlocal finished
        finished += count
        advance(finished)

    return add


def evaluate_robustness(
    model, problems: tuple[Problem, ...], nominal_records: list[dict], suite: str, context: StudyContext, seed: int
) -> tuple[list[dict], dict]:
    """ReCode's Robust Pass@1, Drop@1 and Relative@1 per perturbation family: s variants of every problem,
    decoded greedily, against the suite's own greedy (nominal) results."""
    robustness = context.config.evaluation.robustness
    nominal = {r["task_id"]: [r["passed"]] for r in nominal_records if r["mode"] == "greedy"}
    records, metrics = [], {}
    for family in robustness.perturbations:
        variants, not_applicable = family_variants(problems, family, robustness.s, robustness.seed)
        family_records = []
        if variants:  # a family that applies to no problem generates nothing
            family_records, _ = evaluate_suite(model, tuple(variants), suite, context, seed=seed, greedy_only=True)
        family_records = [
            {**r, "suite": f"{suite}~{family}", "perturbation": family, "variant": v.meta["variant"]}
            for r, v in zip(family_records, variants, strict=True)
        ]
        perturbed: dict[str, list[list[bool]]] = {}
        for record in family_records:
            perturbed.setdefault(record["task_id"], []).append([record["passed"]])
        metrics[family] = family_robustness(nominal, perturbed, not_applicable, robustness.s)
        records.extend(family_records)
    return records, metrics


def repair_scores(problem: Problem, record: dict) -> dict:
    """Token-level F1 (the reported F1) and line-edit F1, with their precision and recall, of a candidate
    fix against the reference fix (ftcompare.evaluate.repair)."""
    return repair_f1_scores(problem.meta["buggy"], record["extracted_code"], problem.meta["correct"])


def generation_statistics(scored: list[dict], generate_s: float, problems: int) -> dict:
    """What the latency story of a (reasoning) model needs: tokens generated, reasoning tokens, time per
    problem, and how often the budget cut an answer (recorded, not silently scored as a method's failure)."""
    new_tokens = sum(r["new_tokens"] for r in scored)
    reasoning = [r["reasoning_tokens"] for r in scored if r.get("reasoning_tokens") is not None]
    return {
        "problems": problems,
        "mean_new_tokens": new_tokens / len(scored),
        "mean_reasoning_tokens": sum(reasoning) / len(reasoning) if reasoning else 0.0,
        "hit_budget_fraction": sum(r["hit_budget"] for r in scored) / len(scored),
        "unfinished_reasoning_fraction": sum(not r["reasoning_closed"] for r in scored) / len(scored),
        "generate_s": generate_s,
        "seconds_per_problem": generate_s / problems,
        "generate_tokens_per_s": new_tokens / max(generate_s, 1e-9),
        "status_counts": {s: sum(r["status"] == s for r in scored) for s in sorted({r["status"] for r in scored})},
        "extraction_counts": {m: sum(r["extraction"] == m for r in scored) for m in sorted({r["extraction"] for r in scored})},
        # bubblewrap or the weaker fallback (ftcompare.evaluate.sandbox): the report says which scored each run
        "isolation_counts": {
            i: sum(r.get("isolation") == i for r in scored) for i in sorted({str(r.get("isolation")) for r in scored})
        },
    }


def quantized_base_loss(run: RunSpec, context: StudyContext) -> dict[str, float]:
    """Held-out loss per corpus of the base quantized as `run`'s method quantizes it (QLoRA: 4-bit NF4; once
    per study)."""
    base_dir = RunDir(context.experiment / BASE_DIR)

    def measure() -> dict:
        model = method_for(run.method).prepare_base(load_model(context.base, context.device), run)
        losses = {corpus: mean_token_loss(model, chunks) for corpus, chunks in context.heldout.items()}
        record = {"quantization": "bitsandbytes NF4, double quantization", "heldout_loss": losses}
        write_json(base_dir.file("quantized_base.json"), record)
        return record

    return base_dir.reuse("quantized_base.json", measure, key="heldout_loss")


def evaluate_base(context: StudyContext) -> None:
    """The base model's own scores and held-out loss: the reference every run is compared with."""
    base_dir = RunDir(context.experiment / BASE_DIR)

    def evaluate() -> dict:
        console.print("[bold]base model[/]: evaluating before any fine-tuning")
        model = load_model(context.base, context.device)
        evaluation, _ = evaluate_stage(None, base_dir, context, model)
        metrics = {
            "run_id": "base",
            "method": "base",
            "label": "base",
            "primary_suite": context.config.primary_suite,
            **evaluation,
            "params": sum(p.numel() for p in model.parameters()),
            **({"worker": context.worker.record(context.device)} if context.worker else {}),
        }
        write_json(base_dir.file("metrics.json"), metrics)
        return metrics

    base_dir.reuse("metrics.json", evaluate)


def evaluate_benchmark(
    model: str,
    benchmark: str,
    output: Path,
    *,
    data: Path | None,
    prompt_format: str,
    evaluation: EvaluationConfig,
    device_name: str = "auto",
) -> dict:
    """Score a base model on a benchmark, no fine-tuning (`ftcompare eval`): `output/metrics.json` with
    pass@k and the generation cost, `output/samples.jsonl` with every sample's prompt, output and verdict."""
    device = resolve_device(device_name)
    check_compile(evaluation.compile, device)
    settings = BENCHMARKS[benchmark].configure(data, prompt_format)  # a missing or bad file fails before any model loads
    config = StudyConfig(experiment="eval", base=BaseModelConfig(model=model), methods=[FullSettings()], evaluation=evaluation)
    base = resolve_base(config.base, device, console)
    tokenizer = load_tokenizer(base)
    problems, info = evaluation_problems(settings, tokenizer)
    problems = problems[: evaluation.limit] if evaluation.limit else problems
    splits = TaskSplits(name=benchmark, train=(), suites={benchmark: problems}, info={benchmark: info})
    engines = vllm_engines(config, base, device) if evaluation.backend == "vllm" else None
    context = StudyContext(
        config=config, device=device, base=base, tokenizer=tokenizer, task=splits, experiment=output, engines=engines
    )
    started = time.perf_counter()
    generator = served_model(None, RunDir(output), context, None) if engines else load_model(base, device).eval()
    records, metrics = evaluate_suite(generator, problems, benchmark, context, seed=0)
    generation = engines.record(generator) if engines else generation_record(generator, evaluation.backend)
    if engines:
        engines.close()
    output.mkdir(parents=True, exist_ok=True)
    write_jsonl(output / "samples.jsonl", records)
    result = {
        "model": model,
        "benchmark": benchmark,
        "format": prompt_format,
        "problems": len(problems),
        **{key: value for key, value in metrics.get("greedy", {}).items() if key.startswith("pass@")},
        "modes": metrics,
        "generation": generation,
        "wall_s": time.perf_counter() - started,
        "base": {"path": base.path, "dtype": str(base.dtype), "provenance": base.provenance},
        "evaluation": evaluation.model_dump(mode="json"),
        "device": str(device),
        "environment": environment(),
    }
    write_json(output / "metrics.json", result)
    return result
