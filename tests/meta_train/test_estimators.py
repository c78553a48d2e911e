"""Meta-gradient estimators against jax.grad on a quadratic with a tiny learned optimizer.

Tolerances: truncated backprop equals ``jax.grad`` of the same truncation to
float32 rounding (rtol 1e-4). Antithetic ES (full unroll) and PES (summed over
the truncations of a run) agree with ``jax.grad`` of the whole-run objective to
cosine >= 0.99 and relative error <= 0.15 with 2048 instances (sigma = 0.01,
so the Gaussian smoothing is negligible). Truncated backprop summed over the same
truncations misses the effect of the meta-parameters on each truncation's start
state and is off by more than 40 %.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lopt
import tasks
from meta_train import UnrollConfig, init_inner_state, make_estimator, unroll
from tests.meta_train.test_unroll import reference_unroll
from tests.meta_train.tiny_lopt import TinyLOpt

K, NUM_TRUNCS, N = 5, 4, 2048
T = K * NUM_TRUNCS


def flat(g):
  return np.asarray(jnp.stack([g["log_lr"], g["logit_momentum"]]), np.float64)


def cosine(a, b):
  return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def relerr(a, b):
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def setup():
  task = tasks.get("quadratic", dim=4, condition=10.0, noise=0.0)
  lo = TinyLOpt(lr=0.02, momentum=0.5)
  theta = lo.init(None)
  cfg = UnrollConfig(trunc_length=K, min_horizon=T, max_horizon=T, stagger=False)
  keys = jax.random.key_data(jax.random.split(jax.random.key(0), N))
  return task, lo, theta, cfg, keys


@pytest.fixture(scope="module")
def full_grad(setup):
  """jax.grad of the whole-run objective (mean normalized loss over T steps), mean over N."""
  task, lo, theta, cfg, keys = setup

  def objective(theta, st):
    total = 0.0
    for _ in range(NUM_TRUNCS):
      st, out = unroll(task, lo, theta, st, cfg, reset=False)
      total += out.meta_loss
    return total / NUM_TRUNCS

  def one(k):
    return jax.grad(objective)(theta, init_inner_state(task, lo, theta, k, cfg))

  return flat(jax.tree.map(lambda x: x.mean(0), jax.jit(jax.vmap(one))(keys)))


def run_over_truncations(name, setup):
  """Sum over the truncations of one run of the N-instance mean estimate, / NUM_TRUNCS."""
  task, lo, theta, cfg, keys = setup
  est = make_estimator(name, task, lo, cfg, sigma=0.01)
  state = est.init(theta, keys)
  step = jax.jit(est.meta_grad)
  total = 0.0
  for i in range(NUM_TRUNCS):
    k = jax.random.key_data(jax.random.split(jax.random.key(100 + i), N))
    g, state, metrics = step(theta, state, k)
    total = total + flat(g)
  assert float(metrics["resets"]) == 0.0
  return total / NUM_TRUNCS


@pytest.mark.parametrize("remat", [False, True])
def test_tbptt_equals_jax_grad_through_reference_loop(setup, remat):
  """Also with ``remat`` (activations recomputed in the backward pass): the same gradient."""
  task, lo, theta, cfg, keys = setup
  est = make_estimator("tbptt", task, lo, dataclasses.replace(cfg, remat=remat))
  state = est.init(theta, keys[:4])
  grads, _, metrics = jax.jit(est.per_instance)(theta, state, keys[:4])

  @jax.jit
  @jax.vmap
  def reference_grad(x0):
    def objective(theta):
      losses, _ = reference_unroll(task, lo, theta, x0, 1.0, 1.0, K)
      return jnp.mean(jnp.clip(losses / task.loss_scale, -4.0, 4.0))
    return jax.grad(objective)(theta)

  ref = reference_grad(state.params["x"])
  np.testing.assert_allclose(flat(grads), flat(ref), rtol=1e-4, atol=1e-7)
  assert metrics["meta_loss"].shape == (4,)


def test_full_unroll_es_agrees_with_jax_grad(setup, full_grad):
  task, lo, theta, cfg, keys = setup
  full_cfg = UnrollConfig(trunc_length=T, min_horizon=T, max_horizon=T, stagger=False)
  est = make_estimator("es", task, lo, full_cfg, sigma=0.01)
  g, _, _ = jax.jit(est.meta_grad)(theta, est.init(theta, keys), keys)
  g = flat(g)
  assert cosine(g, full_grad) >= 0.99, (g, full_grad)
  assert relerr(g, full_grad) <= 0.15, (g, full_grad)


def test_pes_is_unbiased_where_truncated_backprop_is_not(setup, full_grad):
  pes = run_over_truncations("pes", setup)
  tbptt = run_over_truncations("tbptt", setup)
  assert cosine(pes, full_grad) >= 0.99, (pes, full_grad)
  assert relerr(pes, full_grad) <= 0.15, (pes, full_grad)
  # short-horizon bias: truncated backprop underestimates the long-run effect
  assert relerr(tbptt, full_grad) >= 0.4, (tbptt, full_grad)
  assert np.linalg.norm(tbptt) < 0.6 * np.linalg.norm(full_grad)


def test_unknown_estimator_lists_valid_names(setup):
  task, lo, _, cfg, _ = setup
  with pytest.raises(KeyError, match="es, pes, tbptt"):
    make_estimator("reinforce", task, lo, cfg)


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=() if n == "mlp_lopt" else pytest.mark.slow)
    for n in sorted(lopt.available_learned())])
def test_tbptt_through_every_learned_optimizer_is_finite(name):
  """Truncated backprop differentiates the optimizer itself: no NaN from its features.

  mlp_lopt's ``sqrt`` of a zero second moment (padding rows, parameters without
  gradient) once made every such meta-gradient NaN, which PES never saw.
  """
  task = tasks.get("digits_mlp", hidden=(8,))
  lo = lopt.learned(name)
  theta = lo.init(jax.random.key(0))
  cfg = UnrollConfig(trunc_length=3, min_horizon=30, max_horizon=30, stagger=False)
  est = make_estimator("tbptt", task, lo, cfg)
  keys = jax.random.key_data(jax.random.split(jax.random.key(1), 2))
  grads, _, _ = jax.jit(est.per_instance)(theta, est.init(theta, keys), keys)
  bad = [jax.tree_util.keystr(k) for k, g in jax.tree_util.tree_leaves_with_path(grads)
         if not np.all(np.isfinite(np.asarray(g)))]
  assert not bad, f"non-finite meta-gradient in {bad}"
