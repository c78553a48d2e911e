"""The training horizon ``num_steps``: required by every learned optimizer that reads it.

A missing horizon is an error that names the optimizer and says what to pass;
``"unknown"`` (``lopt.UNKNOWN_HORIZON``) is the horizon-free mode; invalid values
are errors; traced horizons (meta-training) keep working. G.pt, which needs no
horizon, is checked in test_gpt.py (it shares that file's tiny saved model).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lopt
from lopt._per_param_lopt import FREE_SCHEDULE_STEPS
from lopt._per_param_mlp import FRACTION_SCALES, time_features
from tests.lopt.lo_checks import tiny_params

#: Every registered learned optimizer reads the horizon (G.pt is not among them).
NAMES = lopt.available_learned()
#: Small, and with every learned schedule on (it reads the horizon too).
TINY_CONFIG = {"mlp_lopt": {"hidden_size": 4, "learned_schedule": True},
               "adafac_mlp_lopt": {"hidden_size": 4}, "celo2_lopt": {"hidden_size": 4},
               "hierarchical_lopt": {"hidden_size": 4, "lstm_hidden": 4,
                                     "learned_schedule": True},
               "layerwise_combo_lopt": {"hidden_size": 4}}


def _tiny(name):
  lo = lopt.learned(name, **TINY_CONFIG[name])
  return lo, lo.init(jax.random.key(0))


def test_unknown_horizon_is_public():
  assert lopt.UNKNOWN_HORIZON == "unknown" and "UNKNOWN_HORIZON" in lopt.__all__
  assert "gpt" not in NAMES and len(NAMES) == 5


@pytest.mark.parametrize("name", NAMES)
def test_missing_horizon_says_what_to_pass(name):
  lo, mp = _tiny(name)
  match = (f"{name}'s update depends on the training horizon.*num_steps=<the number of "
           f"updates.*lopt.get\\('{name}', num_steps=1000\\).*num_steps='unknown'")
  for build in (lambda: lo.transform(mp), lambda: lo.transform(mp, None),
                lambda: lopt.get(name, weights=mp, **TINY_CONFIG[name])):
    with pytest.raises(ValueError, match=match):
      build()


@pytest.mark.parametrize("name", NAMES)
def test_invalid_horizons_list_the_valid_forms(name):
  lo, mp = _tiny(name)
  for bad in ("Unknown", "", "1000", 0, -5, 100.0, True, np.float32(3.0), jnp.asarray(2.5),
              jnp.ones((2,), jnp.int32), [100]):
    with pytest.raises(ValueError, match="positive int.*'unknown'.*traced integer"):
      lo.transform(mp, bad)
  lo.transform(mp, np.int64(100))   # NumPy ints are ints


@pytest.mark.parametrize("name", NAMES)
def test_unknown_and_traced_horizons_give_finite_updates(name):
  lo, mp = _tiny(name)
  params = tiny_params(jax.random.key(1))
  grads = jax.tree.map(lambda x: 0.1 * jnp.cos(x), params)
  opt = lopt.get(name, weights=mp, num_steps=lopt.UNKNOWN_HORIZON, **TINY_CONFIG[name])
  state = opt.init(params)
  for _ in range(2):
    u, state = jax.jit(opt.update)(grads, state, params, loss=1.0)
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(u)), name

  def traced(horizon):   # meta-training builds the optimizer for a traced horizon
    tx = lo.transform(mp, horizon)
    return tx.update(grads, tx.init(params), params, loss=1.0)

  jax.eval_shape(traced, jnp.asarray(50, jnp.int32))


def test_time_features_without_a_horizon_keep_only_absolute_steps():
  count = jnp.asarray(37, jnp.int32)
  free, known = time_features(count, "unknown"), time_features(count, 100)
  n = len(FRACTION_SCALES)
  np.testing.assert_array_equal(free[:n], 0.0)
  assert np.all(np.asarray(known[:n]) != 0.0)
  np.testing.assert_array_equal(free[n:], known[n:])


def test_horizon_free_schedule_matches_its_formula():
  """lr(t) = peak min(1, t / (w S)) (a + (1 - a) / sqrt(1 + t / S)) exp(corr . features)."""
  sched = lopt.init_schedule(1e-3)
  sched["corr"] = jnp.linspace(-0.3, 0.2, sched["corr"].shape[0])
  w = 0.1 / (1.0 + np.exp(-float(sched["warmup"])))
  a = 1.0 / (1.0 + np.exp(-float(sched["final"])))
  S = FREE_SCHEDULE_STEPS
  for t in (1, 10, 20, 150, 1000, 20_000):
    feats = np.asarray(time_features(jnp.asarray(t), "unknown"))
    want = (1e-3 * min(1.0, t / (w * S)) * (a + (1 - a) / np.sqrt(1 + t / S))
            * np.exp(np.clip(np.dot(np.asarray(sched["corr"]), feats), -5, 5)))
    got = float(lopt.schedule_lr(sched, jnp.asarray(t, jnp.int32), lopt.UNKNOWN_HORIZON))
    np.testing.assert_allclose(got, want, rtol=1e-5, err_msg=f"t={t}")
  # No correction: the peak after the 20-step warmup, then a decay towards a * peak.
  sched["corr"] = jnp.zeros_like(sched["corr"])
  lr = lambda t: float(lopt.schedule_lr(sched, jnp.asarray(t), "unknown"))
  assert lr(1) < lr(10) < lr(20) and lr(20) > lr(1000) > lr(100_000) > a * 1e-3
