"""Tests of ``adafac_mlp_lopt``: factored moments, state size, learning (the
shared learned-optimizer contract is in test_learned.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

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


def test_state_is_cheap():
  """3 momenta = 12 B/param, plus padding and the factored rows/cols."""
  params = _params()
  state = lopt.learned("adafac_mlp_lopt", chunk=256).transform(
      lopt.learned("adafac_mlp_lopt").init(jax.random.key(1)), 20).init(params)
  n = sum(x.size for x in jax.tree.leaves(params))
  assert sum(x.nbytes for x in jax.tree.leaves(state)) / n < 20


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
