# device call 3 (see pack.sh): bitsandbytes, the records to resume from, then the study in the background
# with $1 workers (one GPU: they share it, and each run's metrics say so)
set -e
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .device/c/*.whl
rm -rf /tmp/ft && mkdir -p /tmp/ft /tmp/runs && cp -r src examples benchmarks pyproject.toml /tmp/ft/
if [ ! -d /tmp/runs/smollm2-mbpp ]; then
  tar -xzf .device/r/runs.tgz -C /tmp/runs
  for adapter in .device/r/w-*.tgz; do [ -e "$adapter" ] && tar -xzf "$adapter" -C /tmp/runs/smollm2-mbpp; done
fi
cd /tmp/ft
export PYTHONPATH=/tmp/site:/tmp/ft/src FTCOMPARE_CACHE=/tmp/ftcache
nohup setsid bash -c "start=\$(date +%s); python3 -m ftcompare.cli run examples/smollm2-mbpp.yaml --output /tmp/runs --workers $1; echo \"STUDY EXITED rc=\$? wall=\$((\$(date +%s)-start))\"" > /tmp/study.log 2>&1 < /dev/null &
sleep 5; tail -3 /tmp/study.log
