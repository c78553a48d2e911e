#!/usr/bin/env bash
# Reproduces CartPole G.pt v1 (shipped as lopt/weights/gpt_cartpole until 2026-12-01, when
# gpt_cartpole_v2.sh replaced it; this script now overwrites the shipped weights with v1)
# and its protocol evaluation
# in one command:
#
#   bash meta_train/configs/gpt_cartpole.sh
#
# 1. The checkpoint dataset runs/gpt_cartpole_data: 384 REINFORCE runs of a CartPole-v1
#    tanh policy 4-8-2 (horizon 500, 8 episodes per step), Adam and RMSprop shards in turn,
#    100 steps each, 21 checkpoints, returns on 32 episodes (see docs/gpt.md, "CartPole").
# 2. The training run (meta_train/configs/gpt_cartpole.flags; it stops after 45 minutes
#    and resumes from its last checkpoint when rerun), exported to lopt/weights/gpt_cartpole.
# 3. The protocol: settings chosen on validation inits and written, dated, to
#    docs/results/gpt/cartpole_protocol_settings.json (written once: delete it by hand to
#    choose again, and say so), recorded in the weights' manifest as the optimizer's defaults,
#    then the test figures into docs/results/gpt/cartpole_protocol.
# Every step resumes or is skipped when done. PYTHON overrides the interpreter.
set -euo pipefail
cd "$(dirname "$0")/../.."
source meta_train/configs/gpt_env.sh
SETTINGS=docs/results/gpt/cartpole_protocol_settings.json

"$PYTHON" -m meta_train.gpt.dataset --task=cartpole \
  --task_config='{"hidden": [8], "horizon": 500, "batch_size": 8, "eval_batch_size": 32}' \
  --runs=384 --runs_per_shard=32 --checkpoints_per_run=21 --steps_per_run=100 \
  --optimizers=adam,rmsprop --seed=0 --out=runs/gpt_cartpole_data
"$PYTHON" -m meta_train.gpt.train --flagfile=meta_train/configs/gpt_cartpole.flags
if [ ! -e "$SETTINGS" ]; then
  "$PYTHON" -m meta_train.gpt.protocol_return --validation_only \
    --weights=lopt/weights/gpt_cartpole --settings="$SETTINGS"
fi
# The chosen settings become the optimizer's defaults (manifest extra; not in the digest).
"$PYTHON" -c "from meta_train.gpt.protocol_return import record_in_manifest as r; r('$SETTINGS')"
"$PYTHON" -m meta_train.gpt.protocol_return --settings="$SETTINGS" \
  --out=docs/results/gpt/cartpole_protocol
