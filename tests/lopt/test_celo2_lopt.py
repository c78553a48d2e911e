"""Tests of celo2_lopt: Newton-Schulz, orthogonalized routing, schedule, momentum init.

The optimizer contract runs for every registered optimizer in test_contract.py and
the learned-optimizer contract (meta-gradients, donation, weights, non-finite
gradients) in test_learned.py; here are the checks specific to this optimizer.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lopt._celo2_lopt import Celo2LOpt, newton_schulz
from tests.lopt.contract import make_params, quad_loss


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
  lo = Celo2LOpt(init_lr=1e-3)
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


def _muon_reference(grads_seq, params, lrs, decay):
  """Orthogonalized EMA momentum on matrices, unit-rms momentum on vectors (numpy)."""
  m = jax.tree.map(np.zeros_like, params)
  for g, lr in zip(grads_seq, lrs):
    m = jax.tree.map(lambda a, b: decay * a + (1 - decay) * np.asarray(b), m, g)
    upd = {}
    for k, x in m.items():
      if x.ndim >= 2:
        r, c = int(np.prod(x.shape[:-1])), x.shape[-1]
        o = np.asarray(newton_schulz(jnp.asarray(x.reshape(r, c)))) * np.sqrt(max(r, c))
        upd[k] = -lr * o.reshape(x.shape)
      else:
        upd[k] = -lr * x / np.sqrt(np.mean(x ** 2))
    params = jax.tree.map(lambda p, u: p + u, params, upd)
  return params


def test_momentum_init_is_muon():
  """The default init is orthogonalized momentum (Muon) under the schedule: three
  updates equal a numpy reference with the same momentum and step sizes."""
  lo = Celo2LOpt()
  mp = lo.init(jax.random.key(3))
  rng = np.random.default_rng(0)
  params = {"w": rng.normal(size=(6, 4)).astype(np.float32),
            "b": rng.normal(size=(4,)).astype(np.float32)}
  grads_seq = [jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32), params)
               for _ in range(3)]
  opt = lo.transform(mp, 50)
  state, p = opt.init(params), params
  for g in grads_seq:
    u, state = opt.update(g, state, p)
    p = optax.apply_updates(p, u)
  lrs = [float(lo.learning_rate(mp["schedule"], jnp.asarray(t), 50)) for t in (1, 2, 3)]
  ref = _muon_reference(grads_seq, params, lrs, lo.momentum_decays[0])
  for k in params:
    np.testing.assert_allclose(np.asarray(p[k]), ref[k], rtol=1e-4, atol=1e-6)
  with pytest.raises(ValueError, match="valid: 'momentum', 'random'"):
    Celo2LOpt(init_kind="adam")


def _relative_hidden_change(width: int, scaling: str) -> float:
  """muP's coordinate check: after one update of a (width, width) hidden layer, the
  change of its pre-activations relative to their size, for a fixed input."""
  lo = Celo2LOpt(update_scaling=scaling)
  rng = np.random.default_rng(0)
  w = (rng.normal(size=(width, width)) / np.sqrt(width)).astype(np.float32)  # LeCun init
  h = rng.normal(size=(16, width)).astype(np.float32)
  g = (h.T @ rng.normal(size=(16, width))).astype(np.float32)  # a rank-16 gradient
  opt = lo.transform(lo.init(jax.random.key(0)), 10)
  upd, _ = opt.update({"w": g}, opt.init({"w": w}), {"w": w})
  return float(np.linalg.norm(h @ np.asarray(upd["w"])) / np.linalg.norm(h @ w))


def test_spectral_scaling_keeps_the_relative_update_across_widths():
  """With "spectral" (muP) scaling a hidden layer's relative change is the same at
  widths 32 and 288; with "rms" it grows like sqrt(width) (3x here)."""
  rms = [_relative_hidden_change(n, "rms") for n in (32, 288)]
  spectral = [_relative_hidden_change(n, "spectral") for n in (32, 288)]
  assert 2.3 < rms[1] / rms[0] < 4.0
  assert 0.7 < spectral[1] / spectral[0] < 1.4
  lo = Celo2LOpt(update_scaling="spectral")
  assert lo.matrix_scale(64, 64) == Celo2LOpt().matrix_scale(64, 64) == 8.0
  with pytest.raises(ValueError, match="valid: 'rms', 'spectral'"):
    Celo2LOpt(update_scaling="mup")
