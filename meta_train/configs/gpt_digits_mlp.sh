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
source meta_train/configs/gpt_env.sh

source meta_train/configs/gpt_digits_datasets.sh
shipped_datasets

"$PYTHON" -m meta_train.gpt.train --flagfile=meta_train/configs/gpt_digits_mlp.flags
"$PYTHON" -m meta_train.gpt.evaluate --weights=lopt/weights/gpt_digits_mlp --save_settings \
  --out=lopt/weights/gpt_digits_mlp/eval
