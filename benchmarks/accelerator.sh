#!/usr/bin/env bash
# The accelerator rows of RESULTS.md in one command (272 s on one H200, 2026-12-04):
#
#   bash benchmarks/accelerator.sh WORKDIR [OUT_DIR]
#
# WORKDIR: any trained workdir with both stages (e.g. runs/quickstart of the README's quickstart).
# Writes OUT_DIR/{sampling,throughput_float32,throughput_bfloat16}.json and .log. The same scripts
# run on CPU, so the rows compare with the CPU tables. Each training setting runs in its own
# process, so the device's peak bytes in use belong to that setting alone.
set -uo pipefail
workdir=${1:?usage: bash benchmarks/accelerator.sh WORKDIR [OUT_DIR]}
out=${2:-.}
py=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
status=0
"$py" -c 'import jax; print("#", jax.__version__, jax.devices())' || exit 1
timeout "${SAMPLING_TIMEOUT:-300}" "$py" benchmarks/sampling.py --workdir="$workdir" \
    --json="$out/sampling.json" 2>&1 | grep -v '^[IW][0-9]' | tee "$out/sampling.log" || status=1
for dtype in float32 bfloat16; do
  timeout "${THROUGHPUT_TIMEOUT:-150}" "$py" benchmarks/throughput.py --config=configs/celeba.py \
      --batch_sizes=64 --dtypes="$dtype" --json="$out/throughput_$dtype.json" 2>&1 \
      | grep -v '^[IW][0-9]' | tee "$out/throughput_$dtype.log" || status=1
done
exit $status
