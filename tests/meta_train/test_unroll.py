"""Truncated unrolls: a hand-written reference loop, resets, staggering, divergence."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tasks
from meta_train import UnrollConfig, init_inner_state, reset_if_done, unroll
from tests.meta_train.tiny_lopt import TinyLOpt

K = 5


def reference_unroll(task, lo, theta, x, s, c, num_steps):
  """Plain Python loop: the optimizer sees u = x / s, loss c * f(s u); returns losses."""
  tx = lo.transform(theta)
  u = {"x": x / s}
  opt_state = tx.init(u)
  losses = []
  for _ in range(num_steps):
    g = {"x": c * s * task.h * (s * u["x"] - task.x_star)}
    loss = 0.5 * jnp.sum(task.h * (s * u["x"] - task.x_star) ** 2)
    updates, opt_state = tx.update(g, opt_state, u)
    u = {"x": u["x"] + updates["x"]}
    losses.append(loss)
  return jnp.stack(losses), u


@pytest.fixture(scope="module")
def quad():
  return tasks.get("quadratic", dim=4, condition=10.0, noise=0.0)


def test_unroll_matches_reference_loop_with_augmentation(quad):
  lo = TinyLOpt()
  theta = lo.init(None)
  cfg = UnrollConfig(trunc_length=K, min_horizon=4 * K, max_horizon=4 * K,
                     param_scale_range=(0.1, 10.0), loss_scale_range=(0.1, 10.0), stagger=False)
  state = init_inner_state(quad, lo, theta, jax.random.key(3), cfg)
  s, c = float(state.param_scale), float(state.loss_scale)
  assert s != 1.0 and c != 1.0
  new, out = jax.jit(lambda st: unroll(quad, lo, theta, st, cfg))(state)
  x0 = state.params["x"] * s
  losses, u = reference_unroll(quad, lo, theta, x0, s, c, K)
  np.testing.assert_allclose(out.losses, losses, rtol=2e-5)
  np.testing.assert_allclose(new.params["x"], u["x"], rtol=2e-5, atol=1e-6)
  np.testing.assert_allclose(out.meta_loss, jnp.mean(jnp.clip(losses / quad.loss_scale, -4, 4)),
                             rtol=2e-5)
  assert int(new.step) == K and not bool(out.was_reset)


def test_resets_at_horizon_and_horizons_are_staggered(quad):
  lo = TinyLOpt()
  theta = lo.init(None)
  cfg = UnrollConfig(trunc_length=K, min_horizon=2 * K, max_horizon=6 * K)
  keys = jax.random.split(jax.random.key(0), 32)
  states = jax.vmap(lambda k: init_inner_state(quad, lo, theta, k, cfg))(keys)
  h = np.asarray(states.horizon)
  assert set(h) <= set(range(K, 6 * K + 1, K)) and len(set(h)) >= 4  # staggered: K..max
  step = jax.jit(jax.vmap(lambda st: unroll(quad, lo, theta, st, cfg)))
  resets = np.zeros(32, int)
  for _ in range(7):
    before = states
    states, out = step(states)
    was = np.asarray(out.was_reset)
    np.testing.assert_array_equal(was, np.asarray(before.step) >= np.asarray(before.horizon))
    resets += was
    assert np.all(np.asarray(states.step) <= np.asarray(states.horizon))
    # after a reset the run restarts from step 0 with a horizon in [min, max]
    hr = np.asarray(states.horizon)[was]
    assert np.all((hr >= 2 * K) & (hr <= 6 * K))
    np.testing.assert_array_equal(np.asarray(states.step)[was], K)
  assert resets.sum() > 0 and len(set(resets)) > 1  # instances reset at different times


def test_nonfinite_inner_loss_is_clipped_and_instance_reset(quad):
  lo = TinyLOpt(lr=50.0)  # diverges: the loss overflows to inf
  theta = lo.init(None)
  cfg = UnrollConfig(trunc_length=40, min_horizon=400, max_horizon=400, stagger=False)
  state = init_inner_state(quad, lo, theta, jax.random.key(0), cfg)
  f = jax.jit(lambda st: unroll(quad, lo, theta, st, cfg))
  state, out = f(state)
  assert not np.all(np.isfinite(out.losses))
  assert np.isfinite(out.meta_loss) and float(out.meta_loss) <= tasks.MAX_NORMALIZED_LOSS
  assert bool(state.diverged)
  state, out = f(state)
  assert bool(out.was_reset) and int(state.step) == 40


def test_reset_keeps_unfinished_runs(quad):
  lo = TinyLOpt()
  theta = lo.init(None)
  cfg = UnrollConfig(trunc_length=K, min_horizon=4 * K, max_horizon=4 * K, stagger=False)
  state = init_inner_state(quad, lo, theta, jax.random.key(0), cfg)
  same, done = reset_if_done(quad, lo, theta, state, cfg)
  assert not bool(done)
  jax.tree.map(np.testing.assert_array_equal, same, state)


@pytest.mark.parametrize("log,weighting", [(True, "uniform"), (False, "late"), (True, "late")])
def test_log_and_late_weighted_meta_loss(quad, log, weighting):
  """One truncation = one whole run: the meta-loss is the mean over its steps of
  log(max(normalized loss, 1e-4)) and/or normalized loss * 2 t / T."""
  lo = TinyLOpt()
  theta = lo.init(None)
  cfg = UnrollConfig(trunc_length=K, min_horizon=K, max_horizon=K, stagger=False,
                     meta_loss_log=log, meta_loss_weighting=weighting)
  state = init_inner_state(quad, lo, theta, jax.random.key(1), cfg)
  _, out = jax.jit(lambda st: unroll(quad, lo, theta, st, cfg))(state)
  norm = np.clip(np.asarray(out.losses) / quad.loss_scale, -4, 4)
  if log:
    norm = np.log(np.maximum(norm, 1e-4))
  if weighting == "late":
    norm = norm * 2.0 * np.arange(1, K + 1) / K
  np.testing.assert_allclose(out.meta_loss, norm.mean(), rtol=2e-5)
  with pytest.raises(ValueError, match="meta_loss_weighting must be one of uniform, late"):
    UnrollConfig(meta_loss_weighting="early")
