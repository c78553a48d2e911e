"""Mixture plots of layerwise_combo_lopt: a one-hot optimizer is all one direction."""

import jax
import numpy as np
import pytest
from absl import flags

import lopt
import tasks
from benchmarks import mixtures
from lopt._layerwise_combo_lopt import BASE_DIRECTIONS


@pytest.mark.parametrize("direction", ["sgd", "sign", "orth"])
def test_a_one_hot_optimizer_contributes_only_its_direction(direction, tmp_path):
  task = tasks.get("digits_mlp", hidden=(8,), batch_size=16)
  lo = lopt.LayerwiseComboLOpt(directions=(*BASE_DIRECTIONS, "orth"))
  rec = mixtures.record_mixtures(lo, lo.one_hot(direction, 0.05), task, 6, jax.random.key(0))
  assert rec["tensors"] == ["['Dense_0']['bias']", "['Dense_0']['kernel']",
                            "['Dense_1']['bias']", "['Dense_1']['kernel']"]
  c = rec["contribution"]
  assert c.shape == (6, 4, 5) and rec["loss"].shape == (6,)
  assert rec["directions"] == [*BASE_DIRECTIONS, "orth"]
  k = rec["directions"].index(direction)
  assert np.all(c[:, :, k] > 0) and np.all(np.delete(c, k, axis=2) == 0)
  if direction in ("sign", "orth"):   # |lr * 1| * rms(u) = lr: unit-RMS directions
    np.testing.assert_allclose(c[1:, 2, k], 0.05, rtol=1e-5)   # the output bias
  png = mixtures.plot_mixtures({"a": rec, "b": rec}, tmp_path / "m.png")
  assert png.stat().st_size > 1000


def test_cli_refuses_unknown_targets_and_unspecialized_weights(tmp_path):
  lo = lopt.LayerwiseComboLOpt()
  lopt.save_weights(tmp_path / "w", lo, lo.init(jax.random.key(0)))
  assert mixtures._target_names("heldout") == list(tasks.HELD_OUT_TARGETS)
  fv = flags.FlagValues()
  mixtures.define_flags(fv)
  with pytest.raises(flags.Error, match="unknown target.*valid: heldout"):
    fv(["mixtures", "--weights=w", "--targets=rotate45"])
  fv = flags.FlagValues()
  mixtures.define_flags(fv)
  fv(["mixtures", f"--weights={tmp_path / 'w'}", f"--out={tmp_path / 'o'}"])
  with pytest.raises(ValueError, match="is not specialized to a digits backbone"):
    mixtures.run_from_flags(fv)
