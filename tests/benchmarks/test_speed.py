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


def test_speed_and_meta_flags_are_validated():
  import subprocess
  import sys

  import pytest
  from absl import flags

  for arg in ("--repeats=0", "--rounds=0", "--sizes=abc", "--optimizers=adamm"):
    fv = flags.FlagValues()
    speed.define_flags(fv)
    with pytest.raises(flags.IllegalFlagValueError):
      fv(["speed", arg])
  # benchmarks.meta defines its flags on import: check it in a child process.
  out = subprocess.run([sys.executable, "-m", "benchmarks.meta", "--hidden=-3"],
                       capture_output=True, text=True, timeout=120)
  assert out.returncode != 0 and "hidden sizes must be positive" in out.stderr
  assert "Traceback" not in out.stderr
