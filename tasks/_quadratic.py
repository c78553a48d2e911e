"""Noisy ill-conditioned quadratics."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from tasks._base import Task

__all__ = ["Quadratic"]


class Quadratic(Task):
  r"""``f(x) = 1/2 sum_i h_i (x_i - x*_i)^2 + eps . x`` with ``eps ~ N(0, noise^2)``.

  The curvatures ``h_i`` are log-spaced from 1 to ``condition``; the optimum
  ``x*`` is drawn from ``seed``. The batch is the gradient noise ``eps``, so the
  stochastic gradient is ``h * (x - x*) + eps``.

  With ``rotate=True`` the curvature is ``Q^T diag(h) Q`` for a random rotation
  ``Q`` (drawn from ``seed``): the same spectrum, but no longer aligned with the
  coordinates, so per-coordinate scaling (Adam) cannot undo the conditioning.
  """

  def __init__(self, dim: int = 10, condition: float = 10.0, noise: float = 0.0,
               seed: int = 0, rotate: bool = False):
    self.name = "quadratic"
    self.dim, self.condition, self.noise, self.seed = int(dim), float(condition), float(noise), seed
    self.rotate = bool(rotate)
    self.h = jnp.asarray(np.logspace(0.0, np.log10(self.condition), self.dim), jnp.float32)
    self.x_star = jax.random.normal(jax.random.key(seed), (self.dim,), jnp.float32)
    k_rot = jax.random.fold_in(jax.random.key(seed), 1)
    self.q = (jnp.linalg.qr(jax.random.normal(k_rot, (self.dim, self.dim), jnp.float32))[0]
              if rotate else None)
    # E[f(x0)] with x0 ~ N(0, I): 1/2 (sum h + |x*|_A^2), A the curvature.
    self.loss_scale = float(0.5 * (jnp.sum(self.h) + jnp.sum(self.h * self._rot(self.x_star)**2)))

  def _rot(self, x):
    return x if self.q is None else self.q @ x

  def config(self):
    return {"dim": self.dim, "condition": self.condition, "noise": self.noise, "seed": self.seed,
            "rotate": self.rotate}

  def init(self, key):
    return {"x": jax.random.normal(key, (self.dim,), jnp.float32)}

  def batch(self, key, split="train"):
    del split
    return self.noise * jax.random.normal(key, (self.dim,), jnp.float32)

  def loss(self, params, key, batch):
    del key
    x = params["x"].astype(jnp.float32)
    return 0.5 * jnp.sum(self.h * self._rot(x - self.x_star) ** 2) + jnp.dot(batch, x)

  def metrics(self, params, key, batch):
    x = params["x"].astype(jnp.float32)
    return {"loss": self.loss(params, key, batch),
            "distance": jnp.linalg.norm(x - self.x_star)}
