# Sourced (from the repository root, after gpt_env.sh) by gpt_digits_mlp.sh and
# gpt_digits_mlp_v6.sh, which set PYTHON and PY_PREFIX there. `dataset` builds or finishes
# one digits_mlp checkpoint dataset under runs/ (finished shards are skipped);
# `shipped_datasets` the six the shipped G.pt model was trained on.

dataset() {  # out runs steps_per_run seed [extra flags]
  local out=$1 runs=$2 steps=$3 seed=$4
  shift 4
  ${PY_PREFIX:-} "$PYTHON" -m meta_train.gpt.dataset --task=digits_mlp --runs="$runs" \
    --runs_per_shard=32 --checkpoints_per_run=21 --steps_per_run="$steps" --seed="$seed" \
    --out="runs/$out" "$@"
}

shipped_datasets() {
  dataset gpt_digits_data 512 1000 0
  dataset gpt_digits_data_early 512 100 1
  dataset gpt_digits_data2 1024 1000 2
  dataset gpt_digits_data_early2 1024 100 3
  dataset gpt_digits_data3 2048 1000 4
  dataset gpt_digits_data_early3 2048 100 5
}
