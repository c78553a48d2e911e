#!/usr/bin/env bash
# G.pt digits model v6 (issue 19, part 2: a model that holds up on wider inits and on its
# own samples), in one resumable command:
#
#   bash meta_train/configs/gpt_digits_mlp_v6.sh
#
# 1. The shipped model's six datasets (as gpt_digits_mlp.sh; finished shards are skipped).
# 2. Two datasets with inits spanning 0.25x-4x (the protocol's out-of-distribution scales):
#    1,024 runs of 1,000 steps and 1,024 of 100 steps.
# 3. Two datasets whose runs start from one sample of the v5 model (the one shipped until
#    v6; pinned by its git commit and extracted to runs/gpt_digits_mlp_v5_model, so the
#    datasets' recorded digest never changes), inits 0.25x-4x: pairs that start where the
#    model's own outputs land, so repeated prompting can improve.
# 4. Training (meta_train/configs/gpt_digits_mlp_v6.flags; stops after 45 min, rerun resumes).
# Not shipped by this script: whether v6 replaces the shipped model is decided by a rule
# written in docs/gpt.md before v6's first evaluation.
# PYTHON overrides the interpreter; NICE=1 runs at the lowest CPU priority.
set -euo pipefail
cd "$(dirname "$0")/../.."
source meta_train/configs/gpt_env.sh
V5_COMMIT=4bfa380   # last commit of lopt/weights/gpt_digits_mlp before v6
V5=runs/gpt_digits_mlp_v5_model

source meta_train/configs/gpt_digits_datasets.sh
WIDE=(--init_scale_min=0.25 --init_scale_max=4)

shipped_datasets
dataset gpt_digits_data_wide 1024 1000 6 "${WIDE[@]}"
dataset gpt_digits_data_wide_early 1024 100 7 "${WIDE[@]}"
if [ ! -e "$V5/manifest.json" ]; then
  mkdir -p "$V5.tmp"
  git archive "$V5_COMMIT" lopt/weights/gpt_digits_mlp | tar -x -C "$V5.tmp"
  mv "$V5.tmp/lopt/weights/gpt_digits_mlp" "$V5" && rm -rf "$V5.tmp"
fi
dataset gpt_digits_data_self 1024 1000 8 "${WIDE[@]}" --start_from="$V5"
dataset gpt_digits_data_self_early 1024 100 9 "${WIDE[@]}" --start_from="$V5"

$PY_PREFIX "$PYTHON" -m meta_train.gpt.train --flagfile=meta_train/configs/gpt_digits_mlp_v6.flags
