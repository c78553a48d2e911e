"""Smoke-and-shape test of the speed benchmark on a tiny problem."""

import jax

from benchmarks import speed


def test_speed_run_and_markdown():
  result = speed.run(["mlp_lopt"], [3000], repeats=1, rounds=1, peak_sizes=(64,),
                     log=lambda s: None)
  rows = {r["optimizer"]: r for r in result["rows"]}
  assert set(rows) == {"adam", "mlp_lopt"}
  assert rows["adam"]["vs_adam"] == 1.0 and rows["adam"]["state_bytes_per_param"] >= 8
  mlp = rows["mlp_lopt"]
  assert mlp["mlp_frac_peak"] > 0 and mlp["update_vs_ref_mlp"] > 0
  assert abs(mlp["num_params"] - 3000) < 300
  md = speed.to_markdown(result)
  assert "| mlp_lopt |" in md and "GFLOP/s" in md


def test_mlp_shaped_params_sizes():
  for n in (10 ** 4, 10 ** 5):
    p = jax.eval_shape(lambda n=n: speed.mlp_shaped_params(n, jax.random.key(0)))
    total = sum(x.size for x in jax.tree.leaves(p))
    assert abs(total - n) / n < 0.05
