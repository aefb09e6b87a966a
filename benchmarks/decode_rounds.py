"""How much decoding work rounds save, counted from a run's recorded answer lengths (no model, no GPU).

    python benchmarks/decode_rounds.py RUN_DIR/samples.jsonl --suite test --mode greedy --budget 384 --batch 256

Batched `generate` decodes each batch until its longest answer ends (or the budget), so every sequence
slot of the batch costs a step until then. With `evaluation.round_tokens: R`, a batch decodes in rounds
of R tokens, and after each round its finished rows leave the batch and the KV cache. From the
`new_tokens` of each recorded sample this prints, per round size, the sequence-steps decoded (batch
slots × steps, the work a memory-bound decoder pays for), the share of them that are useful tokens,
and the number of `generate` calls. Measured speed: `benchmarks/eval_backends.py`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def decode_work(lengths: list[int], budget: int, batch: int, round_tokens: int | None) -> tuple[int, int]:
    """(sequence-steps, generate calls) to decode answers of these lengths, `batch` sequences per batch in
    recorded order (the records do not hold the prompts' lengths), in rounds of `round_tokens` (None: one
    round): after each round a batch keeps only its unfinished rows."""
    round_tokens = round_tokens or budget
    slots = calls = 0
    for start in range(0, len(lengths), batch):
        live, done = lengths[start : start + batch], 0
        while live:
            steps = min(round_tokens, budget - done, max(live) - done)  # generate stops once every row has ended
            slots += len(live) * steps
            calls += 1
            done += steps
            live = [length for length in live if length > done and done < budget]
    return slots, calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("samples", type=Path)
    parser.add_argument("--suite", default="test")
    parser.add_argument("--mode", default="greedy")
    parser.add_argument("--budget", type=int, default=384)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rounds", default="32,64,96,128")
    args = parser.parse_args()
    records = [json.loads(line) for line in args.samples.open()]
    lengths = [r["new_tokens"] for r in records if r["suite"] == args.suite and r["mode"] == args.mode]
    if not lengths:
        raise SystemExit(f"no {args.mode} samples of suite {args.suite!r} in {args.samples}")
    useful = sum(lengths)
    print(
        f"{len(lengths)} answers, {useful:,} tokens, {sum(n >= args.budget for n in lengths)} at the {args.budget}-token "
        f"budget; batch {args.batch}"
    )
    print("| decoding | sequence-steps | useful share | generate calls |")
    print("|---|---:|---:|---:|")
    for round_tokens in [None] + [int(r) for r in args.rounds.split(",")]:
        slots, calls = decode_work(lengths, args.budget, args.batch, round_tokens)
        name = f"rounds of {round_tokens}" if round_tokens else "one round (each batch until its longest answer)"
        print(f"| {name} | {slots:,} | {useful / slots:.0%} | {calls} |")


if __name__ == "__main__":
    main()
