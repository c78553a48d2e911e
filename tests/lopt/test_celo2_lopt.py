"""Tests of celo2_lopt: contract, Newton-Schulz, orthogonalized routing, schedule, meta-level.

The optimizer contract (jit, no retrace on step two, state structure and dtypes,
float32 and bfloat16 params, finite updates, optax.chain, MultiSteps, nnx) runs for
every registered learned optimizer in tests/lopt/test_contract.py; here are the
checks specific to this optimizer.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lopt
from lopt._celo2_lopt import Celo2LOpt, newton_schulz
from tests.lopt.contract import make_params, quad_loss
from tests.lopt.lo_checks import check_donatable_state, check_meta_grad_vmapped


def test_registered():
  assert isinstance(lopt.learned("celo2_lopt"), Celo2LOpt)
  lo = Celo2LOpt(hidden=4)
  assert Celo2LOpt(**lo.config()).config() == lo.config()


@pytest.mark.parametrize("shape", [(32, 64), (64, 32)], ids=["wide", "tall"])
def test_newton_schulz_singular_values(shape):
  """Muon's quintic, 5 iterations: singular values in [0.6, 1.25] (its documented
  behaviour, measured 0.68-1.13); the cubic (1.5, -0.5, 0), 30 iterations: |s - 1| < 1e-3."""
  x = jax.random.normal(jax.random.key(0), shape)
  s = np.linalg.svd(np.asarray(newton_schulz(x)), compute_uv=False)
  assert s.min() > 0.6 and s.max() < 1.25, (s.min(), s.max())
  s = np.linalg.svd(np.asarray(newton_schulz(x, iters=30, coeffs=(1.5, -0.5, 0.0))),
                    compute_uv=False)
  np.testing.assert_allclose(s, 1.0, atol=1e-3)
  batched = newton_schulz(jnp.stack([x, 2.0 * x]))  # batched and scale-invariant
  np.testing.assert_allclose(batched[0], batched[1], rtol=1e-4, atol=1e-5)


def test_update_routing_and_weight_decay():
  """Matrices (dense and conv kernels, as (prod(shape[:-1]), shape[-1])) get
  sqrt(max(r, c)) * NS(d) plus decoupled decay; vectors get unit-rms elementwise updates."""
  wd = 0.1
  lo = Celo2LOpt(weight_decay=wd)
  mp = lo.init(jax.random.key(0))
  params = make_params()
  opt = lo.transform(mp, 100)
  u, _ = jax.jit(opt.update)(jax.grad(quad_loss)(params), opt.init(params), params)
  lr = float(lo.learning_rate(mp["schedule"], jnp.asarray(1), 100))
  for path, x in jax.tree_util.tree_leaves_with_path(u):
    p = params
    for k in path:
      p = p[k.key]
    x = np.asarray(x) / -lr
    if x.ndim >= 2:
      r, c = int(np.prod(x.shape[:-1])), x.shape[-1]
      m = (x - wd * np.asarray(p)).reshape(r, c) / np.sqrt(max(r, c))
      s = np.linalg.svd(m, compute_uv=False)
      assert s.min() > 0.5 and s.max() < 1.25, (path, s)
    else:
      np.testing.assert_allclose(np.sqrt(np.mean(x ** 2)), 1.0, rtol=1e-3)


def test_learned_schedule():
  """Default schedule: warmup over 2 % of the horizon, cosine to 10 % of the peak."""
  lo = Celo2LOpt()
  sched = lo.init(jax.random.key(0))["schedule"]
  lr = lambda t: float(lo.learning_rate(sched, jnp.asarray(t), 1000))
  assert lr(1) < lr(10) < lr(20)
  np.testing.assert_allclose(lr(20), 1e-3, rtol=1e-3)
  assert lr(500) < lr(20)
  np.testing.assert_allclose(lr(1000), 1e-4, rtol=1e-3)
  np.testing.assert_allclose(lr(2000), 1e-4, rtol=1e-3)
  grads = jax.grad(lambda s: lo.learning_rate(s, jnp.asarray(300), 1000))(sched)
  assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree.leaves(grads))
  assert float(jnp.abs(grads["corr"]).sum()) > 0.0


def test_meta_grad_and_vmap():
  """Meta-gradients through a 3-step unroll vmapped over meta-params and task
  instances: finite, nonzero, equal to a finite difference within 10 %."""
  lo = Celo2LOpt()
  mps = [lo.init(jax.random.key(i)) for i in range(2)]
  for mp in mps:
    mp["schedule"]["log_lr"] = jnp.asarray(np.log(0.1), jnp.float32)
  check_meta_grad_vmapped(lo, mps)


def test_state_is_donatable():
  lo = Celo2LOpt()
  check_donatable_state(lo.transform(lo.init(jax.random.key(0)), 10), make_params())
