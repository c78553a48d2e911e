"""Tests of hierarchical_lopt: per-tensor LSTM state and modulation.

The optimizer contract runs for every registered optimizer in test_contract.py and
the learned-optimizer contract (meta-gradients, donation, weights, non-finite
gradients) in test_learned.py; here are the checks specific to this optimizer.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lopt
from lopt._hierarchical_lopt import HierarchicalLOpt
from tests.lopt.contract import make_params, quad_loss


def test_one_lstm_row_per_tensor():
  lo = HierarchicalLOpt(lstm_hidden=16)
  params = make_params()
  opt = lo.transform(lo.init(jax.random.key(0)), 100)
  loss, g = jax.value_and_grad(quad_loss)(params)
  _, state = jax.jit(opt.update)(g, opt.init(params), params, loss=loss)
  num_tensors = len(jax.tree.leaves(params))
  assert state.lstm_c.shape == state.lstm_h.shape == (num_tensors, 16)
  assert state.update_rms.shape == (num_tensors,)
  assert float(jnp.abs(state.lstm_h).max()) > 0.0  # the LSTM ran
  assert np.all(np.asarray(state.update_rms) > 0.0)
  assert len(lo.feature_names) == len(lo.param_feature_names) + len(lo.tensor_feature_names)


def test_lstm_step_scale_modulates_updates():
  """A per-tensor log step scale of log(2) from the LSTM doubles every update."""
  lo = HierarchicalLOpt()
  mp = lo.init(jax.random.key(0))
  params = make_params()

  @jax.jit
  def first_update(mp):
    opt = lo.transform(mp, 100)
    loss, g = jax.value_and_grad(quad_loss)(params)
    return opt.update(g, opt.init(params), params, loss=loss)[0]

  doubled = jax.tree.map(lambda x: x, mp)
  doubled["lstm"]["out"]["b"] = mp["lstm"]["out"]["b"].at[0].set(np.log(2.0))
  for a, b in zip(jax.tree.leaves(first_update(mp)), jax.tree.leaves(first_update(doubled))):
    np.testing.assert_allclose(b, 2.0 * a, rtol=1e-5, atol=1e-12)


def test_adam_init_matches_mlp_lopts_adam_init():
  """init_kind="adam" + learned_schedule: with the LSTM's zero output layer the
  update is the tensor-normalized Adam direction under the schedule, i.e. the same
  steps as mlp_lopt's "adam" init (bias corrections cancel in the normalization)."""
  rng = np.random.default_rng(0)
  params = {"w": rng.normal(size=(8, 4)).astype(np.float32),
            "b": rng.normal(size=(4,)).astype(np.float32)}
  kw = dict(init_kind="adam", learned_schedule=True, init_lr=0.01)
  outs = []
  for name in ("hierarchical_lopt", "mlp_lopt"):
    lo = lopt.learned(name, **kw)
    opt = lo.transform(lo.init(jax.random.key(0)), num_steps=20)

    @jax.jit
    def run(p):
      s = opt.init(p)
      for i in range(3):
        g = jax.tree.map(lambda x: jnp.sin(x * (i + 1)), p)
        u, s = opt.update(g, s, p, loss=jnp.asarray(1.0))
        p = optax.apply_updates(p, u)
      return p

    outs.append(run(params))
  for a, b in zip(jax.tree.leaves(outs[0]), jax.tree.leaves(outs[1])):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="valid: 'random', 'adam'"):
    lopt.learned("hierarchical_lopt", init_kind="muon")
