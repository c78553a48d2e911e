#!/usr/bin/env bash
# Reproduces the shipped G.pt model lopt/weights/gpt_digits_mlp in one command:
#
#   bash meta_train/configs/gpt_digits_mlp.sh
#
# Six checkpoint datasets (runs/gpt_digits_data*, about 19 min on one core, 1.5 GB),
# the training run (meta_train/configs/gpt_digits_mlp.flags, about 70 min on one core)
# and its evaluation, which also records the sampling temperature, target and guidance
# in the manifest (about 12 min). Every step resumes: datasets skip finished shards and the
# training continues from its last checkpoint, so rerun the same command after an
# interruption. PYTHON overrides the interpreter (default: the project's .venv).
#
# XLA runs on one thread, as in the documented timings (set XLA_FLAGS to override); the
# datasets and the training are deterministic given their seeds on one machine.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON="${PYTHON:-.venv/bin/python}"
export XLA_FLAGS="${XLA_FLAGS:---xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1}"

dataset() {  # out runs steps_per_run seed [extra flags]
  local out=$1 runs=$2 steps=$3 seed=$4
  shift 4
  "$PYTHON" -m meta_train.gpt.dataset --task=digits_mlp --runs="$runs" --runs_per_shard=32 \
    --checkpoints_per_run=21 --steps_per_run="$steps" --seed="$seed" --out="runs/$out" "$@"
}

dataset gpt_digits_data 512 1000 0
dataset gpt_digits_data_early 512 100 1
dataset gpt_digits_data2 1024 1000 2
dataset gpt_digits_data_early2 1024 100 3
dataset gpt_digits_data3 2048 1000 4
dataset gpt_digits_data_early3 2048 100 5

"$PYTHON" -m meta_train.gpt.train --flagfile=meta_train/configs/gpt_digits_mlp.flags
"$PYTHON" -m meta_train.gpt.evaluate --weights=lopt/weights/gpt_digits_mlp --save_settings \
  --out=lopt/weights/gpt_digits_mlp/eval
