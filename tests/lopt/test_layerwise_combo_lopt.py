"""Tests of layerwise_combo_lopt: one-hot references against optax, init, per-layer bias.

The optimizer contract runs for every registered optimizer in test_contract.py and
the learned-optimizer contract (meta-gradients, donation, weights, non-finite
gradients) in test_learned.py; here are the checks specific to this optimizer.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lopt._layerwise_combo_lopt import BASE_DIRECTIONS, LayerwiseComboLOpt
from tests.lopt.contract import make_params, quad_loss
from tests.lopt.lo_checks import check_scan_under_shard_map

LR = 0.05
REFERENCES = {
    "sgd": lambda: optax.sgd(LR),
    "momentum": lambda: optax.sgd(LR, momentum=0.9),
    "adam": lambda: optax.adam(LR),
    "sign": lambda: optax.chain(optax.trace(decay=0.9), optax.scale_by_sign(), optax.scale(-LR)),
}


def _apply(opt, params, state):
  loss, g = jax.value_and_grad(quad_loss)(params)
  u, state = opt.update(g, state, params, loss=loss)
  return optax.apply_updates(params, u), state


def test_one_hot_reproduces_base_optimizers():
  """One-hot weights match optax over 5 steps: |params - ref| <= 1e-6 + 1e-5 |ref|."""
  lo = LayerwiseComboLOpt()
  assert set(REFERENCES) == set(BASE_DIRECTIONS)

  @jax.jit
  def step(mp, params, state):
    loss, g = jax.value_and_grad(quad_loss)(params)
    u, state = lo.transform(mp, 100).update(g, state, params, loss=loss)
    return optax.apply_updates(params, u), state

  for name, make_ref in REFERENCES.items():
    mp, ref = lo.one_hot(name, LR), make_ref()
    params = ref_params = make_params()
    state, ref_state = lo.transform(mp, 100).init(params), ref.init(ref_params)
    ref_step = jax.jit(lambda p, s: _apply(ref, p, s))
    for _ in range(5):
      params, state = step(mp, params, state)
      ref_params, ref_state = ref_step(ref_params, ref_state)
      for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=name)


def test_init_is_adam():
  lo = LayerwiseComboLOpt()
  mp = lo.init(jax.random.key(3))
  ref = lo.one_hot("adam", 1e-3)
  for a, b in zip(jax.tree.leaves(mp["bias"]), jax.tree.leaves(ref["bias"])):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_allclose(mp["log_lr"], np.log(1e-3))
  assert all(float(jnp.abs(x).max()) == 0.0 for x in jax.tree.leaves(mp["net"][-1]))


def test_num_layers_bias_and_mismatch():
  params = make_params()
  lo = LayerwiseComboLOpt(num_layers=len(jax.tree.leaves(params)))
  assert lo.init(jax.random.key(0))["layer_bias"].shape == (6, 4)
  bad = LayerwiseComboLOpt(num_layers=3)
  opt = bad.transform(bad.init(jax.random.key(0)), 10)
  with pytest.raises(ValueError, match="num_layers=3"):
    opt.update(params, opt.init(params), params, loss=1.0)


def test_scan_under_shard_map():
  """Regression: the loss statistics in the state keep their varying type under shard_map."""
  lo = LayerwiseComboLOpt()
  check_scan_under_shard_map(lo, lo.init(jax.random.key(0)))


def test_credited_to_the_narrowing_the_focus_authors():
  """docs/concepts.md names the paper's authors (Kristiansen et al. 2024), as the module does."""
  import pathlib

  import lopt._layerwise_combo_lopt as module

  docs = pathlib.Path(__file__).resolve().parents[2] / "docs" / "concepts.md"
  row = next(line for line in docs.read_text().splitlines()
             if line.startswith("| `layerwise_combo_lopt`"))
  assert "Kristiansen et al. 2024" in row and "Narrowing the Focus" in row, row
  assert "2408.09310" in module.__doc__
