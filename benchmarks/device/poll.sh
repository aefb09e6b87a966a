# after start.sh (see pack.sh): wait up to $1 s for the study to end, bringing back its records (no weights; `cat runs.tgz.* | tar -xz`)
# and its log. They are written to $OUT every minute as well, since a call stopped by its time limit returns what
# $OUT holds at that moment.
# a machine released between calls comes back bare: say so at once instead of waiting out the poll
[ -e /tmp/study.log ] || { echo "no study on this machine (released between calls): setup.sh again"; exit 1; }
snapshot() {  # in parts of 15 MiB (what comes back: 8 files of 16 MiB at most), swapped in whole
  rm -rf /tmp/snap && mkdir /tmp/snap
  tar -czf - -C /tmp/runs --exclude=weights --exclude=svd --exclude=svd-nf4 --exclude=.claim . | split -b 15m -d - /tmp/snap/runs.tgz.
  rm -f "$OUT"/runs.tgz.* && mv /tmp/snap/* "$OUT/"
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
