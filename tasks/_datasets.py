"""Datasets held in memory as device arrays: embedded digits, and TFDS when prepared."""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

__all__ = [
    "ArrayDataset", "DatasetNotAvailableError", "TFDS_IMAGE_DATASETS", "digits", "tfds_images",
]

#: TFDS image datasets the image tasks accept, with their TFDS names.
TFDS_IMAGE_DATASETS = {"mnist": "mnist", "fashion_mnist": "fashion_mnist", "cifar10": "cifar10"}


class DatasetNotAvailableError(RuntimeError):
  """A dataset that must be prepared locally is absent (lopt never downloads)."""


class ArrayDataset(NamedTuple):
  """Images ``(N, H, W, C)`` float32 in [0, 1] and int32 labels, per split."""
  train_x: jnp.ndarray
  train_y: jnp.ndarray
  test_x: jnp.ndarray
  test_y: jnp.ndarray
  num_classes: int

  def split(self, split: str) -> tuple[jnp.ndarray, jnp.ndarray]:
    if split == "train":
      return self.train_x, self.train_y
    if split == "test":
      return self.test_x, self.test_y
    raise ValueError(f"unknown split {split!r}; valid splits: 'train', 'test'")


@functools.cache
def digits() -> ArrayDataset:
  """scikit-learn's bundled 8x8 digits (1,797 images, 10 classes); works offline.

  A fixed permutation puts 1,500 images in ``train`` and 297 in ``test``.
  """
  from sklearn.datasets import load_digits

  data = load_digits()
  x = (data.images.astype(np.float32) / 16.0)[..., None]
  y = data.target.astype(np.int32)
  perm = np.random.default_rng(0).permutation(len(y))
  x, y = x[perm], y[perm]
  n = 1500
  return ArrayDataset(jnp.asarray(x[:n]), jnp.asarray(y[:n]), jnp.asarray(x[n:]),
                      jnp.asarray(y[n:]), 10)


def _load_split(name: str, split: str, data_dir: str | None, max_examples: int | None):
  import tensorflow_datasets as tfds

  try:
    source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
  except Exception as e:  # noqa: BLE001 - TFDS raises several types for "not prepared"
    raise DatasetNotAvailableError(
        f"TFDS dataset {name!r} (split {split!r}) is not prepared locally, and lopt never "
        f"downloads at run time ({type(e).__name__}: {e}). Prepare it with `tfds build {name}` "
        f"on a machine with network access (or set data_dir), or use the embedded "
        f"alternative: the 'digits' dataset (tasks 'digits_mlp' / 'digits_cnn').") from e
  n = len(source) if max_examples is None else min(len(source), max_examples)
  records = [source[i] for i in range(n)]
  x = np.stack([np.asarray(r["image"]) for r in records]).astype(np.float32) / 255.0
  y = np.asarray([int(r["label"]) for r in records], np.int32)
  return x, y


@functools.cache
def tfds_images(name: str, *, data_dir: str | None = None,
                max_examples: int | None = None) -> ArrayDataset:
  """Loads a prepared TFDS image dataset into memory (never downloads).

  Args:
    name: one of ``TFDS_IMAGE_DATASETS``.
    data_dir: the TFDS data directory (default: TFDS's own default).
    max_examples: keep at most this many examples per split.

  Raises:
    DatasetNotAvailableError: the data is not prepared locally; the message
      names the embedded alternative (``digits``).
  """
  if name not in TFDS_IMAGE_DATASETS:
    raise KeyError(f"unknown TFDS image dataset {name!r}; valid: {sorted(TFDS_IMAGE_DATASETS)}")
  import tensorflow_datasets as tfds

  tfds_name = TFDS_IMAGE_DATASETS[name]
  train_x, train_y = _load_split(tfds_name, "train", data_dir, max_examples)
  test_x, test_y = _load_split(tfds_name, "test", data_dir, max_examples)
  num_classes = int(tfds.builder(tfds_name, data_dir=data_dir).info.features["label"].num_classes)
  return ArrayDataset(jnp.asarray(train_x), jnp.asarray(train_y), jnp.asarray(test_x),
                      jnp.asarray(test_y), num_classes)
