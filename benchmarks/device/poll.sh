# device call 4, 5, … (see pack.sh): wait up to $1 s for the study to end, then bring back its records,
# its log and the small adapters (so that a machine lost between calls costs no evaluation)
# a machine released between calls comes back bare: say so at once instead of waiting out the poll
[ -e /tmp/study.log ] || { echo "no study on this machine (released between calls): setup1, setup2, start again"; exit 1; }
end=$(( $(date +%s) + $1 ))
while [ "$(date +%s)" -lt "$end" ] && ! grep -q "STUDY EXITED" /tmp/study.log; do sleep 5; done
cd /tmp/runs/smollm2-mbpp
tar -czf "$OUT/runs.tgz" -C /tmp/runs --exclude=weights --exclude=svd --exclude=.claim smollm2-mbpp
for weights in */weights/adapter_model.safetensors; do
  [ -e "$weights" ] && [ "$(stat -c %s "$weights")" -lt 15000000 ] && tar -czf "$OUT/w-${weights%%/*}.tgz" "${weights%/*}"
done
cp /tmp/study.log "$OUT/"
grep -v "Loading weights\|Converting" /tmp/study.log | tail -c 2500
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv
