"""The optimizer contract, shared by every optimizer's tests.

``check_contract(opt, params)`` asserts what every ``lopt`` optimizer must do:
jit-compile, not retrace on the second step, keep the state's structure,
shapes and dtypes, keep parameter dtypes, give finite updates, and accept
``loss=``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax


def make_params(dtype=jnp.float32):
  """A small MLP-shaped parameter tree with matrices, vectors and a scalar."""
  k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
  return {
      "dense1": {"kernel": jax.random.normal(k1, (8, 16), dtype) * 0.3,
                 "bias": jnp.zeros((16,), dtype)},
      "dense2": {"kernel": jax.random.normal(k2, (16, 4), dtype) * 0.3,
                 "bias": jnp.zeros((4,), dtype)},
      "scale": jnp.ones((), dtype),
      "conv": jax.random.normal(k3, (3, 3, 2, 4), dtype) * 0.3,
  }


def quad_loss(params):
  leaves = jax.tree.leaves(params)
  return sum(jnp.sum(jnp.square(p.astype(jnp.float32) - 0.5)) for p in leaves)


def _sig(tree):
  return jax.tree.map(lambda x: (jnp.shape(x), jnp.asarray(x).dtype), tree)


def check_contract(opt: optax.GradientTransformationExtraArgs, params, steps: int = 3):
  """Runs ``steps`` jitted steps of ``opt`` on ``quad_loss`` and asserts the contract."""
  assert isinstance(opt, optax.GradientTransformationExtraArgs)
  traces = []

  @jax.jit
  def step(params, state):
    traces.append(1)
    loss, grads = jax.value_and_grad(quad_loss)(params)
    updates, state = opt.update(grads, state, params, loss=loss)
    return optax.apply_updates(params, updates), state, updates, loss

  state0 = opt.init(params)
  state, p = state0, params
  losses = []
  for _ in range(steps):
    p, state, updates, loss = step(p, state)
    losses.append(float(loss))
    assert jax.tree.structure(state) == jax.tree.structure(state0), "state structure changed"
    assert _sig(state) == _sig(state0), "state shapes/dtypes changed"
    assert _sig(p) == _sig(params), "param shapes/dtypes changed"
    assert _sig(updates) == _sig(params), "update shapes/dtypes differ from params"
    for u in jax.tree.leaves(updates):
      assert np.all(np.isfinite(np.asarray(u, np.float32))), "non-finite update"
  assert len(traces) == 1, f"retraced: {len(traces)} traces for {steps} steps"
  return p, state, losses
