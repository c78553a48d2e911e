"""Variants of the embedded digits: class subsets, fixed image transforms, few-shot subsets.

The targets of the fine-tuning tasks (:mod:`tasks._finetune`) and the sources
their backbones are pretrained on are all built here from :func:`tasks.digits`'s
deterministic train/test split.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax.numpy as jnp
import numpy as np

from tasks._datasets import ArrayDataset, digits
from tasks._image import _ImageTask

__all__ = ["DIGIT_SOURCES", "DIGIT_TRANSFORMS", "DigitsVariantTask", "digits_variant",
           "transform_images"]

#: Standard deviation of the Gaussian pixel noise of the "noise" transform.
NOISE_STD = 0.2
#: Seeds of the fixed noise drawn for the train and test splits.
_NOISE_SEEDS = {"train": 0, "test": 1}


def _rotate(images: np.ndarray, degrees: float) -> np.ndarray:
  """Rotates ``(N, H, W, C)`` images counterclockwise (as displayed, row 0 at the top)."""
  if degrees % 90 == 0:
    return np.rot90(images, int(degrees // 90), axes=(1, 2))
  import scipy.ndimage

  out = scipy.ndimage.rotate(images, degrees, axes=(1, 2), reshape=False, order=1,
                             mode="constant", cval=0.0)
  return np.clip(out, 0.0, 1.0)


def _shift(images: np.ndarray, pixels: int) -> np.ndarray:
  """Moves the content ``pixels`` down and right; the uncovered border is 0."""
  out = np.zeros_like(images)
  out[:, pixels:, pixels:] = images[:, :-pixels, :-pixels]
  return out


def _noise(images: np.ndarray, split: str) -> np.ndarray:
  rng = np.random.default_rng(_NOISE_SEEDS[split])
  return np.clip(images + NOISE_STD * rng.standard_normal(images.shape, np.float32), 0.0, 1.0)


#: Fixed image transforms by name; ``"a+b"`` applies ``a`` then ``b``.
DIGIT_TRANSFORMS = {
    "none": lambda x, split: x,
    "rotate90": lambda x, split: _rotate(x, 90),
    "rotate180": lambda x, split: _rotate(x, 180),
    "rotate30": lambda x, split: _rotate(x, 30),
    "shift1": lambda x, split: _shift(x, 1),
    "shift2": lambda x, split: _shift(x, 2),
    "noise": _noise,
    "invert": lambda x, split: 1.0 - x,
}

#: Source datasets a digits backbone is pretrained on: the digit classes each keeps.
DIGIT_SOURCES = {"digits_0to4": (0, 1, 2, 3, 4), "digits_5to9": (5, 6, 7, 8, 9),
                 "digits": tuple(range(10))}


def _check_transform(transform: str) -> list[str]:
  parts = transform.split("+")
  for p in parts:
    if p not in DIGIT_TRANSFORMS:
      raise KeyError(f"unknown digit transform {p!r} in {transform!r}; valid: "
                     f"{sorted(DIGIT_TRANSFORMS)} (join several with '+')")
  return parts


def transform_images(transform: str, images: np.ndarray, split: str = "train") -> np.ndarray:
  """Applies the fixed transform ``transform`` to ``(N, 8, 8, 1)`` images in [0, 1].

  * ``rotate90``, ``rotate180``, ``rotate30``: counterclockwise as displayed
    (``np.rot90`` for multiples of 90 degrees, bilinear otherwise, zero fill);
  * ``shift1``, ``shift2``: the digit moves that many pixels down and right;
  * ``noise``: fixed Gaussian noise of std ``NOISE_STD`` (its own seed per split), clipped;
  * ``invert``: ``1 - x``.

  Example::

    x = tasks.digits().train_x
    rotated = tasks.transform_images("rotate90+invert", np.asarray(x))

  Args:
    transform: a key of ``DIGIT_TRANSFORMS``, or several joined by ``"+"``.
    images: float images ``(N, H, W, C)``.
    split: "train" or "test" (selects the fixed noise).

  Returns:
    The transformed images, float32.
  """
  out = np.asarray(images, np.float32)
  for p in _check_transform(transform):
    out = DIGIT_TRANSFORMS[p](out, split)
  return np.ascontiguousarray(out, dtype=np.float32)


def _few_shot(y: np.ndarray, num_classes: int, shots: int, seed: int) -> np.ndarray:
  """Sorted indices of ``shots`` examples per class, drawn without replacement from ``seed``."""
  rng = np.random.default_rng(seed)
  picked = []
  for c in range(num_classes):
    idx = np.flatnonzero(y == c)
    if shots > idx.size:
      raise ValueError(f"shots={shots} but class {c} has only {idx.size} training examples")
    picked.append(rng.choice(idx, shots, replace=False))
  return np.sort(np.concatenate(picked))


@functools.cache
def _variant(classes: tuple[int, ...], transform: str, shots: int, shot_seed: int):
  data = digits()
  splits = {}
  for split in ("train", "test"):
    x, y = (np.asarray(a) for a in data.split(split))
    # Transform every image first, so an image's fixed noise does not depend on the subset.
    x = transform_images(transform, x, split)
    keep = np.isin(y, classes)
    relabel = np.full(10, -1, np.int32)
    relabel[list(classes)] = np.arange(len(classes), dtype=np.int32)
    splits[split] = (x[keep], relabel[y[keep]])
  if shots:
    idx = _few_shot(splits["train"][1], len(classes), shots, shot_seed)
    splits["train"] = tuple(a[idx] for a in splits["train"])
  (tx, ty), (vx, vy) = splits["train"], splits["test"]
  return ArrayDataset(jnp.asarray(tx), jnp.asarray(ty), jnp.asarray(vx), jnp.asarray(vy),
                      len(classes))


def digits_variant(classes: Sequence[int] = tuple(range(10)), transform: str = "none",
                   shots: int = 0, shot_seed: int = 0) -> ArrayDataset:
  """A variant of :func:`tasks.digits`: some classes, a fixed transform, few shots.

  Both splits keep the images of ``classes``, relabelled ``0..len(classes)-1`` in
  the order given (``classes=(5, 6, 7, 8, 9)`` labels a 5 as 0), and are
  transformed by ``transform``; with ``shots > 0`` the train split keeps
  ``shots`` images per class, drawn from ``shot_seed`` (the test split stays whole).

  Example::

    data = tasks.digits_variant((5, 6, 7, 8, 9), "rotate90", shots=10)
    data.train_x.shape   # (50, 8, 8, 1)

  Args:
    classes: distinct digits 0-9.
    transform: see :func:`transform_images`.
    shots: training examples per class; 0 keeps all.
    shot_seed: seed of the few-shot draw.

  Returns:
    An :class:`ArrayDataset` with ``num_classes = len(classes)``.

  Raises:
    ValueError: bad classes or shots. KeyError: unknown transform.
  """
  classes = tuple(int(c) for c in classes)
  if not classes or len(set(classes)) != len(classes) or not all(0 <= c <= 9 for c in classes):
    raise ValueError(f"classes must be distinct digits 0-9, got {list(classes)}")
  if int(shots) < 0:
    raise ValueError(f"shots must be >= 0 (0 keeps all), got {shots}")
  _check_transform(transform)
  return _variant(classes, transform, int(shots), int(shot_seed))


class DigitsVariantTask(_ImageTask):
  """The classifier of an :class:`ImageMLP` / :class:`ImageCNN` trained on a digits variant.

  Batches, loss and metrics are the image tasks'; the model is ``base``'s with
  ``data.num_classes`` outputs. ``base_config`` records ``base.config()``.
  """

  def __init__(self, base: _ImageTask, data: ArrayDataset, batch_size: int | None = None):
    # The image tasks' __init__ loads a dataset by name; this one is given its data.
    self.base_config = base.config()
    self.name = f"{base.name}_variant"
    self.data, self.dataset = data, base.dataset
    self.batch_size = base.batch_size if batch_size is None else int(batch_size)
    self.model = base.model.clone(num_classes=data.num_classes)
    self.loss_scale = float(np.log(data.num_classes))
