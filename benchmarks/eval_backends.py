"""Generation backends on a real benchmark, through the same `ftcompare eval` path a study uses, as a table.

    python benchmarks/eval_backends.py smollm2-135m-instruct --data ../shared/data/mbpp.jsonl --limit 256

Each backend scores the same problems greedily (chat template); `rounds` is the default backend with
`evaluation.round_tokens` (finished answers leave the batch every `--round-tokens` tokens). Columns: seconds spent generating,
useful tokens/s (tokens up to EOS, summed over samples, per second of generation), pass@1, and how many
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
    "dynamic": ("generate, dynamic cache (HF default)", dict(backend="generate", cache="dynamic", compile=False)),
    "static-compile": ("generate, static cache + torch.compile", dict(backend="generate", cache="static", compile=True)),
    "rounds": ("generate, dynamic cache, in rounds of --round-tokens", dict(backend="generate")),
    "continuous": ("continuous batching (generate_batch)", dict(backend="continuous")),
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

    rows, reference = [], None
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.backends.split(","):
            evaluation = EvaluationConfig(
                n_samples=0,
                k=[1],
                max_new_tokens=args.max_new_tokens,
                batch_size=args.batch_size,
                limit=args.limit,
                forgetting=None,
                latency=None,
                **BACKENDS[name][1],
                **({"round_tokens": args.round_tokens} if name == "rounds" else {}),
            )
            output = Path(scratch) / name
            result = evaluate_benchmark(
                args.model, args.benchmark, output, data=args.data, prompt_format="chat", evaluation=evaluation
            )
            completions = [json.loads(line)["completion"] for line in (output / "samples.jsonl").open()]
            reference = reference or completions
            greedy = result["modes"]["greedy"]
            same = sum(a == b for a, b in zip(completions, reference))
            rows.append(
                (
                    BACKENDS[name][0].replace("--round-tokens", str(args.round_tokens)),
                    greedy["generate_s"],
                    greedy["generate_tokens_per_s"],
                    result["pass@1"],
                    same,
                    len(completions),
                )
            )
    print(
        f"{args.model} on {args.benchmark}: {args.limit} problems, greedy, ≤{args.max_new_tokens} new tokens, "
        f"batch {args.batch_size} (generate backends)"
    )
    print("| backend | generating (s) | useful tokens/s | pass@1 | completions identical to the first row |")
    print("|---|---:|---:|---:|---:|")
    for name, seconds, tokens_per_s, pass1, same, total in rows:
        print(f"| {name} | {seconds:.1f} | {tokens_per_s:,.0f} | {pass1:.3f} | {same}/{total} |")


if __name__ == "__main__":
    main()
