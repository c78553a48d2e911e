"""Tests of the chunked per-parameter MLP kernel and of ``mlp_lopt``.

Numerical references: the chunked MLP equals the straightforward one, ``mlp_lopt``
set to emit the SGD step reproduces ``optax.sgd``, and the meta-gradient of a
5-step unroll matches central finite differences.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lopt
from lopt._per_param_mlp import (
    FlatLayout,
    mlp_apply,
    mlp_apply_reference,
    mlp_apply_t,
    mlp_init,
    stack_leaf_features,
)


def _params(dtype=jnp.float32):
  k1, k2 = jax.random.split(jax.random.key(1))
  return {"w1": jax.random.normal(k1, (6, 40), dtype) * 0.5, "b1": jnp.zeros((40,), dtype),
          "w2": jax.random.normal(k2, (40, 3), dtype) * 0.5, "s": jnp.ones((), dtype)}


def _quad(params):
  return sum(jnp.sum(jnp.square(p.astype(jnp.float32) - 0.3)) for p in jax.tree.leaves(params))


# ---- kernel -----------------------------------------------------------------------

def test_layout_round_trip_keeps_shapes_and_dtypes():
  params = {"a": jnp.arange(15.0).reshape(3, 5).astype(jnp.bfloat16),
            "b": jnp.arange(7.0), "c": jnp.float32(2.0)}
  layout = FlatLayout.from_tree(params, block=4, max_chunk=8)
  assert layout.num_params == 23 and layout.num_rows % layout.chunk == 0
  flat = layout.flatten(params)
  assert flat.dtype == jnp.float32 and flat.shape == (layout.num_rows,)
  back = layout.unflatten(flat)
  for k in params:
    assert back[k].dtype == params[k].dtype and back[k].shape == params[k].shape
    np.testing.assert_array_equal(np.asarray(back[k], np.float32),
                                  np.asarray(params[k], np.float32))
  means = layout.tensor_mean(flat[:, None])[:, 0]
  np.testing.assert_allclose(means, [7.0, 3.0, 2.0], rtol=1e-6)
  feats = stack_leaf_features([params, params], layout)
  assert feats.shape == (layout.num_rows, 2)


def test_chunked_mlp_matches_reference():
  x = jax.random.normal(jax.random.key(0), (1000, 7))
  w = mlp_init(jax.random.key(1), (7, 16, 16, 2))
  ref = jax.jit(mlp_apply_reference)(w, x)
  chunked = jax.jit(lambda w, x: mlp_apply(w, x, chunk=128))(w, x)
  np.testing.assert_allclose(chunked, ref, rtol=1e-5, atol=1e-6)
  feature_major = jax.jit(lambda w, x: mlp_apply_t(w, x.T, chunk=256))(w, x)
  np.testing.assert_allclose(feature_major.T, ref, rtol=1e-5, atol=1e-6)


# ---- mlp_lopt ---------------------------------------------------------------------

@pytest.mark.parametrize("feature,reference,atol", [
    ("g", optax.sgd(0.05), 1e-6),
    ("m0.9/rms", optax.adam(0.05, b1=0.9, b2=0.999, eps=1e-8), 1e-5),
], ids=["sgd", "adam"])
def test_reproduces_sgd_and_adam(feature, reference, atol):
  """With ``normalize_features=False`` and identity weights mlp_lopt is SGD (or Adam).

  Per-tensor feature normalization makes the gradient feature ``g / rms(g)``, which
  is not linear in ``g``, so the reference uses the config switch that turns it
  off; identity through the ReLU hidden layers is built as relu(x) - relu(-x).
  Routing the gradient column gives SGD; routing the bias-corrected
  ``m0.9 / (sqrt(v0.999) + 1e-8)`` column gives Adam(0.9, 0.999, 1e-8).
  Tolerance on the parameters over 5 steps (float32): rtol 1e-5 plus atol 1e-6 for
  SGD, 1e-5 for Adam (2e-4 of its 0.05 step: the step is scaled by lr / step_mult =
  50 inside the MLP and back by step_mult, and Adam's division amplifies rounding).
  """
  lo = lopt.learned("mlp_lopt", normalize_features=False, chunk=256)
  opt = lo.transform(lo.pass_through(jax.random.key(0), feature, 0.05 / lo.step_mult),
                     num_steps=5)
  params = _params()

  def make_step(tx):
    def step(p, s):
      u, s = tx.update(jax.grad(_quad)(p), s, p)
      return optax.apply_updates(p, u), s
    return jax.jit(step)

  step, ref_step = make_step(opt), make_step(reference)
  p, s, pr, sr = params, opt.init(params), params, reference.init(params)
  for _ in range(5):
    p, s = step(p, s)
    pr, sr = ref_step(pr, sr)
    for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(pr)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=atol)


def _unroll_loss(lo, mp, params, steps=5):
  opt = lo.transform(mp, num_steps=steps)
  state = opt.init(params)

  def body(carry, _):
    p, s = carry
    loss, g = jax.value_and_grad(_quad)(p)
    u, s = opt.update(g, s, p, loss=loss)
    return (optax.apply_updates(p, u), s), loss

  (p, _), _ = jax.lax.scan(body, (params, state), None, length=steps)
  return _quad(p)


def test_unroll_meta_gradient_matches_finite_differences():
  """d/d(eps) of the 5-step unroll loss along a random direction, vs central differences.

  float32; step_mult=0.1 so the meta-parameters move the final loss measurably;
  eps=3e-3 on a unit direction (measured agreement ~1e-4 relative; 4.5e-3 at
  eps=1e-2, where curvature dominates). Tolerance: 1 % relative.
  """
  lo = lopt.learned("mlp_lopt", hidden_size=8, step_mult=0.1, chunk=128)
  mp = lo.init(jax.random.key(2))
  params = {"w": jax.random.normal(jax.random.key(3), (4, 5)) * 0.5, "b": jnp.zeros((5,))}
  leaves, treedef = jax.tree.flatten(mp)
  keys = jax.random.split(jax.random.key(4), len(leaves))
  direction = [jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)]
  norm = jnp.sqrt(sum(jnp.sum(d * d) for d in direction))
  direction = treedef.unflatten([d / norm for d in direction])

  f = jax.jit(lambda m: _unroll_loss(lo, m, params))
  grad = jax.jit(jax.grad(lambda m: _unroll_loss(lo, m, params)))(mp)
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grad))
  analytic = sum(jnp.sum(g * d) for g, d in zip(jax.tree.leaves(grad), jax.tree.leaves(direction)))
  eps = 3e-3
  plus = f(jax.tree.map(lambda m, d: m + eps * d, mp, direction))
  minus = f(jax.tree.map(lambda m, d: m - eps * d, mp, direction))
  numeric = (plus - minus) / (2 * eps)
  assert abs(float(analytic)) > 1e-3
  np.testing.assert_allclose(float(analytic), float(numeric), rtol=1e-2)


def test_vmap_over_meta_params_and_tasks():
  lo = lopt.learned("mlp_lopt", hidden_size=8)
  mps = jax.vmap(lo.init)(jax.random.split(jax.random.key(0), 3))
  params = {"w": jnp.ones((4, 5))}
  losses = jax.jit(jax.vmap(lambda m: _unroll_loss(lo, m, params, steps=2)))(mps)
  assert losses.shape == (3,) and np.all(np.isfinite(losses))
  opt = lo.transform(lo.init(jax.random.key(0)), num_steps=10)
  batch = {"w": jnp.stack([jnp.ones((4, 5)), -jnp.ones((4, 5))])}
  states = jax.vmap(opt.init)(batch)
  updates, _ = jax.vmap(opt.update)(jax.vmap(jax.grad(_quad))(batch), states, batch)
  assert updates["w"].shape == (2, 4, 5)


def test_bfloat16_params_keep_dtype_under_donation():
  lo = lopt.learned("mlp_lopt", hidden_size=8)
  opt = lo.transform(lo.init(jax.random.key(0)), num_steps=10)
  params = _params(jnp.bfloat16)

  def step(p, s):
    u, s = opt.update(jax.grad(_quad)(p), s, p)
    return optax.apply_updates(p, u), s

  step = jax.jit(step, donate_argnums=(0, 1))
  p, s = params, opt.init(params)
  for _ in range(3):
    p, s = step(p, s)
  for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(params)):
    assert a.dtype == jnp.bfloat16 and a.shape == b.shape
    assert np.all(np.isfinite(np.asarray(a, np.float32)))
  assert int(s.count) == 3


def test_loss_is_accepted_and_step_two_does_not_retrace():
  opt = lopt.get("mlp_lopt", weights=None, num_steps=10, hidden_size=8)
  traces = []

  @jax.jit
  def step(p, s):
    traces.append(1)
    loss, g = jax.value_and_grad(_quad)(p)
    u, s = opt.update(g, s, p, loss=loss)
    return optax.apply_updates(p, u), s

  p, s = _params(), opt.init(_params())
  for _ in range(3):
    p, s = step(p, s)
  assert len(traces) == 1


def test_config_and_features_describe_architecture():
  lo = lopt.learned("mlp_lopt")
  assert lo.config()["hidden_size"] == 32 and lo.config()["hidden_layers"] == 2
  assert lo.mlp_sizes == (len(lo.feature_names), 32, 32, 2)
  with pytest.raises(KeyError, match="mlp_lopt"):
    lopt.learned("mlp_lopt_typo")


def test_chunk_size_changes_speed_not_updates():
  """The default CPU chunk, one whole-tree chunk and small chunks give the same updates.

  A 6.6k-parameter digits MLP (the meta-training benchmark's task), 3 steps with the
  shipped-size architecture and normalized features; tolerance: float32 rounding
  (rtol 1e-5, atol 1e-7 on steps of ~1e-3).
  """
  import tasks

  params = tasks.get("digits_mlp", hidden=(64, 32)).init(jax.random.key(0))
  grads = [jax.tree.map(lambda p, i=i: jax.random.normal(jax.random.key(i), p.shape) * 0.1,
                        params) for i in range(3)]
  mp = lopt.learned("mlp_lopt").init(jax.random.key(3))
  results = {}
  for chunk in (None, 16384, 256):
    lo = lopt.learned("mlp_lopt", chunk=chunk)
    tx = lo.transform(mp, num_steps=100)
    state, ups = tx.init(params), []
    for g in grads:
      u, state = jax.jit(tx.update)(g, state, params)
      ups.append(u)
    results[chunk] = ups
  assert lopt.learned("mlp_lopt", chunk=16384).layout(params).num_chunks == 1
  assert lopt.learned("mlp_lopt", chunk=256).layout(params).num_chunks == 27
  for chunk in (16384, 256):
    for a, b in zip(jax.tree.leaves(results[chunk]), jax.tree.leaves(results[None])):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
