"""Tests of the chunked per-parameter MLP kernel and of ``mlp_lopt``.

Numerical references: the chunked MLP equals the straightforward one, and
``mlp_lopt`` set to emit the SGD (Adam) step reproduces ``optax.sgd``
(``optax.adam``). What every learned optimizer must do (meta-gradients, donation,
weights, non-finite gradients) is tested in test_learned.py.
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


def test_adam_init_is_adam_under_the_learned_schedule():
  """init_kind="adam" without feature normalization is Adam(0.9, 0.999) with the
  learned schedule's step size (or a constant init_lr without it)."""
  params = _params()
  for sched in (False, True):
    lo = lopt.learned("mlp_lopt", normalize_features=False, init_kind="adam",
                      learned_schedule=sched, init_lr=0.05, chunk=256)
    mp = lo.init(jax.random.key(0))
    assert ("schedule" in mp) == sched
    opt = lo.transform(mp, num_steps=20)
    lrs = [float(lopt.schedule_lr(mp["schedule"], jnp.asarray(t), 20)) if sched else 0.05
           for t in (1, 2, 3)]
    ref = optax.adam(lambda c: jnp.asarray(lrs)[c], b1=0.9, b2=0.999, eps=1e-8)

    @jax.jit
    def run(p):
      s, pr, sr = opt.init(p), p, ref.init(p)
      for _ in range(3):
        u, s = opt.update(jax.grad(_quad)(p), s, p)
        p = optax.apply_updates(p, u)
        ur, sr = ref.update(jax.grad(_quad)(pr), sr, pr)
        pr = optax.apply_updates(pr, ur)
      return p, pr

    p, pr = run(params)
    for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(pr)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=2e-5)
  with pytest.raises(ValueError, match="valid: 'random', 'adam'"):
    lopt.learned("mlp_lopt", init_kind="muon")
