# device call 4, 5, … (see pack.sh): wait up to $1 s for the study to end, bringing back its records, its log
# and the small adapters (so that a machine lost between calls costs no evaluation). They are written to $OUT
# every minute as well, since a call stopped by its time limit returns what $OUT holds at that moment.
# a machine released between calls comes back bare: say so at once instead of waiting out the poll
[ -e /tmp/study.log ] || { echo "no study on this machine (released between calls): setup1, setup2, start again"; exit 1; }
snapshot() {
  tar -czf "$OUT/runs.tgz.part" -C /tmp/runs --exclude=weights --exclude=svd --exclude=svd-nf4 --exclude=.claim smollm2-mbpp && mv "$OUT/runs.tgz.part" "$OUT/runs.tgz"
  for weights in /tmp/runs/smollm2-mbpp/*/weights/adapter_model.safetensors; do
    run=${weights#/tmp/runs/smollm2-mbpp/}; run=${run%%/*}
    [ -e "$weights" ] && [ "$(stat -c %s "$weights")" -lt 15000000 ] \
      && tar -czf "$OUT/w-$run.tgz.part" -C /tmp/runs/smollm2-mbpp "$run/weights" && mv "$OUT/w-$run.tgz.part" "$OUT/w-$run.tgz"
  done
  cp /tmp/study.log "$OUT/"
}
end=$(( $(date +%s) + $1 )); next=0
while [ "$(date +%s)" -lt "$end" ] && ! grep -q "STUDY EXITED" /tmp/study.log; do
  [ "$(date +%s)" -ge "$next" ] && { snapshot; next=$(( $(date +%s) + 60 )); }
  sleep 5
done
snapshot
grep -v "Loading weights\|Converting" /tmp/study.log | tail -c 2500
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv
