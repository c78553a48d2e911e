#!/bin/bash
# Held-out suite once for combo_lopt_broad_tbptt's rule-chosen snapshot (step 100), next to its init.
cd /work/main
export XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
.venv/bin/python -m benchmarks.run --tune=adam,momentum --tasks=heldout --seeds=3 \
  --optimizers="layerwise_combo_lopt:runs/combo_lopt_broad_tbptt/snapshots/step_000100(directions=['sgd','momentum','adam','sign','orth'],init_direction='orth',init_lr=0.003,schedule='cosine'),layerwise_combo_lopt:fresh(directions=['sgd','momentum','adam','sign','orth'],init_direction='orth',init_lr=0.003,schedule='cosine'),layerwise_combo_lopt:pretrained" \
  --reuse=docs/results/results.json --out=runs/heldout_combo_tbptt
