"""Meta-level checks shared by learned-optimizer tests: unrolls, meta-gradients, vmap.

``unroll_loss(lo, meta_params, params)`` trains a tiny quadratic for a few steps
with ``lo.transform(meta_params)`` inside ``lax.scan`` and returns the final loss,
so it can be differentiated with respect to ``meta_params`` and vmapped over
``meta_params`` and over task instances (initial parameters).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax

TARGET = {"w": jnp.linspace(-1.0, 1.0, 12).reshape(4, 3), "b": jnp.asarray([0.5, -0.5, 1.0])}


def tiny_params(key):
  """A 2-tensor problem: a (4, 3) matrix and a (3,) vector."""
  kw, kb = jax.random.split(key)
  return {"w": jax.random.normal(kw, (4, 3)), "b": jax.random.normal(kb, (3,))}


def tiny_loss(params):
  return sum(jnp.sum(jnp.square(params[k] - TARGET[k]) * s) for k, s in (("w", 1.0), ("b", 2.0)))


def unroll_loss(lo, meta_params, params, steps: int = 3, num_steps: int = 10):
  """Final loss after ``steps`` updates of ``lo.transform(meta_params, num_steps)``."""
  opt = lo.transform(meta_params, num_steps)

  def body(carry, _):
    p, s = carry
    loss, g = jax.value_and_grad(tiny_loss)(p)
    u, s = opt.update(g, s, p, loss=loss)
    return (optax.apply_updates(p, u), s), loss

  (params, _), _ = jax.lax.scan(body, (params, opt.init(params)), None, length=steps)
  return tiny_loss(params)


def check_meta_grad(lo, meta_params, *, steps: int = 3, fd_eps: float = 1e-2, fd_rtol=0.1):
  """Asserts a finite, nonzero meta-gradient that matches a central finite difference.

  The finite difference is taken along the normalized gradient direction ``v``:
  ``(L(mp + eps v) - L(mp - eps v)) / (2 eps)`` must equal ``<grad, v> = |grad|``
  within ``fd_rtol`` (float32 unrolls; the stated tolerance).

  Returns:
    The loss at ``meta_params``.
  """
  params = tiny_params(jax.random.key(1))
  value_and_grad = jax.jit(jax.value_and_grad(lambda mp: unroll_loss(lo, mp, params, steps)))
  f = lambda mp: value_and_grad(mp)[0]  # reuses the compiled function
  loss, grad = value_and_grad(meta_params)
  leaves = jax.tree.leaves(grad)
  assert all(np.all(np.isfinite(np.asarray(x))) for x in leaves), "non-finite meta-gradient"
  norm = float(np.sqrt(sum(float(jnp.sum(jnp.square(x))) for x in leaves)))
  assert norm > 0.0, "zero meta-gradient"
  v = jax.tree.map(lambda x: x / norm, grad)
  shift = lambda sgn: jax.tree.map(lambda a, d: a + sgn * fd_eps * d, meta_params, v)
  fd = (float(f(shift(1.0))) - float(f(shift(-1.0)))) / (2 * fd_eps)
  assert abs(fd - norm) <= fd_rtol * norm, f"finite difference {fd} vs |grad| {norm}"
  return float(loss)


def check_vmap(lo, meta_params_list, reference_loss=None, steps: int = 3):
  """Vmaps the unroll over stacked meta-params *and* task instances (initial params).

  Instance ``i`` uses ``meta_params_list[i]`` and ``tiny_params(key(i + 1))``, so
  instance 0 equals :func:`check_meta_grad`'s problem and must reproduce
  ``reference_loss``.

  Returns:
    The ``(len(meta_params_list),)`` final losses.
  """
  n = len(meta_params_list)
  stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *meta_params_list)
  params = jax.tree.map(lambda *xs: jnp.stack(xs),
                        *[tiny_params(jax.random.key(i + 1)) for i in range(n)])
  losses = jax.jit(jax.vmap(lambda mp, p: unroll_loss(lo, mp, p, steps)))(stacked, params)
  losses = np.asarray(losses)
  assert losses.shape == (n,) and np.all(np.isfinite(losses))
  if reference_loss is not None:
    np.testing.assert_allclose(losses[0], reference_loss, rtol=1e-4)
  return losses
