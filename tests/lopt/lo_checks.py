"""Meta-level checks shared by learned-optimizer tests: unrolls, meta-gradients, vmap.

``unroll_loss(lo, meta_params, params)`` trains a tiny quadratic for a few steps with
``lo.transform(meta_params, num_steps)`` inside ``lax.scan`` and returns the final loss;
:func:`check_meta_grad_vmapped` differentiates it with respect to ``meta_params``
while vmapping over ``meta_params`` and over task instances (initial parameters).
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


def check_meta_grad_vmapped(lo, meta_params_list, *, steps: int = 3, fd_eps: float = 1e-2,
                            fd_rtol: float = 0.1):
  """Meta-gradients of an unroll vmapped over meta-params, task instances and horizons.

  Instance ``i`` unrolls ``lo.transform(meta_params_list[i], horizon_i)`` on
  ``tiny_params(key(i + 1))``, all instances in one ``jax.vmap``; the horizons
  differ per instance and are traced (as in meta-training). The gradient of
  the summed final losses gives every instance's meta-gradient (one compile for
  the whole check). Asserts finite losses, finite and nonzero meta-gradients for
  every instance, and that a central finite difference of instance 0's loss along
  its normalized gradient ``v``, ``(L(mp + eps v) - L(mp - eps v)) / (2 eps)``,
  equals ``<grad, v> = |grad|`` within ``fd_rtol`` (float32 unrolls).

  Returns:
    The ``(len(meta_params_list),)`` final losses.
  """
  n = len(meta_params_list)
  stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *meta_params_list)
  params = jax.tree.map(lambda *xs: jnp.stack(xs),
                        *[tiny_params(jax.random.key(i + 1)) for i in range(n)])

  horizons = jnp.arange(n, dtype=jnp.int32) * 10 + 10

  def total(mps):
    losses = jax.vmap(lambda mp, p, h: unroll_loss(lo, mp, p, steps, h))(mps, params, horizons)
    return jnp.sum(losses), losses

  value_and_grad = jax.jit(jax.value_and_grad(total, has_aux=True))
  (_, losses), grads = value_and_grad(stacked)
  losses = np.asarray(losses)
  assert losses.shape == (n,) and np.all(np.isfinite(losses)), losses
  leaves = [np.asarray(x) for x in jax.tree.leaves(grads)]
  assert all(np.all(np.isfinite(x)) for x in leaves), "non-finite meta-gradient"
  norms = np.sqrt(sum(np.sum(np.square(x.reshape(n, -1)), axis=1) for x in leaves))
  assert np.all(norms > 0.0), f"zero meta-gradient: {norms}"

  # Perturb instance 0 only: the summed loss changes by instance 0's loss alone.
  mask = (np.arange(n) == 0).astype(np.float32)
  v = jax.tree.map(lambda g: g * mask.reshape((n,) + (1,) * (g.ndim - 1)) / norms[0], grads)
  shifted = lambda sgn: jax.tree.map(lambda a, d: a + sgn * fd_eps * d, stacked, v)
  fd = (float(value_and_grad(shifted(1.0))[0][0])
        - float(value_and_grad(shifted(-1.0))[0][0])) / (2 * fd_eps)
  assert abs(fd - norms[0]) <= fd_rtol * norms[0], f"finite difference {fd} vs |grad| {norms[0]}"
  return losses


def check_donation(opt, params, steps: int = 2):
  """``opt.init`` returns no buffer twice, and a jitted step donating params and state runs.

  Parameters keep their dtype (``params`` may be bfloat16) and stay finite.
  """
  leaves = jax.tree.leaves(opt.init(params))
  pointers = [x.unsafe_buffer_pointer() for x in leaves]
  assert len(set(pointers)) == len(pointers), "state shares a buffer between fields"

  def step(p, s):
    loss, g = jax.value_and_grad(lambda q: tiny_loss(jax.tree.map(
        lambda x: x.astype(jnp.float32), q)))(p)
    u, s = opt.update(g, s, p, loss=loss)
    return optax.apply_updates(p, u), s

  step = jax.jit(step, donate_argnums=(0, 1))
  p, s = jax.tree.map(jnp.copy, params), opt.init(params)
  for _ in range(steps):
    p, s = step(p, s)
  for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(params)):
    assert a.dtype == b.dtype and a.shape == b.shape
    assert np.all(np.isfinite(np.asarray(a, np.float32)))


def check_scan_under_shard_map(lo, meta_params, steps: int = 2):
  """Unrolls ``steps`` updates in a ``lax.scan`` over task instances sharded with
  ``jax.shard_map``, the optimizer state passed in (as meta-training does): the
  state, a scan carry varying over the mesh axis, must keep that type every step."""
  n = jax.device_count()
  mesh = jax.make_mesh((n,), ("tasks",))
  opt = lo.transform(meta_params, 10)
  params = jax.tree.map(lambda *xs: jnp.stack(xs),
                        *[tiny_params(jax.random.key(i + 1)) for i in range(n)])
  states = jax.vmap(opt.init)(params)

  def per_device(p, s):
    p, s = jax.tree.map(lambda x: x[0], (p, s))

    def body(carry, _):
      p, s = carry
      loss, g = jax.value_and_grad(tiny_loss)(p)
      u, s = opt.update(g, s, p, loss=loss)
      return (optax.apply_updates(p, u), s), loss

    _, losses = jax.lax.scan(body, (p, s), None, length=steps)
    return losses[None]

  spec = jax.sharding.PartitionSpec("tasks")
  params, states = jax.device_put((params, states), jax.sharding.NamedSharding(mesh, spec))
  losses = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(spec, spec),
                                 out_specs=spec))(params, states)
  assert losses.shape == (n, steps) and np.all(np.isfinite(np.asarray(losses)))
