"""Wall time of a study on one GPU and through Ray on several: the local executor (runs one after another in
one process, the plain path) against `--executor ray` on 1 and on N GPUs, same config, fresh folders.

    python benchmarks/ray_gpus.py examples/smollm2-mbpp.yaml --gpus 2 --output /tmp/raybench -- \
        'methods=[{kind: full, lr: 1.0e-5}, {kind: lora, rank: 16, alpha_lr_product: 2.4e-3}]' \
        training.lr_multipliers=[1] training.select_lr_on=null seeds=[0]

Each path runs `ftcompare run` in its own process (a cold start, as a user would: Ray's start-up, the model's
load and the CUDA graphs' capture are inside the time), on the GPUs that CUDA_VISIBLE_DEVICES gives it. The
base's evaluation comes first on every path (the barrier), so two runs on two GPUs cannot halve the whole.
Prints one table; each path's records stay under --output/<path> (stage times in each run's metrics.json).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def timed_run(config: str, overrides: list[str], output: Path, gpus: int, executor_args: list[str]) -> dict:
    environment = {**os.environ, "CUDA_VISIBLE_DEVICES": ",".join(str(gpu) for gpu in range(gpus)), "NCCL_NVLS_ENABLE": "0"}
    command = [sys.executable, "-m", "ftcompare.cli", "run", config, *overrides, "--output", str(output), *executor_args]
    started = time.perf_counter()
    finished = subprocess.run(command, env=environment, capture_output=True, text=True)
    wall_s = time.perf_counter() - started
    if finished.returncode:
        print(finished.stdout[-3000:], finished.stderr[-3000:], sep="\n", file=sys.stderr)
        raise SystemExit(f"{' '.join(command)} failed with exit code {finished.returncode}")
    return {"wall_s": wall_s, "runs": run_stage_times(output)}


def run_stage_times(output: Path) -> dict[str, dict]:
    """Each finished run's stage times (train, evaluate, spectral …) from its metrics.json."""
    return {
        path.parent.name: json.loads(path.read_text()).get("stage_s", {})
        for path in sorted(output.glob("*/*/metrics.json"))
        if path.parent.name != "_base"
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*", help="config overrides (after --)")
    parser.add_argument("--gpus", type=int, default=2, help="GPUs of the multi-GPU path")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    paths = [
        ("local, 1 GPU", 1, ["--executor", "local"]),
        ("ray, 1 GPU", 1, ["--executor", "ray"]),
        (f"ray, {args.gpus} GPUs", args.gpus, ["--executor", "ray"]),
    ]
    results = []
    for name, gpus, executor_args in paths:
        folder = args.output / name.replace(", ", "-").replace(" ", "")
        result = timed_run(args.config, args.overrides, folder, gpus, executor_args)
        results.append((name, gpus, result))
        print(f"{name}: {result['wall_s']:.1f} s", flush=True)
    plain = results[0][2]["wall_s"]
    print("\n| path | GPUs | runs | wall s | speed-up vs local |\n|---|---:|---:|---:|---:|")
    for name, gpus, result in results:
        print(f"| {name} | {gpus} | {len(result['runs'])} | {result['wall_s']:.1f} | {plain / result['wall_s']:.2f}× |")
    print("\nstage seconds per run (train / evaluate / spectral):")
    for name, _, result in results:
        stages = ", ".join(
            f"{run} {s.get('train', 0):.0f}/{s.get('evaluate', 0):.0f}/{s.get('spectral') or 0:.0f}"
            for run, s in result["runs"].items()
        )
        print(f"  {name}: {stages}")
    (args.output / "ray_gpus.json").write_text(json.dumps([{"path": n, "gpus": g, **r} for n, g, r in results], indent=1))


if __name__ == "__main__":
    main()
