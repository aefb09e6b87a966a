"""What the sandbox costs per program: wall ms per run of a trivial program, bubblewrap vs the fallback.

    python benchmarks/sandbox_cost.py --runs 40 [--before /tmp/sandbox_before.py]

For each isolation (bubblewrap where `bwrap` is installed, the fallback always) this runs the same trivial
MBPP-shaped program (a function, the tests marker, three plain-data asserts) `--runs` times one after
another and `--runs` times through `run_programs` with 2 workers, in this process, and prints the median
and mean wall ms per program. `--before FILE` adds the same measurement for another sandbox module (for
instance the one before bubblewrap: `git show HEAD~N:src/ftcompare/evaluate/sandbox.py > FILE`). Not a test.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time
import warnings

from ftcompare.evaluate import sandbox

PROGRAM = (
    "def add(a, b):\n    return a + b\n\n\n" + sandbox.TESTS_MARKER + "\n\n"
    "assert add(1, 2) == 3\nassert add(0, 0) == 0\nassert add(-1, 1) == 0\n"
)


def measure(module, runs: int) -> dict[str, float]:
    """Median and mean wall ms per program, run one at a time, and the mean with run_programs(workers=2)."""
    sequential = []
    for _ in range(runs):
        started = time.perf_counter()
        result = module.run_program(PROGRAM, timeout_s=10.0, memory_mb=512)
        sequential.append((time.perf_counter() - started) * 1000)
        assert result.passed, result.exception
    started = time.perf_counter()
    results = module.run_programs([PROGRAM] * runs, timeout_s=10.0, memory_mb=512, workers=2)
    parallel_ms = (time.perf_counter() - started) * 1000 / runs
    assert all(result.passed for result in results)
    return {"median": statistics.median(sequential), "mean": statistics.fmean(sequential), "workers2": parallel_ms}


def load_module(path: str):
    spec = importlib.util.spec_from_file_location("sandbox_before", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--before", help="another sandbox module to measure the same way")
    args = parser.parse_args()
    rows = []
    if args.before:
        rows.append(("before (file)", measure(load_module(args.before), args.runs)))
    for mode in ("bubblewrap", "fallback"):
        if mode == "bubblewrap" and sandbox._bubblewrap_problem() is not None:
            print(f"bubblewrap: skipped ({sandbox._bubblewrap_problem()})")
            continue
        os.environ[sandbox.ISOLATION_ENV] = mode
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", sandbox.SandboxWarning)
            rows.append((mode, measure(sandbox, args.runs)))
    print(f"{'isolation':<16}{'median ms':>10}{'mean ms':>10}{'ms/program, 2 workers':>24}")
    for name, row in rows:
        print(f"{name:<16}{row['median']:>10.1f}{row['mean']:>10.1f}{row['workers2']:>24.1f}")


if __name__ == "__main__":
    main()
