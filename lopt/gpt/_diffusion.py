r"""Gaussian diffusion over parameter tokens: schedule, x0-prediction loss, samplers.

The forward process adds noise, :math:`x_t = \sqrt{\bar\alpha_t}\,x_0 +
\sqrt{1-\bar\alpha_t}\,\epsilon`; the network predicts the clean :math:`x_0`
(as G.pt does) and is trained with a masked mean-squared error. Sampling uses
DDIM (Song et al. 2021, arXiv 2010.02502) on any sub-sequence of timesteps:

.. math::

  \hat\epsilon = \frac{x_t - \sqrt{\bar\alpha_t}\hat x_0}{\sqrt{1-\bar\alpha_t}},\quad
  x_{s} = \sqrt{\bar\alpha_s}\hat x_0 + \sqrt{1-\bar\alpha_s-\sigma^2}\,\hat\epsilon
          + \sigma z,\quad
  \sigma = \eta\sqrt{\tfrac{1-\bar\alpha_s}{1-\bar\alpha_t}}
           \sqrt{1-\tfrac{\bar\alpha_t}{\bar\alpha_s}}

``eta=0`` is deterministic DDIM; ``eta=1`` is ancestral DDPM (Ho et al. 2020,
arXiv 2006.11239) — exactly DDPM when every timestep is visited.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["Schedule", "make_schedule", "q_sample", "diffusion_loss", "sample"]

#: ``model_fn(x_t, t) -> predicted x_0``; ``t`` is an int32 ``(batch,)`` timestep.
ModelFn = Callable[[jax.Array, jax.Array], jax.Array]


class Schedule(NamedTuple):
  """Noise schedule: ``alphas_cumprod[t]`` is :math:`\\bar\\alpha_t` for ``t`` in [0, T)."""
  alphas_cumprod: jax.Array

  @property
  def num_timesteps(self) -> int:
    return int(self.alphas_cumprod.shape[0])


def make_schedule(num_timesteps: int = 1000, kind: str = "linear") -> Schedule:
  """Builds a noise schedule.

  Args:
    num_timesteps: ``T``.
    kind: ``"linear"`` (betas 1e-4 .. 2e-2 scaled to ``T``, as in DDPM) or
      ``"cosine"`` (Nichol & Dhariwal 2021).
  """
  if kind == "linear":
    scale = 1000.0 / num_timesteps
    betas = np.linspace(scale * 1e-4, scale * 2e-2, num_timesteps, dtype=np.float64)
  elif kind == "cosine":
    s = 0.008
    f = np.cos((np.arange(num_timesteps + 1) / num_timesteps + s) / (1 + s) * np.pi / 2) ** 2
    betas = np.clip(1 - f[1:] / f[:-1], 0, 0.999)
  else:
    raise ValueError(f"unknown schedule {kind!r}; valid: 'linear', 'cosine'")
  return Schedule(jnp.asarray(np.cumprod(1.0 - betas), jnp.float32))


def _bcast(v: jax.Array, x: jax.Array) -> jax.Array:
  return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


def q_sample(sched: Schedule, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
  """Samples :math:`x_t` given :math:`x_0`, per-example timesteps ``t`` and ``noise``."""
  a = _bcast(sched.alphas_cumprod[t], x0)
  return jnp.sqrt(a) * x0 + jnp.sqrt(1.0 - a) * noise


def diffusion_loss(model_fn: ModelFn, sched: Schedule, key: jax.Array, x0: jax.Array,
                   mask: jax.Array | None = None) -> jax.Array:
  """The x0-prediction loss: masked MSE between ``model_fn(x_t, t)`` and ``x0``.

  Args:
    model_fn: the denoiser.
    sched: the schedule.
    key: PRNG key for timesteps and noise.
    x0: clean data ``(batch, ...)``.
    mask: optional 0/1 weights broadcastable to ``x0`` (e.g. token padding).

  Returns:
    The scalar loss.
  """
  k_t, k_n = jax.random.split(key)
  t = jax.random.randint(k_t, (x0.shape[0],), 0, sched.num_timesteps)
  noise = jax.random.normal(k_n, x0.shape, x0.dtype)
  err = jnp.square(model_fn(q_sample(sched, x0, t, noise), t) - x0)
  if mask is None:
    return jnp.mean(err)
  mask = jnp.broadcast_to(mask, x0.shape).astype(err.dtype)
  return jnp.sum(err * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def sample(model_fn: ModelFn, sched: Schedule, key: jax.Array, shape: tuple[int, ...], *,
           num_steps: int = 50, eta: float = 0.0, clip: float | None = None,
           temperature: float = 1.0) -> jax.Array:
  """Draws ``x_0`` samples with DDIM (``eta=0``) or DDPM (``eta=1``) on ``num_steps`` steps.

  Example::

    x0 = sample(lambda x, t: net(x, t), make_schedule(), key, (8, 21, 128),
                num_steps=20)

  Args:
    model_fn: the x0-predicting denoiser.
    sched: the schedule.
    key: PRNG key for the starting noise (and for ``eta > 0``).
    shape: sample shape ``(batch, ...)``.
    num_steps: number of denoising steps, 1 .. T (static).
    eta: 0 for DDIM, 1 for DDPM-like ancestral sampling.
    clip: clip predicted ``x_0`` to ``[-clip, clip]`` at every step.
    temperature: scale of the starting noise (and of the ancestral noise for
      ``eta > 0``). 1 samples the model's distribution; below 1 trades diversity
      for samples nearer its modes (as in Glow's and diffusion models' reduced-
      temperature sampling); 0 is the deterministic DDIM path from ``x_T = 0``.

  Returns:
    Samples of ``shape``.
  """
  T = sched.num_timesteps
  if not 1 <= num_steps <= T:
    raise ValueError(f"num_steps must be in [1, {T}], got {num_steps}")
  ts = np.unique(np.round(np.linspace(0, T - 1, num_steps)).astype(np.int32))[::-1]
  t_prev = np.concatenate([ts[1:], [-1]]).astype(np.int32)
  ac = sched.alphas_cumprod
  k0, key = jax.random.split(key)
  if temperature < 0:
    raise ValueError(f"temperature must be >= 0, got {temperature}")
  x = temperature * jax.random.normal(k0, shape, jnp.float32)

  def step(x, inp):
    t, s, k = inp
    a_t = ac[t]
    a_s = jnp.where(s >= 0, ac[jnp.maximum(s, 0)], 1.0)
    x0 = model_fn(x, jnp.full((shape[0],), t, jnp.int32))
    if clip is not None:
      x0 = jnp.clip(x0, -clip, clip)
    eps = (x - jnp.sqrt(a_t) * x0) / jnp.sqrt(1.0 - a_t)
    sigma = eta * jnp.sqrt((1.0 - a_s) / (1.0 - a_t)) * jnp.sqrt(1.0 - a_t / a_s)
    z = temperature * jax.random.normal(k, shape, jnp.float32)
    x = (jnp.sqrt(a_s) * x0 + jnp.sqrt(jnp.maximum(1.0 - a_s - sigma ** 2, 0.0)) * eps
         + sigma * z)
    return x, None

  keys = jax.random.split(key, len(ts))
  x, _ = jax.lax.scan(step, x, (jnp.asarray(ts), jnp.asarray(t_prev), keys))
  return x
