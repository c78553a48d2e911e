#!/usr/bin/env bash
# CartPole G.pt v2 (issue 19, part 3) and its comparison with the shipped v1, in one
# resumable command:
#
#   bash meta_train/configs/gpt_cartpole_v2.sh
#
# 1. The shipped model's dataset (as gpt_cartpole.sh) and runs/gpt_cartpole_data2: 768 more
#    runs (seed 1) at learning rates whose runs cross the 50 .. 480 return band.
# 2. Training (gpt_cartpole_v2.flags; stops after 45 min, rerun resumes), exported to
#    runs/gpt_cartpole_v2/export.
# 3. v2's own settings on validation inits (written once, dated), then the validation-split
#    reports of v1 (its shipped settings file) and v2: the rule in docs/gpt.md
#    ("CartPole v2") reads these two reports; no test id is drawn here.
# PYTHON overrides the interpreter; NICE=1 runs at the lowest CPU priority.
set -euo pipefail
cd "$(dirname "$0")/../.."
source meta_train/configs/gpt_env.sh
TASK='{"hidden": [8], "horizon": 500, "batch_size": 8, "eval_batch_size": 32}'
V2=runs/gpt_cartpole_v2

$PY_PREFIX "$PYTHON" -m meta_train.gpt.dataset --task=cartpole --task_config="$TASK" \
  --runs=384 --runs_per_shard=32 --checkpoints_per_run=21 --steps_per_run=100 \
  --optimizers=adam,rmsprop --seed=0 --out=runs/gpt_cartpole_data
$PY_PREFIX "$PYTHON" -m meta_train.gpt.dataset --task=cartpole --task_config="$TASK" \
  --runs=768 --runs_per_shard=32 --checkpoints_per_run=21 --steps_per_run=100 \
  --optimizers=adam,rmsprop --lr_ranges=adam:5e-4:8e-3,rmsprop:3e-3:3e-2 --seed=1 \
  --out=runs/gpt_cartpole_data2
$PY_PREFIX "$PYTHON" -m meta_train.gpt.train --flagfile=meta_train/configs/gpt_cartpole_v2.flags
# Time-limited invocations export too: go on only once all 8,000 steps are done.
"$PYTHON" -c "import json,sys; sys.exit(json.load(open('$V2/export/manifest.json'))['extra']['steps'] < 8000)" \
  || { echo "gpt_cartpole_v2: training not finished; rerun to resume"; exit 0; }
if [ ! -e "$V2/settings.json" ]; then
  $PY_PREFIX "$PYTHON" -m meta_train.gpt.protocol_return --validation_only \
    --weights="$V2/export" --settings="$V2/settings.json"
fi
[ -e "$V2/validation_v1/report.json" ] || $PY_PREFIX "$PYTHON" -m meta_train.gpt.protocol_return \
  --settings=docs/results/gpt/cartpole_protocol_settings.json --split=validation \
  --out="$V2/validation_v1"
[ -e "$V2/validation_v2/report.json" ] || $PY_PREFIX "$PYTHON" -m meta_train.gpt.protocol_return \
  --settings="$V2/settings.json" --split=validation --out="$V2/validation_v2"
# 4. The rule chose v2 (validation reports, 2026-12-01: both meet the return target; pooled
#    R^2 0.889 against v1's 0.623). Its settings file moves to docs/results/gpt/, becomes
#    the optimizer's defaults, the test step runs (once), and the weights ship.
S=docs/results/gpt/cartpole_v2_protocol_settings.json
[ -e "$S" ] || cp "$V2/settings.json" "$S"
"$PYTHON" -c "from meta_train.gpt.protocol_return import record_in_manifest as r; r('$S')"
[ -e docs/results/gpt/cartpole_v2_protocol/report.json ] || $PY_PREFIX "$PYTHON" \
  -m meta_train.gpt.protocol_return --settings="$S" --out=docs/results/gpt/cartpole_v2_protocol
rm -rf lopt/weights/gpt_cartpole.tmp && cp -r "$V2/export" lopt/weights/gpt_cartpole.tmp
rm -rf lopt/weights/gpt_cartpole && mv lopt/weights/gpt_cartpole.tmp lopt/weights/gpt_cartpole
