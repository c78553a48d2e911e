"""Per-tensor helpers shared by the tensor-aware learned optimizers.

Parameters live in the padded row space of :class:`lopt._per_param_mlp.FlatLayout`
(every leaf raveled into one ``(num_rows,)`` float32 array). Per-tensor
statistics are one reduction over all rows (:meth:`FlatLayout.tensor_mean`), and
per-tensor values (an LSTM's output, a layer's combination weights) reach every
row of their tensor through one per-block gather (:func:`tensor_rows`). This
module adds that broadcast, padding masks, scale-free loss features and a
single-draw initializer for small dense layers.

Used by :mod:`lopt._hierarchical_lopt`, :mod:`lopt._layerwise_combo_lopt` and
:mod:`lopt._celo2_lopt`.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lopt._per_param_mlp import FlatLayout

__all__ = ["LOSS_FEATURE_NAMES", "LossStats", "block_valid", "chunk_mask", "dense_init",
           "init_loss_stats", "loss_features", "tensor_rms", "tensor_rms_from_blocks",
           "tensor_rows", "update_loss_stats"]

NUM_LOSS_FEATURES = 3
LOSS_FEATURE_NAMES = ("loss_fast/first", "loss_slow/first", "loss/loss_slow")


def dense_init(key: jax.Array, shapes: Sequence[tuple[int, int]],
               scales: Sequence[float] | None = None) -> list[dict[str, jax.Array]]:
  """LeCun-normal dense layers ``[{"w": (fan_in, fan_out), "b": zeros}, ...]`` from one draw.

  Same distribution as :func:`lopt._per_param_mlp.mlp_init`, but all weights come
  from a single ``jax.random.normal`` call (one small compile rather than one per
  layer, which dominates the cost of ``init`` on a CPU).

  Args:
    key: PRNG key.
    shapes: ``(fan_in, fan_out)`` of each layer.
    scales: optional extra factor per layer (e.g. 0 for a zero-initialized output).
  """
  sizes = [fi * fo for fi, fo in shapes]
  flat = jax.random.normal(key, (sum(sizes),), jnp.float32)
  parts = jnp.split(flat, np.cumsum(sizes)[:-1].tolist()) if len(sizes) > 1 else [flat]
  scales = [1.0] * len(shapes) if scales is None else scales
  return [{"w": part.reshape(fi, fo) * (sc / np.sqrt(fi)), "b": jnp.zeros((fo,), jnp.float32)}
          for part, (fi, fo), sc in zip(parts, shapes, scales)]


def tensor_rows(layout: FlatLayout, per_tensor: jax.Array) -> jax.Array:
  """Gives every row its tensor's value: ``(T, ...)`` to ``(num_rows, ...)``.

  One gather per *block* (:meth:`FlatLayout.per_block`) and a broadcast, never a
  per-row gather. Tail-padding rows get zeros.
  """
  blocks = layout.per_block(per_tensor)
  trail = per_tensor.shape[1:]
  rows = jnp.broadcast_to(blocks[:, None], (layout.num_blocks, layout.block) + trail)
  return rows.reshape((layout.num_rows,) + trail)


@functools.lru_cache(maxsize=256)
def _block_valid(layout: FlatLayout) -> np.ndarray:
  valid = np.zeros((layout.num_blocks,), np.int32)
  for off, size in zip(layout.offsets, layout.sizes):
    first, full = off // layout.block, size // layout.block
    valid[first:first + full] = layout.block
    if size % layout.block:
      valid[first + full] = size % layout.block
  return valid


def block_valid(layout: FlatLayout) -> np.ndarray:
  """``(num_blocks,)`` int32 constant: how many leading rows of each block are real."""
  return _block_valid(layout)


def chunk_mask(valid: jax.Array, block: int) -> jax.Array:
  """``(nb * block,)`` float32 mask of real rows, from one chunk's ``(nb,)`` valid counts.

  Built inside the chunk loop from :func:`block_valid` (``num_rows / block``
  integers), so no ``num_rows``-sized constant enters the program.
  """
  rows = jnp.arange(block, dtype=jnp.int32)[None, :] < valid[:, None]
  return rows.astype(jnp.float32).reshape(-1)


def tensor_rms_from_blocks(layout: FlatLayout, block_sq_sums: jax.Array,
                           eps: float = 1e-12) -> jax.Array:
  """Per-tensor root-mean-square from per-block sums of squares ``(num_blocks, ...)``."""
  return jnp.sqrt(layout.tensor_mean_from_blocks(block_sq_sums) + eps)


def tensor_rms(layout: FlatLayout, rows: jax.Array, eps: float = 1e-12) -> jax.Array:
  """Per-tensor root-mean-square of ``(num_rows, ...)`` rows whose padding rows are zero."""
  return jnp.sqrt(layout.tensor_mean(jnp.square(rows)) + eps)


class LossStats(NamedTuple):
  """Running loss statistics: the first loss and a fast and a slow moving average."""

  first: jax.Array
  fast: jax.Array
  slow: jax.Array
  seen: jax.Array  # bool: whether any loss has been seen


def init_loss_stats() -> LossStats:
  # Distinct buffers per field, so a training loop may donate the state.
  z = lambda: jnp.zeros((), jnp.float32)
  return LossStats(z(), z(), z(), jnp.zeros((), jnp.bool_))


def update_loss_stats(stats: LossStats, loss: jax.Array | None) -> LossStats:
  """Folds ``loss`` into the statistics (a no-op for ``loss=None``)."""
  if loss is None:
    return stats
  loss = jnp.asarray(loss, jnp.float32).reshape(())
  loss = jnp.where(jnp.isfinite(loss), loss, jnp.where(stats.seen, stats.slow, 0.0))
  first = jnp.where(stats.seen, stats.first, loss)
  fast = jnp.where(stats.seen, 0.7 * stats.fast + 0.3 * loss, loss)
  slow = jnp.where(stats.seen, 0.95 * stats.slow + 0.05 * loss, loss)
  # Derived from the input (not a constant) so its sharding / manual-axis type is kept.
  return LossStats(first, fast, slow, jnp.logical_or(stats.seen, True))


def loss_features(stats: LossStats, loss: jax.Array | None) -> jax.Array:
  """``(NUM_LOSS_FEATURES,)`` scale-free loss features in ``[-1, 1]``.

  The fast and slow averages relative to the first loss, and the current loss
  relative to the slow average, each as ``tanh(relative change)``; zeros when
  no loss is given. Relative changes make the features invariant to the loss's
  scale, so the same meta-parameters work on tasks with very different losses.
  """
  if loss is None:
    return jnp.zeros((NUM_LOSS_FEATURES,), jnp.float32)
  loss = jnp.asarray(loss, jnp.float32).reshape(())
  loss = jnp.where(jnp.isfinite(loss), loss, stats.slow)
  rel = lambda a, b: jnp.tanh((a - b) / (jnp.abs(b) + 1e-8))
  return jnp.stack([rel(stats.fast, stats.first), rel(stats.slow, stats.first),
                    rel(loss, stats.slow)])
