"""The contract of every registered learned optimizer (``lopt.available_learned()``).

The optax contract they share with hand-designed optimizers (jit, no retrace,
state structure and dtypes, optax.chain, MultiSteps, nnx) is in test_contract.py.
Here, for each learned optimizer: meta-gradients through an unroll vmapped over
meta-params, task instances and traced horizons (checked against a finite
difference); state donation; config and weights round trips; robustness to
non-finite and huge gradients; and clear errors when ``params`` or ``loss=`` are
missing. Each optimizer's own file tests only what is specific to it.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lopt
from tests.lopt.lo_checks import check_donation, check_meta_grad_vmapped, tiny_params

NAMES = lopt.available_learned()
#: The learned optimizers whose features read the loss (``loss=`` is required).
READS_LOSS = {"hierarchical_lopt", "layerwise_combo_lopt"}


def _meta_grad_case(name):
  """An optimizer and two meta-params whose unroll moves the loss measurably.

  Step sizes are raised and zero-initialized output layers perturbed, so every
  part of the meta-params gets a gradient a float32 finite difference can check.
  """
  config = {"mlp_lopt": {"hidden_size": 8, "step_mult": 0.1},
            "adafac_mlp_lopt": {"step_mult": 0.05},
            "hierarchical_lopt": {"lstm_hidden": 8, "hidden_size": 8, "step_mult": 0.05}}
  lo = lopt.learned(name, **config.get(name, {}))
  mps = []
  for i in range(2):
    mp = jax.tree.map(lambda x: x, lo.init(jax.random.key(i)))
    noise = lambda x, i=i: 0.1 * jax.random.normal(jax.random.key(10 + i), x.shape)
    if name == "celo2_lopt":
      mp["schedule"]["log_lr"] = jnp.asarray(np.log(0.1), jnp.float32)
    elif name == "hierarchical_lopt":
      mp["lstm"]["out"]["w"] = noise(mp["lstm"]["out"]["w"])
    elif name == "layerwise_combo_lopt":
      mp["net"][-1]["w"] = noise(mp["net"][-1]["w"])
      mp["log_lr"] = jnp.asarray(np.log(0.05), jnp.float32)
    mps.append(mp)
  return lo, mps


@pytest.mark.parametrize("name", NAMES)
def test_meta_gradients_vmapped_with_traced_horizons(name):
  """Finite, nonzero meta-gradients, equal to a finite difference within 10 %."""
  lo, mps = _meta_grad_case(name)
  check_meta_grad_vmapped(lo, mps)


@pytest.mark.parametrize("name", NAMES)
def test_state_donation_with_bfloat16_params(name):
  lo = lopt.learned(name)
  opt = lo.transform(lo.init(jax.random.key(0)), 10)
  check_donation(opt, jax.tree.map(lambda x: x.astype(jnp.bfloat16),
                                   tiny_params(jax.random.key(1))))


@pytest.mark.parametrize("name", NAMES)
def test_config_and_weights_round_trip(name, tmp_path):
  lo = lopt.learned(name)
  assert type(lo)(**lo.config()) == lo
  assert json.loads(json.dumps(lo.config())) == lo.config()
  key = jax.random.key(3)
  mp = lo.init(key)  # init is traceable: save_weights and meta-training trace it
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
               mp, jax.jit(lo.init)(key))
  assert jax.tree.structure(jax.vmap(lo.init)(jax.random.split(key, 2))) == \
      jax.tree.structure(mp)

  path = lopt.save_weights(tmp_path / "w", lo, mp)
  jax.tree.map(np.testing.assert_array_equal, lopt.load_weights(path, lo), mp)
  wider = lopt.learned(name, hidden_size=2 * lo.config()["hidden_size"])
  with pytest.raises(ValueError, match="hidden_size"):
    lopt.load_weights(path, wider)
  # Manifests that call the width by an older name keep loading.
  old = next(k for k, v in type(lo).RENAMED.items() if v == "hidden_size")
  manifest = json.loads((path / "manifest.json").read_text())
  manifest["config"][old] = manifest["config"].pop("hidden_size")
  (path / "manifest.json").write_text(json.dumps(manifest))
  jax.tree.map(np.testing.assert_array_equal, lopt.load_weights(path, lo), mp)
  with pytest.raises(TypeError, match=f"{old!r} is now called 'hidden_size'"):
    lopt.learned(name, **{old: 8})


def _issue_params():
  k = jax.random.split(jax.random.key(0), 3)
  return {"w": jax.random.normal(k[0], (8, 4)), "b": jax.random.normal(k[1], (4,)),
          "v": jax.random.normal(k[2], (5,))}


def _all_finite(tree):
  return all(np.all(np.isfinite(np.asarray(x, np.float32))) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("name", NAMES)
def test_nonfinite_gradients_stay_in_their_element_and_huge_ones_stay_finite(name):
  """One NaN (or inf) gradient entry gives NaN in that entry's update only, as Adam
  does; every other entry and the whole state equal those of a zero gradient there.
  All-1e30 gradients give finite updates and a finite state."""
  opt = lopt.get(name, num_steps=100)
  params = _issue_params()
  update = jax.jit(opt.update)
  state = opt.init(params)
  g = jax.tree.map(lambda x: 0.1 * jnp.cos(3.0 * x), params)
  u0, s0 = update(jax.tree.map(lambda x: x, g) | {"w": g["w"].at[2, 1].set(0.0)}, state,
                  params, loss=1.0)
  other = np.ones((8, 4), bool)
  other[2, 1] = False
  for bad in (jnp.nan, jnp.inf):
    u, s = update(g | {"w": g["w"].at[2, 1].set(bad)}, state, params, loss=1.0)
    assert np.isnan(np.asarray(u["w"])[2, 1])
    np.testing.assert_array_equal(np.asarray(u["w"])[other], np.asarray(u0["w"])[other])
    for k in ("b", "v"):
      np.testing.assert_array_equal(u[k], u0[k])
    jax.tree.map(np.testing.assert_array_equal, s, s0)  # the state never sees the NaN

  huge = jax.tree.map(lambda x: jnp.where(x > 0, 1e30, -1e30), params)
  for _ in range(2):
    u, state = update(huge, state, params, loss=1.0)
    assert _all_finite(u) and _all_finite(state), name


@pytest.mark.parametrize("name", NAMES)
def test_missing_params_or_loss_is_an_error(name):
  """Optimizers read ``params`` (and some ``loss=``): missing ones raise, never become zeros."""
  opt = lopt.get(name, weights=None, num_steps=10)
  params = _issue_params()
  state = opt.init(params)
  with pytest.raises(ValueError, match=f"{name!r} needs params"):
    opt.update(params, state, loss=1.0)
  if name in READS_LOSS:
    with pytest.raises(ValueError, match=f"{name!r} needs loss="):
      opt.update(params, state, params)
  else:
    jax.eval_shape(opt.update, params, state, params)


def test_the_docs_name_exactly_the_optimizers_that_read_the_loss():
  import pathlib
  text = (pathlib.Path(__file__).resolve().parents[2] / "docs" / "concepts.md").read_text()
  para = text.split("**Which optimizers read `loss=`:**", 1)[1].split("\n\n", 1)[0]
  reads, ignores = para.split("These three raise", 1)
  named = lambda part: {n for n in [*NAMES, "gpt"] if f"`{n}`" in part}
  assert named(reads) == READS_LOSS | {"gpt"}
  assert named(ignores) == set(NAMES) - READS_LOSS
