"""Meta-gradient signal-to-noise (benchmarks.meta_snr): the statistics, the wiring, flags."""

import dataclasses

import jax
import numpy as np
import pytest
from absl import flags

from benchmarks import meta_snr
from tests.meta_train.test_trainer import quad_family, small_config
from tests.meta_train.tiny_lopt import TinyLOpt


def test_snr_stats_recover_a_known_signal_to_noise_ratio():
  rng = np.random.default_rng(0)
  d, n = 50, 400
  s = meta_snr.snr_stats(0.5 + rng.normal(size=(n, d)))   # ||m||^2 = 12.5, tr Cov = 50
  assert s["n"] == n and s["snr_per_task"] == pytest.approx(0.25, abs=0.05)
  assert s["tasks_for_snr_1"] == pytest.approx(4.0, rel=0.25) and s["cos_halves"] > 0.8
  noise = meta_snr.snr_stats(rng.normal(size=(n, d)))
  assert abs(noise["snr_per_task"]) < 0.02 and abs(noise["cos_halves"]) < 0.2
  bad = rng.normal(size=(6, d))
  bad[0, 3] = np.nan
  assert meta_snr.snr_stats(bad)["n"] == 5   # a non-finite estimate is dropped
  with pytest.raises(ValueError, match="at least 4 finite"):
    meta_snr.snr_stats(bad[:4])


def test_gradient_snr_measures_every_group_and_truncation():
  cfg = small_config("pes", num_configs=2)
  lo = TinyLOpt()
  rep = meta_snr.gradient_snr(cfg, lo.init(jax.random.key(0)), lo=lo, family=quad_family(),
                              groups=2, truncations=2, own_num_tasks=4, log=lambda m: None)
  assert [(r["group"], r["truncation"]) for r in rep["records"]] == [(0, 0), (0, 1), (1, 0),
                                                                      (1, 1)]
  assert all(r["n"] == cfg.num_tasks and np.isfinite(r["snr_per_task"])
             for r in rep["records"])
  s = rep["summary"]
  assert s["own_num_tasks"] == 4 and s["snr_at_num_tasks"] == pytest.approx(
      4 * s["snr_per_task"])
  assert rep["num_meta_params"] == 2
  # With trainable= only the trained meta-params are measured.
  one = meta_snr.gradient_snr(dataclasses.replace(cfg, trainable="log_lr"),
                              lo.init(jax.random.key(0)), lo=lo, family=quad_family(),
                              groups=1, truncations=1, log=lambda m: None)
  assert one["num_meta_params"] == 1
  with pytest.raises(ValueError, match="more than the config's num_configs=2"):
    meta_snr.gradient_snr(cfg, lo.init(jax.random.key(0)), lo=lo, family=quad_family(),
                          groups=3)


@pytest.mark.parametrize("args, expected", [
    (["--config=nope.flags"], "'nope.flags' is not a file"),
    (["--config=meta_train/configs/mlp_lopt_broad.flags", "--weights=nope"],
     "neither 'init' nor a weights directory"),
    (["--config=meta_train/configs/mlp_lopt_broad.flags", "--num_tasks=2"], "num_tasks=2"),
    (["--config=meta_train/configs/mlp_lopt_broad.flags", "--estimator=sgd"],
     "should be one of <es|pes|tbptt>"),
])
def test_bad_flags_stop_at_parsing(args, expected, monkeypatch):
  monkeypatch.chdir(meta_snr.pathlib.Path(meta_snr.__file__).resolve().parents[1])
  fv = flags.FlagValues()
  meta_snr.define_flags(fv)
  with pytest.raises(flags.IllegalFlagValueError, match=expected):
    fv(["prog", *args])
