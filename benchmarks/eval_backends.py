"""Generation backends on a real benchmark, through the same `ftcompare eval` path a study uses, as a table.

    python benchmarks/eval_backends.py smollm2-135m-instruct --data ../shared/data/mbpp.jsonl --limit 256

Each backend scores the same problems greedily (chat template); `plain` is transformers' `generate` as a user calls
it (batch 64), `rounds` the default backend with `evaluation.round_tokens` (finished answers leave the batch every
`--round-tokens` tokens), `static` ftcompare's decoder (`evaluation.backend: static`; its first call in a process
includes capturing its CUDA graphs, which the table includes). Columns: seconds spent generating, useful tokens/s
(tokens up to EOS, summed over samples, per second of generation), pass@1 with its standard error, and how many
completions are identical to the first backend's (bf16 kernels differ between batch shapes, so greedy
answers can diverge after a near-tie; pass@1 shows whether that matters). Run by hand on a GPU; the
first compiled call of a process includes compilation, which the table reports as it happened.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from ftcompare.config import EvaluationConfig
from ftcompare.evaluate.stage import evaluate_benchmark

BACKENDS = {  # name: (description, evaluation settings)
    "plain": ("plain generate, batch 64, dynamic cache", dict(backend="generate", batch_size=64)),
    "dynamic": ("generate, dynamic cache (HF default)", dict(backend="generate", cache="dynamic", compile=False)),
    "static-compile": ("generate, static cache + torch.compile", dict(backend="generate", cache="static", compile=True)),
    "rounds": ("generate, dynamic cache, in rounds of --round-tokens", dict(backend="generate")),
    "continuous": ("continuous batching (generate_batch)", dict(backend="continuous")),
    "static": ("ftcompare's static decoder (CUDA graphs, shrinking batches)", dict(backend="static")),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--benchmark", default="mbpp")
    parser.add_argument("--data", type=Path)
    parser.add_argument("--limit", type=int, default=256)
    parser.add_argument("--max-new-tokens", type=int, default=384)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--round-tokens", type=int, default=64, help="round length of the 'rounds' backend")
    parser.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated names from: " + ", ".join(BACKENDS))
    args = parser.parse_args()

    print(
        f"{args.model} on {args.benchmark}: {args.limit} problems, greedy, ≤{args.max_new_tokens} new tokens, "
        f"batch {args.batch_size} unless the backend says otherwise"
    )
    print("| backend | generating (s) | useful tokens/s | pass@1 ± s.e. | completions identical to the first row |")
    print("|---|---:|---:|---:|---:|", flush=True)
    reference = None
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.backends.split(","):
            evaluation = EvaluationConfig(
                n_samples=0,
                k=[1],
                max_new_tokens=args.max_new_tokens,
                limit=args.limit,
                forgetting=None,
                latency=None,
                **({"batch_size": args.batch_size} | BACKENDS[name][1]),
                **({"round_tokens": args.round_tokens} if name == "rounds" else {}),
            )
            output = Path(scratch) / name
            result = evaluate_benchmark(
                args.model, args.benchmark, output, data=args.data, prompt_format="chat", evaluation=evaluation
            )
            completions = [json.loads(line)["completion"] for line in (output / "samples.jsonl").open()]
            reference = reference or completions
            greedy, pass1 = result["modes"]["greedy"], result["pass@1"]
            same = sum(a == b for a, b in zip(completions, reference))
            standard_error = (pass1 * (1 - pass1) / len(completions)) ** 0.5
            description = BACKENDS[name][0].replace("--round-tokens", str(args.round_tokens))
            print(
                f"| {description} | {greedy['generate_s']:.1f} | {greedy['generate_tokens_per_s']:,.0f} | "
                f"{pass1:.3f} ± {standard_error:.3f} | {same}/{len(completions)} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
