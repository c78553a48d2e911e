"""Tests of hierarchical_lopt: contract, per-tensor LSTM state, modulation, meta-level.

The optimizer contract (jit, no retrace on step two, state structure and dtypes,
float32 and bfloat16 params, finite updates, optax.chain, MultiSteps, nnx) runs for
every registered learned optimizer in tests/lopt/test_contract.py; here are the
checks specific to this optimizer.
"""

import jax
import jax.numpy as jnp
import numpy as np

import lopt
from lopt._hierarchical_lopt import HierarchicalLOpt
from tests.lopt.contract import check_contract, make_params, quad_loss
from tests.lopt.lo_checks import check_donatable_state, check_meta_grad_vmapped


def test_contract_and_one_lstm_row_per_tensor():
  lo = HierarchicalLOpt(lstm_hidden=16)
  params = make_params(jnp.bfloat16)
  _, state, _ = check_contract(lo.transform(lo.init(jax.random.key(0)), 100), params)
  num_tensors = len(jax.tree.leaves(params))
  assert state.lstm_c.shape == state.lstm_h.shape == (num_tensors, 16)
  assert state.update_rms.shape == (num_tensors,)
  assert float(jnp.abs(state.lstm_h).max()) > 0.0  # the LSTM ran
  assert np.all(np.asarray(state.update_rms) > 0.0)


def test_registered_and_config_roundtrip():
  lo = lopt.learned("hierarchical_lopt", lstm_hidden=8)
  assert isinstance(lo, HierarchicalLOpt)
  assert HierarchicalLOpt(**lo.config()).config() == lo.config()
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


def test_meta_grad_and_vmap():
  """Meta-gradients through a 3-step unroll vmapped over meta-params and task
  instances: finite, nonzero, equal to a finite difference within 10 %."""
  lo = HierarchicalLOpt(lstm_hidden=8, hidden_size=8, step_mult=0.05)
  mps = [lo.init(jax.random.key(i)) for i in range(2)]
  for i, mp in enumerate(mps):  # non-zero LSTM output layer so the LSTM gets gradients
    mp["lstm"]["out"]["w"] = 0.1 * jax.random.normal(
        jax.random.key(10 + i), mp["lstm"]["out"]["w"].shape)
  check_meta_grad_vmapped(lo, mps)


def test_state_is_donatable():
  lo = HierarchicalLOpt()
  check_donatable_state(lo.transform(lo.init(jax.random.key(0)), 10), make_params())
