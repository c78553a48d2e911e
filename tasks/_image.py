"""Image classification MLPs and CNNs on in-memory datasets."""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from tasks._base import Task
from tasks._datasets import ArrayDataset, digits, tfds_images

__all__ = ["ImageCNN", "ImageMLP", "ACTIVATIONS"]

ACTIVATIONS = {"relu": nn.relu, "tanh": nn.tanh, "gelu": nn.gelu, "elu": nn.elu,
               "swish": nn.swish, "leaky_relu": nn.leaky_relu, "selu": nn.selu,
               "softplus": nn.softplus, "sigmoid": nn.sigmoid}


def _activation(name: str):
  if name not in ACTIVATIONS:
    raise KeyError(f"unknown activation {name!r}; valid: {sorted(ACTIVATIONS)}")
  return ACTIVATIONS[name]


class _MLP(nn.Module):
  hidden: Sequence[int]
  num_classes: int
  activation: str
  layer_norm: bool = False

  @nn.compact
  def __call__(self, x):
    x = x.reshape((x.shape[0], -1))
    for h in self.hidden:
      x = nn.Dense(h)(x)
      if self.layer_norm:
        x = nn.LayerNorm()(x)
      x = _activation(self.activation)(x)
    return nn.Dense(self.num_classes)(x)


class _CNN(nn.Module):
  channels: Sequence[int]
  num_classes: int
  activation: str

  @nn.compact
  def __call__(self, x):
    for c in self.channels:
      x = _activation(self.activation)(nn.Conv(c, (3, 3), strides=(2, 2))(x))
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes)(x)


def _load(dataset: str) -> ArrayDataset:
  if dataset == "digits":
    return digits()
  return tfds_images(dataset)


class _ImageTask(Task):
  """Shared batch/loss/metrics for image classifiers."""

  def __init__(self, model: nn.Module, dataset: str, batch_size: int):
    self.data = _load(dataset)
    self.dataset, self.batch_size, self.model = dataset, int(batch_size), model
    self.loss_scale = float(jnp.log(self.data.num_classes))

  def init(self, key):
    return self.model.init(key, self.data.train_x[:1])["params"]

  def batch(self, key, split="train"):
    x, y = self.data.split(split)
    idx = jax.random.randint(key, (self.batch_size,), 0, x.shape[0])
    return x[idx], y[idx]

  def eval_batch(self, key, split="test"):
    """Returns the whole split ``(images, labels)``; ``key`` is unused."""
    del key
    return self.data.split(split)

  def full_batch(self, split: str = "test"):
    """The whole split as one batch: ``eval_batch`` without a key."""
    return self.data.split(split)

  def _logits(self, params, x):
    params = jax.tree.map(lambda p: p.astype(jnp.float32), params)
    return self.model.apply({"params": params}, x)

  def loss(self, params, key, batch):
    del key
    x, y = batch
    return optax.softmax_cross_entropy_with_integer_labels(self._logits(params, x), y).mean()

  def metrics(self, params, key, batch):
    del key
    x, y = batch
    logits = self._logits(params, x)
    return {"loss": optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(),
            "error": jnp.mean(jnp.argmax(logits, -1) != y)}


class ImageMLP(_ImageTask):
  """An MLP classifier; ``dataset`` is "digits" (embedded) or a prepared TFDS dataset.

  Each hidden layer is ``activation(Dense(x))``, or ``activation(LayerNorm(Dense(x)))``
  with ``layer_norm=True``.

  Example::

    task = tasks.ImageMLP("digits", hidden=(64, 64), activation="selu", layer_norm=True)

  Args:
    dataset: "digits" or a key of ``TFDS_IMAGE_DATASETS``.
    hidden: widths of the hidden layers.
    activation: a key of ``ACTIVATIONS``.
    batch_size: training batch size.
    layer_norm: apply LayerNorm after each hidden Dense, before the activation.
  """

  def __init__(self, dataset: str = "digits", hidden: Sequence[int] = (64, 32),
               activation: str = "relu", batch_size: int = 128, layer_norm: bool = False):
    _activation(activation)
    self.hidden, self.activation = tuple(int(h) for h in hidden), activation
    self.layer_norm = bool(layer_norm)
    self.name = f"{dataset}_mlp"
    super().__init__(_MLP(self.hidden, 0, activation), dataset, batch_size)
    self.model = _MLP(self.hidden, self.data.num_classes, activation, self.layer_norm)

  def config(self):
    return {"dataset": self.dataset, "hidden": list(self.hidden),
            "activation": self.activation, "batch_size": self.batch_size,
            "layer_norm": self.layer_norm}


class ImageCNN(_ImageTask):
  """A small strided CNN with global average pooling."""

  def __init__(self, dataset: str = "digits", channels: Sequence[int] = (16, 32),
               activation: str = "relu", batch_size: int = 128):
    _activation(activation)
    self.channels, self.activation = tuple(int(c) for c in channels), activation
    self.name = f"{dataset}_cnn"
    super().__init__(_CNN(self.channels, 0, activation), dataset, batch_size)
    self.model = _CNN(self.channels, self.data.num_classes, activation)

  def config(self):
    return {"dataset": self.dataset, "channels": list(self.channels),
            "activation": self.activation, "batch_size": self.batch_size}
