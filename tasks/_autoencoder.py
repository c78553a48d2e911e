"""MLP autoencoders on in-memory image datasets: mean squared reconstruction error."""

from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from tasks._base import Task
from tasks._image import _activation, _load

__all__ = ["ImageAutoencoder"]


class _Autoencoder(nn.Module):
  hidden: Sequence[int]
  activation: str

  @nn.compact
  def __call__(self, x):
    shape = x.shape
    x = x.reshape((shape[0], -1))
    # Encoder down to the last width (the bottleneck), decoder mirrors it back.
    widths = (*self.hidden, *reversed(self.hidden[:-1]))
    for w in widths:
      x = _activation(self.activation)(nn.Dense(w)(x))
    return nn.Dense(math.prod(shape[1:]))(x).reshape(shape)


class ImageAutoencoder(Task):
  r"""An MLP autoencoder: ``loss = mean((decode(encode(x)) - x)^2)`` over pixels.

  The encoder has widths ``hidden`` (the last is the bottleneck), the decoder
  the same widths in reverse, then a linear layer back to the pixels, e.g.
  ``hidden=(32, 8)`` on 8x8 digits is 64 -> 32 -> 8 -> 32 -> 64. A batch is
  ``batch_size`` images (labels unused); ``eval_batch`` is the whole split.

  Example::

    task = tasks.get("digits_autoencoder", hidden=(32, 8))
    result = tasks.train(task, lopt.get("adam"), 500, jax.random.key(0))

  Args:
    dataset: "digits" (embedded) or a prepared TFDS image dataset.
    hidden: encoder widths; the last is the bottleneck.
    activation: a key of ``tasks._image.ACTIVATIONS``.
    batch_size: training batch size.
  """

  def __init__(self, dataset: str = "digits", hidden: Sequence[int] = (32, 8),
               activation: str = "relu", batch_size: int = 128):
    _activation(activation)
    if not hidden:
      raise ValueError("hidden must name at least one width (the bottleneck)")
    self.name = f"{dataset}_autoencoder"
    self.dataset, self.hidden = dataset, tuple(int(h) for h in hidden)
    self.activation, self.batch_size = activation, int(batch_size)
    self.data = _load(dataset)
    self.model = _Autoencoder(self.hidden, activation)
    # The loss of reconstructing every image as zeros: about the loss at init.
    self.loss_scale = float(jnp.mean(self.data.train_x ** 2))

  def config(self):
    return {"dataset": self.dataset, "hidden": list(self.hidden),
            "activation": self.activation, "batch_size": self.batch_size}

  def init(self, key):
    return self.model.init(key, self.data.train_x[:1])["params"]

  def batch(self, key, split="train"):
    x, _ = self.data.split(split)
    return x[jax.random.randint(key, (self.batch_size,), 0, x.shape[0])]

  def eval_batch(self, key, split="test"):
    """Returns every image of ``split``; ``key`` is unused."""
    del key
    return self.data.split(split)[0]

  def loss(self, params, key, batch):
    del key
    params = jax.tree.map(lambda p: p.astype(jnp.float32), params)
    return jnp.mean((self.model.apply({"params": params}, batch) - batch) ** 2)
