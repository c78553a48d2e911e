#!/usr/bin/env bash
# One short accelerator check, run from the repository root on a GPU/TPU machine
# that has jax, flax, optax, orbax-checkpoint, absl-py and scikit-learn installed:
#   OUT=bench_out/device bash benchmarks/device_check.sh
# 1. the multi-device meta-training path on fake CPU devices (4 == 1 device),
# 2. the sharded PES meta-training CLI on the accelerator for a few outer steps,
# 3. per-update time of every optimizer vs Adam and the matmul peak, on the accelerator,
# 4. PES meta-training throughput on the accelerator.
set -u
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONPATH="$PWD"
OUT=${OUT:-bench_out/device}
mkdir -p "$OUT"
PY=${PY:-python3}
{
  nvidia-smi -L 2>/dev/null
  $PY -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())"
  echo "== 1. multi-device meta-gradient on 4 fake CPU devices"
  timeout 150 $PY -m pytest -q -p no:cacheprovider tests/meta_train/test_trainer.py -k four_devices
  echo "== 2. sharded PES meta-training on the accelerator"
  timeout 150 $PY -m meta_train.main --lopt=mlp_lopt --task_family=digits_mlp --estimator=pes \
    --num_tasks=64 --trunc_length=20 --outer_steps=30 --log_every=10 --checkpoint_every=30 \
    --plot=false --workdir=/tmp/device_meta
  echo "== 3. update speed vs Adam and matmul peak"
  timeout 200 $PY -m benchmarks.speed --rounds=2 --repeats=5 --peak_sizes=4096,8192 \
    --reference_max_size=1e7 --out="$OUT/speed"
  echo "== 4. PES throughput"
  timeout 120 $PY -m benchmarks.meta --repeats=3 --json_out="$OUT/meta.json"
} 2>&1 | grep -v "^[IW]1[0-9]" | tee "$OUT/log.txt"
