"""Tests of layerwise_combo_lopt: one-hot references against optax, init, per-layer terms.

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


@pytest.mark.parametrize("specialized", [False, True])
def test_one_hot_reproduces_base_optimizers(specialized):
  """One-hot weights match optax over 5 steps: |params - ref| <= 1e-6 + 1e-5 |ref|.

  ``specialized``: the per-layer mixture bias and step size exist (zero), as after
  :meth:`LayerwiseComboLOpt.for_params`.
  """
  lo = LayerwiseComboLOpt.for_params(make_params()) if specialized else LayerwiseComboLOpt()
  assert set(REFERENCES) == set(BASE_DIRECTIONS)

  @jax.jit
  def step(mp, params, state):
    loss, g = jax.value_and_grad(quad_loss)(params)
    u, state = lo.transform(mp, 100).update(g, state, params, loss=loss)
    return optax.apply_updates(params, u), state

  for name, make_ref in REFERENCES.items():
    mp, ref = lo.one_hot(name, LR), make_ref()
    assert ("layer_log_lr" in mp) == specialized
    params = ref_params = make_params()
    state, ref_state = lo.transform(mp, 100).init(params), ref.init(ref_params)
    ref_step = jax.jit(lambda p, s: _apply(ref, p, s))
    for _ in range(5):
      params, state = step(mp, params, state)
      ref_params, ref_state = ref_step(ref_params, ref_state)
      for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=name)


def _orth_reference(lr):
  """Muon-style: heavy-ball trace, per tensor Newton-Schulz (2-D+) then unit RMS, times -lr."""
  from lopt._celo2_lopt import newton_schulz

  def orth(x):
    if x.ndim >= 2:
      x = newton_schulz(x.reshape(-1, x.shape[-1])).reshape(x.shape)
    return x / jnp.sqrt(jnp.mean(x * x))

  scale = optax.GradientTransformation(
      lambda p: optax.EmptyState(), lambda u, s, p=None: (jax.tree.map(orth, u), s))
  return optax.chain(optax.trace(decay=0.9), scale, optax.scale(-lr))


def test_orth_direction_one_hot_is_orthogonalized_momentum():
  """``directions`` adds orth; one-hot orth matches the reference; bad lists are refused."""
  lo = LayerwiseComboLOpt(directions=("sgd", "momentum", "adam", "sign", "orth"))
  assert lo.init(jax.random.key(0))["bias"].shape == (5,)
  mp, ref = lo.one_hot("orth", LR), _orth_reference(LR)
  params = ref_params = make_params()
  state, ref_state = lo.transform(mp, 100).init(params), ref.init(ref_params)
  step = jax.jit(lambda p, s: _apply(lo.transform(mp, 100), p, s))
  for _ in range(4):
    params, state = step(params, state)
    ref_params, ref_state = _apply(ref, ref_params, ref_state)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  assert state.coef.shape[1] == 5 and float(state.coef[0, 4]) == pytest.approx(LR)
  with pytest.raises(ValueError, match="unknown direction 'orth'"):
    LayerwiseComboLOpt().one_hot("orth", LR)
  for bad in [("sgd", "sign"), ("adam", "adam"), ("adam", "muon")]:
    with pytest.raises(ValueError, match="directions must be distinct names of"):
      LayerwiseComboLOpt(directions=bad)


def test_cosine_schedule_is_adam_under_optax_cosine_decay():
  """schedule='cosine': one-hot Adam equals optax.adam(cosine_decay_schedule(lr, T)) past T."""
  lo = LayerwiseComboLOpt(schedule="cosine")
  T = 6
  tx, ref = lo.transform(lo.one_hot("adam", LR), T), optax.adam(optax.cosine_decay_schedule(LR, T))
  params = ref_params = make_params()
  state, ref_state = tx.init(params), ref.init(ref_params)
  for _ in range(T + 2):   # the factor stays 0 after the horizon
    params, state = _apply(tx, params, state)
    ref_params, ref_state = _apply(ref, ref_params, ref_state)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="schedule='cosine' decays over num_steps"):
    lo.transform(lo.init(jax.random.key(0)), "unknown")
  with pytest.raises(ValueError, match=r"unknown schedule 'cos'; valid: \('constant', 'cosine'\)"):
    LayerwiseComboLOpt(schedule="cos")


def test_init_is_adam():
  lo = LayerwiseComboLOpt()
  mp = lo.init(jax.random.key(3))
  ref = lo.one_hot("adam", 1e-3)
  for a, b in zip(jax.tree.leaves(mp["bias"]), jax.tree.leaves(ref["bias"])):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_allclose(mp["log_lr"], np.log(1e-3))
  assert all(float(jnp.abs(x).max()) == 0.0 for x in jax.tree.leaves(mp["net"][-1]))


def test_init_lr_sets_the_starting_adam_rate():
  lo = LayerwiseComboLOpt(init_lr=3e-3)
  np.testing.assert_allclose(lo.init(jax.random.key(0))["log_lr"], np.log(3e-3), rtol=1e-6)
  assert "init_lr" not in lo.config()   # not architecture: weights load whatever its value
  with pytest.raises(ValueError, match="init_lr must be > 0"):
    LayerwiseComboLOpt(init_lr=0.0)


def test_init_direction_starts_at_that_one_hot():
  """init_direction='orth' makes init() the one-hot orth meta-params; not architecture."""
  dirs = ("sgd", "momentum", "adam", "sign", "orth")
  lo = LayerwiseComboLOpt(directions=dirs, init_direction="orth", init_lr=3e-3)
  mp, ref = lo.init(jax.random.key(0)), lo.one_hot("orth", 3e-3)
  np.testing.assert_array_equal(mp["bias"], ref["bias"])
  np.testing.assert_allclose(mp["log_lr"], np.log(3e-3), rtol=1e-6)
  assert "init_direction" not in lo.config()
  with pytest.raises(ValueError, match=r"init_direction='orth' is not one of the directions"):
    LayerwiseComboLOpt(init_direction="orth")


def test_num_layers_bias_and_mismatch():
  params = make_params()
  lo = LayerwiseComboLOpt(num_layers=len(jax.tree.leaves(params)))
  mp = lo.init(jax.random.key(0))
  assert mp["layer_bias"].shape == (6, 4) and mp["layer_log_lr"].shape == (6,)
  bad = LayerwiseComboLOpt(num_layers=3)
  opt = bad.transform(bad.init(jax.random.key(0)), 10)
  with pytest.raises(ValueError, match="num_layers=3"):
    opt.init(params)


def test_per_layer_step_size_scales_only_its_tensor():
  """``layer_log_lr[t] = log 2`` doubles tensor t's update and leaves the others alone."""
  params = make_params()
  lo = LayerwiseComboLOpt.for_params(params)
  mp = lo.one_hot("sgd", LR)
  g = jax.grad(quad_loss)(params)

  @jax.jit
  def update(mp):
    opt = lo.transform(mp, 10)
    return opt.update(g, opt.init(params), params, loss=1.0)

  base, state = update(mp)
  mp["layer_log_lr"] = mp["layer_log_lr"].at[2].set(np.log(2.0))
  doubled, state2 = update(mp)
  for t, (a, b) in enumerate(zip(jax.tree.leaves(base), jax.tree.leaves(doubled))):
    np.testing.assert_allclose(b, a * (2.0 if t == 2 else 1.0), rtol=1e-6)
  # state.coef records each tensor's step size per base direction (here: sgd only)
  expected = np.zeros((6, 4))
  expected[:, 0] = LR
  np.testing.assert_allclose(state.coef, expected, rtol=1e-6)
  np.testing.assert_allclose(state2.coef[2, 0], 2 * LR, rtol=1e-6)


