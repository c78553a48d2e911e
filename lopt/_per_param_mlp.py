"""The fast per-parameter MLP kernel shared by every per-parameter learned optimizer.

A per-parameter learned optimizer applies one small MLP to every scalar parameter.
Written naively -- one small MLP call per leaf, or one matmul over the whole
``(num_params, num_features)`` array -- XLA sees either many tiny ops or matmuls
whose activations spill out of cache (docs/speed.md has the figures). This module
lays every leaf of a parameter tree out in one flat, padded *row space* and walks
it in cache-sized chunks, so each MLP layer is one matmul per chunk inside one
loop (``lax.map``), and feature computation can be fused into the same loop.

Row layout (:class:`FlatLayout`, static, built from shapes only)::

  leaf 0 | pad | leaf 1 | pad | ... | leaf L-1 | pad | tail pad
  ^ each leaf is raveled and zero-padded to a multiple of ``block`` rows, so every
    block of rows belongs to exactly one tensor (``layout.block_ids``); the total
    is padded to ``num_chunks * chunk`` rows with ``chunk`` a multiple of ``block``.

Per-tensor quantities (feature normalizers, per-tensor features) are reduced with
:meth:`FlatLayout.tensor_mean` and broadcast back per *block* with
:meth:`FlatLayout.per_block` -- a tiny gather -- never per row.

API::

  layout = FlatLayout.from_tree(params)          # cached; chunk from default_chunk()
  g = layout.flatten(grads)                       # (num_rows,) float32, one concatenate
  x = stack_leaf_features([grads, params], layout)  # (num_rows, F)
  w = mlp_init(key, (F, 32, 32, 2))              # [{"w": (F, 32), "b": (32,)}, ...]
  y = mlp_apply(w, x)                             # chunked; == mlp_apply_reference(w, x)
  step = layout.unflatten(y[:, 0])                # leaf shapes and dtypes (bf16 ok)
  # fused, feature-major (what mlp_lopt does): features (F, chunk) built in the loop
  y = layout.map_chunks(lambda g_c: mlp_forward_t(w, feats(g_c)), layout.chunked(g))

Features are computed in float32 whatever the parameter dtype; :meth:`unflatten`
casts each leaf back to its parameter's dtype. Everything here is pure, jit-able,
vmap-able (over task instances and over MLP weights) and differentiable.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from lopt._horizon import Horizon, is_unknown

__all__ = ["FlatLayout", "TIME_FEATURE_NAMES", "mlp_apply", "mlp_apply_reference",
           "mlp_apply_t", "default_chunk", "mlp_flops", "mlp_forward", "mlp_forward_t", "mlp_init",
           "stack_leaf_features", "time_features"]

DEFAULT_BLOCK = 128
DEFAULT_CHUNK = 16384          # rows per chunk on CPU: the chunk's activations stay in cache
ACCELERATOR_CHUNK = 1 << 22    # on GPU/TPU one large chunk (no loop) is fastest


def default_chunk() -> int:
  """Rows per chunk for the default backend: cache-sized on CPU, whole arrays elsewhere."""
  return DEFAULT_CHUNK if jax.default_backend() == "cpu" else ACCELERATOR_CHUNK

MLPWeights = Sequence[dict[str, jax.Array]]


@dataclasses.dataclass(frozen=True)
class FlatLayout:
  """Static description of how a parameter tree maps to padded, chunked rows.

  Attributes:
    treedef: the tree structure of the parameters.
    shapes: each leaf's shape.
    dtypes: each leaf's dtype name.
    offsets: each leaf's first row.
    block: rows per block; each block belongs to one leaf (or to the tail padding).
    chunk: rows per chunk of the MLP loop (a multiple of ``block``).
    num_chunks: number of chunks; ``num_rows = num_chunks * chunk``.
  """

  treedef: Any
  shapes: tuple[tuple[int, ...], ...]
  dtypes: tuple[str, ...]
  offsets: tuple[int, ...]
  block: int
  chunk: int
  num_chunks: int

  @staticmethod
  def from_tree(tree: Any, *, block: int = DEFAULT_BLOCK, max_chunk: int | None = None
                ) -> "FlatLayout":
    """Builds (or fetches from a cache) the layout of ``tree``'s leaves.

    Args:
      tree: a pytree of arrays (or ``jax.ShapeDtypeStruct``); only shapes, dtypes
        and structure are read, so traced arrays are fine.
      block: rows per block (leaf padding granularity).
      max_chunk: the largest number of rows processed per loop iteration; None
        picks :func:`default_chunk` for the default backend.

    Returns:
      A hashable :class:`FlatLayout`.
    """
    leaves, treedef = jax.tree.flatten(tree)
    shapes = tuple(tuple(int(d) for d in np.shape(x)) for x in leaves)
    dtypes = tuple(jnp.dtype(x.dtype).name for x in leaves)
    if max_chunk is None:
      max_chunk = default_chunk()
    return _make_layout(treedef, shapes, dtypes, block, max_chunk)

  @property
  def sizes(self) -> tuple[int, ...]:
    return tuple(math.prod(s) for s in self.shapes)

  @property
  def num_params(self) -> int:
    """The number of real (unpadded) scalar parameters."""
    return sum(self.sizes)

  @property
  def num_leaves(self) -> int:
    return len(self.shapes)

  @property
  def num_rows(self) -> int:
    """The padded number of rows, ``num_chunks * chunk``."""
    return self.num_chunks * self.chunk

  @property
  def num_blocks(self) -> int:
    return self.num_rows // self.block

  @property
  def block_ids(self) -> np.ndarray:
    """``(num_blocks,)`` int32: the leaf of each block; ``num_leaves`` for tail padding."""
    return _block_ids(self)

  # ---- tree <-> rows --------------------------------------------------------------
  def flatten(self, tree: Any, dtype: Any = jnp.float32) -> jax.Array:
    """Ravels and zero-pads every leaf into one ``(num_rows,)`` array of ``dtype``."""
    leaves = self.treedef.flatten_up_to(tree)
    parts = []
    end = 0
    for leaf, off, size in zip(leaves, self.offsets, self.sizes):
      if off > end:
        parts.append(jnp.zeros((off - end,), dtype))
      parts.append(jnp.ravel(leaf).astype(dtype))
      end = off + size
    if self.num_rows > end:
      parts.append(jnp.zeros((self.num_rows - end,), dtype))
    return jnp.concatenate(parts)

  def unflatten(self, flat: jax.Array, *, dtype: Any = None) -> Any:
    """Scatters a ``(num_rows, ...)`` array back into the tree.

    Args:
      flat: rows in this layout; trailing dimensions are kept per leaf.
      dtype: the dtype of every leaf; by default each leaf gets its parameter's dtype.

    Returns:
      A pytree with the parameter structure and leaf shapes ``shape + flat.shape[1:]``.
    """
    trail = flat.shape[1:]
    leaves = []
    for off, size, shape, dt in zip(self.offsets, self.sizes, self.shapes, self.dtypes):
      leaf = lax.slice_in_dim(flat, off, off + size, axis=0).reshape(shape + trail)
      leaves.append(leaf.astype(dt if dtype is None else dtype))
    return self.treedef.unflatten(leaves)

  # ---- per-tensor reductions -------------------------------------------------------
  def tensor_sum(self, x: jax.Array) -> jax.Array:
    """Sums ``(num_rows, ...)`` rows per leaf: ``(num_leaves, ...)`` (padding excluded)."""
    return self.tensor_sum_from_blocks(self.block_sums(x))

  def tensor_mean(self, x: jax.Array) -> jax.Array:
    """Means of ``(num_rows, ...)`` rows per leaf over its real elements."""
    return self.tensor_mean_from_blocks(self.block_sums(x))

  def block_sums(self, x: jax.Array) -> jax.Array:
    """Sums each block of rows: ``(rows, ...)`` -> ``(rows // block, ...)``.

    Works on the whole row space or on one chunk (inside :meth:`map_chunks`, so a
    fused loop can emit per-block statistics without materializing its features).
    """
    return x.reshape((x.shape[0] // self.block, self.block) + x.shape[1:]).sum(axis=1)

  def tensor_sum_from_blocks(self, block_sums: jax.Array) -> jax.Array:
    """Per-leaf sums ``(num_leaves, ...)`` from per-block sums ``(num_blocks, ...)``."""
    sums = jax.ops.segment_sum(block_sums, jnp.asarray(self.block_ids),
                               num_segments=self.num_leaves + 1, indices_are_sorted=True)
    return sums[:self.num_leaves]

  def tensor_mean_from_blocks(self, block_sums: jax.Array) -> jax.Array:
    """Per-leaf means over real elements from per-block sums ``(num_blocks, ...)``."""
    counts = np.maximum(np.asarray(self.sizes, np.float32), 1.0)
    counts = counts.reshape((-1,) + (1,) * (block_sums.ndim - 1))
    return self.tensor_sum_from_blocks(block_sums) / counts

  def per_block(self, per_tensor: jax.Array, fill: float = 0.0) -> jax.Array:
    """Broadcasts ``(num_leaves, ...)`` values to ``(num_blocks, ...)`` (tail gets ``fill``)."""
    pad = jnp.full((1,) + per_tensor.shape[1:], fill, per_tensor.dtype)
    return jnp.concatenate([per_tensor, pad])[jnp.asarray(self.block_ids)]

  # ---- chunking -----------------------------------------------------------------
  def chunked(self, rows: jax.Array) -> jax.Array:
    """``(num_rows, ...)`` -> ``(num_chunks, chunk, ...)`` (a free reshape)."""
    return rows.reshape((self.num_chunks, self.chunk) + rows.shape[1:])

  def chunked_blocks(self, blocks: jax.Array) -> jax.Array:
    """``(num_blocks, ...)`` -> ``(num_chunks, chunk // block, ...)``."""
    return blocks.reshape((self.num_chunks, self.chunk // self.block) + blocks.shape[1:])

  def unchunk(self, chunks: jax.Array) -> jax.Array:
    """``(num_chunks, chunk, ...)`` -> ``(num_rows, ...)``."""
    return chunks.reshape((self.num_rows,) + chunks.shape[2:])

  def map_chunks(self, fn: Callable[..., Any], *chunked_args: Any) -> Any:
    """Applies ``fn`` to one chunk of every argument at a time (``lax.map``).

    Arguments are pytrees of arrays with a leading ``num_chunks`` axis (from
    :meth:`chunked` or :meth:`chunked_blocks`); ``fn`` sees one chunk of each.
    With a single chunk the loop is skipped.
    """
    if self.num_chunks == 1:
      return jax.tree.map(lambda a: a[None], fn(*jax.tree.map(lambda a: a[0], chunked_args)))
    return lax.map(lambda args: fn(*args), chunked_args)


@functools.lru_cache(maxsize=256)
def _make_layout(treedef, shapes, dtypes, block, max_chunk) -> FlatLayout:
  if max_chunk % block:
    raise ValueError(f"max_chunk={max_chunk} must be a multiple of block={block}")
  offsets, rows = [], 0
  for shape in shapes:
    offsets.append(rows)
    rows += -(-math.prod(shape) // block) * block
  rows = max(rows, block)
  num_chunks = -(-rows // max_chunk)
  chunk = -(-(-(-rows // num_chunks)) // block) * block
  return FlatLayout(treedef, shapes, dtypes, tuple(offsets), block, chunk, num_chunks)


@functools.lru_cache(maxsize=256)
def _block_ids(layout: FlatLayout) -> np.ndarray:
  ids = np.full((layout.num_blocks,), layout.num_leaves, np.int32)
  for i, (off, size) in enumerate(zip(layout.offsets, layout.sizes)):
    first = off // layout.block
    ids[first:first + -(-size // layout.block)] = i
  return ids


def stack_leaf_features(feature_trees: Sequence[Any], layout: FlatLayout) -> jax.Array:
  """Stacks per-parameter features of all leaves into one ``(num_rows, F)`` float32 array.

  Args:
    feature_trees: ``F`` pytrees shaped like the parameters (gradients, momenta, ...).
    layout: the parameters' :class:`FlatLayout`.

  Returns:
    ``(layout.num_rows, F)``; padding rows are zero.
  """
  return jnp.stack([layout.flatten(t) for t in feature_trees], axis=-1)


# The MLP: plain init/apply functions over a list of {"w", "b"} layers.

def mlp_init(key: jax.Array, sizes: Sequence[int], *, final_scale: float = 1.0
             ) -> list[dict[str, jax.Array]]:
  """Initializes an MLP with layer sizes ``sizes`` (input first, output last).

  Weights are LeCun-normal (variance ``1 / fan_in``), biases zero; the last layer's
  weights are multiplied by ``final_scale``.
  """
  keys = jax.random.split(key, len(sizes) - 1)
  layers = []
  for i, (k, fi, fo) in enumerate(zip(keys, sizes[:-1], sizes[1:])):
    w = jax.random.normal(k, (fi, fo), jnp.float32) / np.sqrt(fi)
    if i == len(sizes) - 2:
      w = w * final_scale
    layers.append({"w": w, "b": jnp.zeros((fo,), jnp.float32)})
  return layers


def mlp_forward(weights: MLPWeights, x: jax.Array, *, first_bias: jax.Array | None = None
                ) -> jax.Array:
  """``relu(... relu(x @ w0 + b0) ...) @ wL + bL`` on one chunk of rows.

  Args:
    weights: layers ``[{"w": (fan_in, fan_out), "b": (fan_out,)}, ...]``.
    x: ``(..., rows, fan_in)``.
    first_bias: optional extra bias added after the first matmul, broadcastable to
      ``(..., rows, fan_out)``; used to fold row-constant features (time embedding)
      and per-block features into the first layer instead of widening ``x``.
  """
  h = x
  for i, layer in enumerate(weights):
    h = jnp.matmul(h, layer["w"]) + layer["b"].reshape((1,) * (h.ndim - 1) + (-1,))
    if i == 0 and first_bias is not None:
      h = h + first_bias
    if i < len(weights) - 1:
      h = jax.nn.relu(h)
  return h


def mlp_forward_t(weights: MLPWeights, x_t: jax.Array, *,
                  first_bias: jax.Array | None = None) -> jax.Array:
  """Feature-major :func:`mlp_forward`: ``x_t`` is ``(fan_in, rows)``, returns ``(fan_out, rows)``.

  Each layer is ``w.T @ h`` on long contiguous rows, so features computed
  feature-major (every elementwise op on contiguous ``(rows,)`` vectors) feed the
  MLP without a transpose. ``first_bias`` broadcasts to ``(fan_out_0, rows)``.
  """
  h = x_t
  for i, layer in enumerate(weights):
    h = jnp.matmul(layer["w"].T, h) + layer["b"][:, None]
    if i == 0 and first_bias is not None:
      h = h + first_bias
    if i < len(weights) - 1:
      h = jax.nn.relu(h)
  return h


def mlp_apply(weights: MLPWeights, x: jax.Array, *, chunk: int = DEFAULT_CHUNK) -> jax.Array:
  """Applies the MLP to every row of ``x`` in cache-sized chunks.

  The rows are padded to a multiple of ``chunk`` and processed by ``lax.map``, so XLA
  compiles one loop whose body does one matmul per layer on ``chunk`` rows that stay
  in cache. Equal to :func:`mlp_apply_reference` up to float rounding.

  Args:
    weights: MLP layers (see :func:`mlp_init`).
    x: ``(num_rows, fan_in)``.
    chunk: rows per loop iteration (16k-64k suits CPU caches).

  Returns:
    ``(num_rows, fan_out)``.
  """
  n = x.shape[0]
  if n <= chunk:
    return mlp_forward(weights, x)
  num_chunks = -(-n // chunk)
  xp = jnp.pad(x, ((0, num_chunks * chunk - n), (0, 0)))
  y = lax.map(lambda c: mlp_forward(weights, c), xp.reshape(num_chunks, chunk, x.shape[1]))
  return y.reshape(num_chunks * chunk, -1)[:n]


def mlp_apply_t(weights: MLPWeights, x_t: jax.Array, *, chunk: int = DEFAULT_CHUNK
                ) -> jax.Array:
  """Feature-major :func:`mlp_apply`: ``(fan_in, num_rows)`` -> ``(fan_out, num_rows)``.

  Chunks of ``chunk`` columns go through :func:`mlp_forward_t` in a ``lax.map``; this
  is the MLP kernel that ``mlp_lopt`` runs (with its features computed in the loop).
  """
  n = x_t.shape[1]
  if n <= chunk:
    return mlp_forward_t(weights, x_t)
  num_chunks = -(-n // chunk)
  xp = jnp.pad(x_t, ((0, 0), (0, num_chunks * chunk - n)))
  xc = xp.reshape(x_t.shape[0], num_chunks, chunk).transpose(1, 0, 2)
  y = lax.map(lambda c: mlp_forward_t(weights, c), xc)
  return y.transpose(1, 0, 2).reshape(-1, num_chunks * chunk)[:, :n]


def mlp_apply_reference(weights: MLPWeights, x: jax.Array) -> jax.Array:
  """The straightforward form ``relu(relu(x @ w1) @ w2) @ w3`` over all rows at once."""
  return mlp_forward(weights, x)


def mlp_flops(sizes: Sequence[int], num_rows: int) -> int:
  """Multiply-add FLOPs (2 per MAC) of one MLP pass over ``num_rows`` rows."""
  return 2 * num_rows * sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))


# Row-constant features: the training-step embedding shared by per-parameter LOs.

FRACTION_SCALES = (1.0, 3.0, 10.0, 30.0, 100.0)
STEP_TIMESCALES = (10.0, 100.0, 1000.0, 10000.0)
TIME_FEATURE_NAMES = tuple([f"tanh(frac*{s:g}-1)" for s in FRACTION_SCALES]
                           + [f"tanh(step/{t:g}-1)" for t in STEP_TIMESCALES])


def time_features(count: jax.Array, num_steps: Horizon) -> jax.Array:
  """The training-step embedding: ``tanh(frac * s - 1)`` and ``tanh(step / T - 1)``.

  ``frac = step / num_steps`` for ``s`` in :data:`FRACTION_SCALES` (zeros when
  ``num_steps="unknown"``, the horizon-free mode) and absolute steps for ``T`` in
  :data:`STEP_TIMESCALES` (as learned_optimization's MLPLOpt). The same for every
  parameter, they are folded into the first layer's bias (``time_features(...) @ w``).

  Returns:
    ``(len(TIME_FEATURE_NAMES),)`` float32.
  """
  step = count.astype(jnp.float32)
  if is_unknown(num_steps):
    frac = jnp.zeros((len(FRACTION_SCALES),), jnp.float32)
  else:  # num_steps may be traced (per-instance horizons in meta-training)
    frac = jnp.tanh(step / jnp.asarray(num_steps, jnp.float32) * jnp.asarray(FRACTION_SCALES) - 1)
  absolute = jnp.tanh(step / jnp.asarray(STEP_TIMESCALES) - 1.0)
  return jnp.concatenate([frac, absolute])
