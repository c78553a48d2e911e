"""A tiny learned optimizer for meta-training tests: learned log learning rate + momentum."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

import lopt


class TinyState(NamedTuple):
  momentum: optax.Params


class TinyLOpt(lopt.LearnedOptimizer):
  """``m = sigmoid(a) m + g; update = -exp(b) m`` with meta-params ``{a, b}``."""

  name = "tiny_lopt"

  def __init__(self, lr: float = 0.05, momentum: float = 0.5):
    self.lr, self.momentum = float(lr), float(momentum)

  def config(self):
    return {"lr": self.lr, "momentum": self.momentum}

  def init(self, key):
    del key
    return {"log_lr": jnp.asarray(jnp.log(self.lr), jnp.float32),
            "logit_momentum": jnp.asarray(jnp.log(self.momentum / (1 - self.momentum)),
                                          jnp.float32)}

  def transform(self, meta_params, num_steps=None):
    del num_steps
    lr = jnp.exp(meta_params["log_lr"])
    beta = jax.nn.sigmoid(meta_params["logit_momentum"])

    def init_fn(params):
      return TinyState(jax.tree.map(jnp.zeros_like, params))

    def update_fn(updates, state, params=None, **extra):
      del params, extra
      m = jax.tree.map(lambda m, g: beta * m + g, state.momentum, updates)
      return jax.tree.map(lambda m: -lr * m, m), TinyState(m)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


class NaNLOpt(TinyLOpt):
  """TinyLOpt whose updates are NaN once ``log_lr`` exceeds ``nan_above``."""

  name = "nan_lopt"

  def __init__(self, lr: float = 0.05, momentum: float = 0.5, nan_above: float = 100.0):
    super().__init__(lr, momentum)
    self.nan_above = float(nan_above)

  def config(self):
    return {**super().config(), "nan_above": self.nan_above}

  def transform(self, meta_params, num_steps=None):
    tx = super().transform(meta_params, num_steps)
    bad = meta_params["log_lr"] > self.nan_above

    def update_fn(updates, state, params=None, **extra):
      u, s = tx.update(updates, state, params, **extra)
      return jax.tree.map(lambda x: jnp.where(bad, jnp.nan, x), u), s

    return optax.GradientTransformationExtraArgs(tx.init, update_fn)