def test_specialized_weights_refuse_another_tree(tmp_path):
  """Weights specialized to one tree, loaded by path, refuse a tree of other count or shape."""
  import lopt

  params = make_params()
  lo = LayerwiseComboLOpt.for_params(params)
  assert lo.num_layers == 6 and lo.param_tree[0] == ("['conv']", (3, 3, 2, 4))
  path = lopt.save_weights(tmp_path / "w", lo, lo.init(jax.random.key(0)))
  opt = lopt.get("layerwise_combo_lopt", weights=str(path), num_steps=10)  # config from manifest
  state = opt.init(params)
  loss, g = jax.value_and_grad(quad_loss)(params)
  assert jax.tree.structure(opt.update(g, state, params, loss=loss)[0]) == jax.tree.structure(g)
  fewer = {k: v for k, v in params.items() if k != "scale"}
  with pytest.raises(ValueError, match=r"specialized to another model: expected 6 tensors "
                                       r"\(the model it was specialized to\), got 5; first "
                                       r"difference at tensor 5: expected \['scale'\] \(\)"):
    opt.init(fewer)
  wider = dict(params, dense2={"kernel": jnp.zeros((16, 5)), "bias": jnp.zeros((5,))})
  with pytest.raises(ValueError, match=r"tensor 3 of 6 has another shape: expected "
                                       r"\['dense2'\]\['bias'\] \(4,\), got "
                                       r"\['dense2'\]\['bias'\] \(5,\)"):
    opt.init(wider)
  with pytest.raises(ValueError, match="num_layers=5 but param_tree lists 6"):
    LayerwiseComboLOpt(num_layers=5, param_tree=lo.param_tree)


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
