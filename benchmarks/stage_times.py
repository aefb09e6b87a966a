"""Time per stage and throughput of every run of an experiment folder, as a table.

    ftcompare run examples/quickstart.yaml --output runs   # on the machine to measure
    python benchmarks/stage_times.py runs/quickstart

Reads only the run records (metrics.json with its stage timings, the base's provenance), so it can be
run again on a copied folder.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ftcompare.report.tables import STAGES
from ftcompare.runs.store import read_json, run_dirs


def main(experiment: Path) -> None:
    study = read_json(experiment / "study.json")
    provenance = study["base"].get("provenance", {})
    print(f"device: {study['device']} ({study['environment'].get('cuda') or 'cpu'}), torch {study['environment']['torch']}")
    if "wall_s" in provenance:
        print(
            f"base pre-training: {provenance['wall_s']:.0f} s, {provenance['pretrain_tokens_per_s']:,.0f} tokens/s, "
            f"{provenance['parameters']:,} parameters, held-out loss {provenance['heldout_loss']:.3f}"
        )
    base_eval = read_json(experiment / "_base" / "eval.json")
    print(f"base evaluation: {base_eval['wall_s']:.1f} s")
    stages = STAGES
    header = ("run", *(f"{stage} s" for stage in stages), "train tok/s", "peak MB", "gen tok/s merged", "gen tok/s unmerged")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for run in run_dirs(experiment):
        if not run.has("metrics.json"):
            continue
        metrics = read_json(run.file("metrics.json"))
        latency = metrics.get("latency") or {}
        # a run not kept by learning-rate selection was trained and scored on the selection suite only
        stage_s = metrics.get("stage_s") or {"train": metrics["train"]["wall_s"]}
        timings = (f"{stage_s[stage]:.1f}" if stage_s.get(stage) is not None else "–" for stage in stages)
        unmerged = latency.get("unmerged_tokens_per_s")
        merged = latency.get("merged_tokens_per_s")
        cells = (
            run.run_id,
            *timings,
            f"{metrics['train']['tokens_per_s']:,.0f}",
            f"{metrics['train']['peak_memory_mb']:,.0f}",
            f"{merged:,.0f}" if merged else "–",
            f"{unmerged:,.0f}" if unmerged else "–",
        )
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
