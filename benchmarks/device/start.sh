# after setup.sh (see pack.sh): the study in the background on a local Ray, $1 of a GPU per run, the rest of
# the arguments as config overrides; poll.sh follows it
set -e
[ -d /tmp/ft ] || { echo "no set-up on this machine (released between calls): setup.sh again"; exit 1; }
rm -rf /tmp/ft/src /tmp/ft/examples /tmp/ft/benchmarks && cp -r src examples benchmarks /tmp/ft/   # this call's code
cd /tmp/ft
export PYTHONPATH=/tmp/site:/tmp/ft/src FTCOMPARE_CACHE=/tmp/ftcache NCCL_NVLS_ENABLE=0
gpus_per_run=$1; shift
nohup setsid bash -c "start=\$(date +%s); python3 -m ftcompare.cli run /tmp/ft/examples/smollm2-mbpp.yaml $* --output /tmp/runs --executor ray --gpus-per-run $gpus_per_run; echo \"STUDY EXITED rc=\$? wall=\$((\$(date +%s)-start))\"" > /tmp/study.log 2>&1 < /dev/null &
sleep 5; tail -3 /tmp/study.log
