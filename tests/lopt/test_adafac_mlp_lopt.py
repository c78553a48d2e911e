"""Tests of ``adafac_mlp_lopt``: factored moments, determinism, learning, weights."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lopt
from lopt._adafac_mlp_lopt import _second_moment


def _params(dtype=jnp.float32):
  k1, k2 = jax.random.split(jax.random.key(0))
  return {"w": jax.random.normal(k1, (12, 20), dtype), "b": jnp.zeros((20,), dtype),
          "conv": jax.random.normal(k2, (2, 3, 4, 5), dtype)}


def _quad(params):
  return sum(jnp.sum(jnp.square(p.astype(jnp.float32) - 0.5)) for p in jax.tree.leaves(params))


def test_factored_second_moment_is_exact_for_rank_one_squares():
  """For g_ij = a_i b_j, g^2 is rank one and the Adafactor estimate is exact."""
  a = jnp.asarray([1.0, 2.0, 0.5])
  b = jnp.asarray([0.3, 1.0, 2.0, 4.0])
  g = a[:, None] * b[None, :]
  decays = jnp.asarray([0.9, 0.99])
  row, col, v = _second_moment(g, jnp.zeros((2, 3)), jnp.zeros((2, 4)), decays)
  np.testing.assert_allclose(v, (1 - decays)[:, None, None] * (g * g)[None], rtol=1e-5)
  np.testing.assert_allclose(row[0], 0.1 * jnp.mean(g * g, axis=1), rtol=1e-6)
  np.testing.assert_allclose(col[1], 0.01 * jnp.mean(g * g, axis=0), rtol=1e-5)
  vec = jnp.asarray([1.0, -2.0])
  _, _, v1 = _second_moment(vec, jnp.zeros((2, 2)), jnp.zeros((2,)), decays)
  np.testing.assert_allclose(v1[0], 0.1 * vec * vec, rtol=1e-6)


def test_shapes_dtypes_determinism_and_cheap_state():
  lo = lopt.learned("adafac_mlp_lopt", chunk=256)
  opt = lo.transform(lo.init(jax.random.key(1)), num_steps=20)
  params = _params(jnp.bfloat16)
  step = jax.jit(lambda p, s: opt.update(jax.grad(_quad)(p), s, p))
  state = opt.init(params)
  u1, s1 = step(params, state)
  u2, s2 = step(params, state)
  for a, b, p in zip(jax.tree.leaves(u1), jax.tree.leaves(u2), jax.tree.leaves(params)):
    assert a.dtype == jnp.bfloat16 and a.shape == p.shape
    assert np.all(np.isfinite(np.asarray(a, np.float32)))
    np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))
  assert jax.tree.structure(s1) == jax.tree.structure(state)

  def train_step(p, s):
    u, s = opt.update(jax.grad(_quad)(p), s, p)
    return optax.apply_updates(p, u), s

  train_step = jax.jit(train_step, donate_argnums=(0, 1))  # buffer donation
  p, s = jax.tree.map(jnp.copy, params), opt.init(params)
  for _ in range(2):
    p, s = train_step(p, s)
  assert int(s.count) == 2 and p["w"].dtype == jnp.bfloat16
  n = sum(x.size for x in jax.tree.leaves(params))
  state_bytes = sum(x.nbytes for x in jax.tree.leaves(state))
  assert state_bytes / n < 20  # 3 momenta = 12 B/param + padding + factored rows/cols


def test_learns_a_quadratic_with_adam_like_weights():
  lo = lopt.learned("adafac_mlp_lopt")
  opt = lo.transform(lo.pass_through(jax.random.key(0), "m0.9/rms0.9", 0.05 / lo.step_mult),
                     num_steps=60)
  params = _params()

  def body(carry, _):
    p, s = carry
    loss, g = jax.value_and_grad(_quad)(p)
    u, s = opt.update(g, s, p, loss=loss)
    return (optax.apply_updates(p, u), s), loss

  (p, _), losses = jax.jit(lambda p: jax.lax.scan(body, (p, opt.init(p)), None, length=60))(
      params)
  assert float(_quad(p)) < 0.05 * float(losses[0])


def test_vmap_and_meta_gradient_are_finite():
  lo = lopt.learned("adafac_mlp_lopt", step_mult=0.05)
  params = {"w": jnp.ones((4, 6)), "b": jnp.zeros((6,))}

  def unroll(mp):
    opt = lo.transform(mp, num_steps=3)

    def body(carry, _):
      p, s = carry
      u, s = opt.update(jax.grad(_quad)(p), s, p)
      return (optax.apply_updates(p, u), s), None

    (p, _), _ = jax.lax.scan(body, (params, opt.init(params)), None, length=3)
    return _quad(p)

  mps = jax.vmap(lo.init)(jax.random.split(jax.random.key(0), 2))
  losses, grads = jax.jit(jax.vmap(jax.value_and_grad(unroll)))(mps)
  assert losses.shape == (2,)
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
  assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads))


def test_weights_round_trip_and_architecture_check(tmp_path):
  lo = lopt.learned("adafac_mlp_lopt")
  mp = lo.init(jax.random.key(3))
  lopt.save_weights(tmp_path / "w", lo, mp)
  loaded = lopt.load_weights(tmp_path / "w", lo)
  for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(mp)):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(ValueError, match="architecture mismatch"):
    lopt.load_weights(tmp_path / "w", lopt.learned("mlp_lopt"))
  with pytest.raises(ValueError, match="hidden_size"):
    lopt.load_weights(tmp_path / "w", lopt.learned("adafac_mlp_lopt", hidden_size=16))
