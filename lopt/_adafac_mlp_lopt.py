"""``adafac_mlp_lopt``: a per-parameter MLP learned optimizer with Adafactor features.

Cheaper per parameter than ``mlp_lopt``: second moments are *factored* as in
Adafactor -- for a tensor of shape ``(..., r, c)`` only row and column accumulators
``R_j = b_j R_j + (1 - b_j) mean_c(g^2)`` and ``C_j = b_j C_j + (1 - b_j) mean_r(g^2)``
are kept, and ``v_j ~ R_j C_j^T / mean(R_j)`` (vectors keep a full accumulator) --
and the MLP is small (``hidden_layers`` x ``hidden_size``, default 2 x 8). Per
parameter the features are ``g`` and ``m_k`` (divided by the tensor's gradient rms),
``p`` (divided by the tensor's parameter rms), ``g / sqrt(v_j)`` and ``m_j / sqrt(v_j)``.
Per *tensor* features (factored or not, log size, squashed log gradient and
parameter scales) and the training-step embedding are folded into the first layer's
bias, one vector per block of rows. The output is a direction and a log-magnitude,
``step = d * exp(m * exp_mult) * step_mult``; ``updates = -step``.

State per parameter: ``len(decays)`` momenta (12 bytes at the default three decays,
against 24 for ``mlp_lopt``); the factored accumulators are ``O(r + c)`` per matrix.

Example::

  lo = lopt.learned("adafac_mlp_lopt")
  opt = lo.transform(lo.init(jax.random.key(0)), num_steps=1000)
  state = opt.init(params)
  updates, state = opt.update(grads, state, params)

References: Shazeer & Stern, "Adafactor" (arXiv 1804.04235); Metz et al.,
"Practical tradeoffs between memory, compute, and performance in learned
optimizers" (arXiv 2203.11860), whose AdafacMLPLOpt this follows in spirit.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lopt import _per_param_lopt as pp
from lopt._base import with_checks
from lopt._horizon import Horizon, check_num_steps
from lopt._per_param_mlp import TIME_FEATURE_NAMES, FlatLayout, mlp_forward_t, time_features

__all__ = ["AdafacMLPLOpt", "AdafacMLPLOptState"]

EPS = 1e-30
RS_EPS = 1e-16
TENSOR_FEATURE_NAMES = ("factored", "log(size)/10", "tanh(log(g_ms)/20)", "tanh(log(p_ms)/20)")


class AdafacMLPLOptState(NamedTuple):
  """State of ``adafac_mlp_lopt``.

  Attributes:
    momenta: ``(num_chunks, len(decays), chunk)`` float32, feature-major chunks of
      the parameters' :class:`~lopt._per_param_mlp.FlatLayout` rows.
    rows: per leaf, ``(len(decays),) + shape[:-1]`` row accumulators of ``g^2``
      (for leaves with fewer than two dimensions: the full ``(len(decays),) + shape``
      accumulator).
    cols: per leaf, ``(len(decays),) + shape[:-2] + shape[-1:]`` column accumulators
      (``(len(decays),)`` zeros for unfactored leaves).
    count: int32 scalar, the number of updates done.
  """
  momenta: jax.Array
  rows: tuple[jax.Array, ...]
  cols: tuple[jax.Array, ...]
  count: jax.Array


def _factored(shape: tuple[int, ...]) -> bool:
  return len(shape) >= 2


def _second_moment(g, row, col, decays):
  """New (row, col) accumulators and ``v`` of shape ``(D,) + g.shape``."""
  g2 = g * g + EPS
  d = decays.reshape((-1,) + (1,) * g.ndim)
  if g.ndim < 2:
    row = d * row + (1 - d) * g2[None]
    return row, col, row
  dr = decays.reshape((-1,) + (1,) * (g.ndim - 1))
  row = dr * row + (1 - dr) * jnp.mean(g2, axis=-1)[None]
  col = dr * col + (1 - dr) * jnp.mean(g2, axis=-2)[None]
  row_mean = jnp.mean(row, axis=-1, keepdims=True)
  v = (row / row_mean)[..., :, None] * col[..., None, :]
  return row, col, v


@dataclasses.dataclass(frozen=True, kw_only=True, repr=False)
class AdafacMLPLOpt(pp.MagnitudeLOpt):
  """Per-parameter MLP learned optimizer over Adafactor-style features.

  Fields of :class:`~lopt.PerParamLOpt` and :class:`~lopt.MagnitudeLOpt`
  (``hidden_size``, ``hidden_layers``, ``chunk``, ``step_mult``, ``exp_mult``), and:

  Args:
    decays: decays of the momenta and of the factored second moments.
  """

  hidden_size: int = 8
  decays: tuple[float, ...] = (0.9, 0.99, 0.999)

  name = "adafac_mlp_lopt"
  #: Per-tensor features, then the training-step embedding (first-layer bias per block).
  shared_feature_names: ClassVar[tuple[str, ...]] = TENSOR_FEATURE_NAMES + TIME_FEATURE_NAMES

  @property
  def param_feature_names(self) -> tuple[str, ...]:
    """Names of the per-parameter feature columns, in order."""
    ds = [f"{d:g}" for d in self.decays]
    return (("g", "p") + tuple(f"m{d}" for d in ds) + tuple(f"g/rms{d}" for d in ds)
            + tuple(f"m{d}/rms{d}" for d in ds))

  def transform(self, meta_params: Any, num_steps: Horizon | None = None
                ) -> optax.GradientTransformationExtraArgs:
    """Returns the optimizer for a ``num_steps`` horizon: a positive int or ``"unknown"``.

    ``num_steps`` is required (:func:`lopt._horizon.check_num_steps`); meta-training
    passes a traced int.
    """
    num_steps = check_num_steps(num_steps, self.name)
    decays = jnp.asarray(self.decays, jnp.float32)
    nd = len(self.decays)
    nf = len(self.param_feature_names)
    nt = len(TENSOR_FEATURE_NAMES)

    def init_fn(params):
      layout = self.layout(params)
      rows, cols = [], []
      for shape in layout.shapes:
        if _factored(shape):
          rows.append(jnp.zeros((nd,) + shape[:-1], jnp.float32))
          cols.append(jnp.zeros((nd,) + shape[:-2] + shape[-1:], jnp.float32))
        else:
          rows.append(jnp.zeros((nd,) + shape, jnp.float32))
          cols.append(jnp.zeros((nd,), jnp.float32))
      return AdafacMLPLOptState(
          momenta=jnp.zeros((layout.num_chunks, nd, layout.chunk), jnp.float32),
          rows=tuple(rows), cols=tuple(cols), count=jnp.zeros((), jnp.int32))

    def update_fn(updates, state, params=None, **extra):
      del extra  # loss= is accepted and ignored
      layout = self.layout(updates)
      nb, blk = layout.chunk // layout.block, layout.block
      g_leaves, finite = zip(*[pp.finite_rows(x.astype(jnp.float32))
                               for x in layout.treedef.flatten_up_to(updates)])
      p_leaves = [x.astype(jnp.float32) for x in layout.treedef.flatten_up_to(params)]

      # Per leaf: factored second moments -> rsqrt(v) rows, and per-tensor statistics.
      rows, cols, rs_parts, tensor_feats = [], [], [], []
      for g, p, row, col, shape in zip(g_leaves, p_leaves, state.rows, state.cols,
                                       layout.shapes):
        row, col, v = _second_moment(g, row, col, decays)
        rows.append(row)
        cols.append(col)
        rs_parts.append(jax.lax.rsqrt(v + RS_EPS).reshape(nd, -1))
        g_ms, p_ms = jnp.mean(g * g), jnp.mean(p * p)
        tensor_feats.append(jnp.stack([
            jnp.float32(_factored(shape)), jnp.float32(np.log(max(g.size, 1)) / 10),
            jnp.tanh(jnp.log(g_ms + EPS) / 20), jnp.tanh(jnp.log(p_ms + EPS) / 20),
            jax.lax.rsqrt(g_ms + RS_EPS), jax.lax.rsqrt(p_ms + RS_EPS)]))
      tensor_feats = jnp.stack(tensor_feats)                      # (L, nt + 2)
      rs = _flatten_lead(layout, rs_parts, nd)                     # (nd, num_rows)

      layers = meta_params["mlp"]
      w_first = layers[0]["w"]
      w_param, w_tensor = w_first[:nf], w_first[nf:nf + nt]
      time_bias = time_features(state.count + 1, num_steps) @ w_first[nf + nt:]
      tensor_bias = tensor_feats[:, :nt] @ w_tensor + time_bias[None, :]    # (L, H)
      per_block = layout.per_block(
          jnp.concatenate([tensor_bias, tensor_feats[:, nt:]], axis=1))     # (blocks, H + 2)
      body = [{"w": w_param, "b": layers[0]["b"]}] + list(layers[1:])

      g = layout.chunked(layout.flatten(layout.treedef.unflatten(g_leaves)))
      p = layout.chunked(layout.flatten(layout.treedef.unflatten(p_leaves)))

      def chunk_step(i, g_c, p_c, m_c, blocks_c):
        rs_c = jax.lax.dynamic_slice_in_dim(rs, i * layout.chunk, layout.chunk, axis=1)
        m_c = pp.ema(m_c, g_c[None, :], decays[:, None])
        scales = blocks_c[:, -2:]                                  # (nb, 2): 1/rms(g), 1/rms(p)
        gn, pn = pp.scale_blocks(jnp.stack([g_c, p_c]), scales, nb, blk)
        mn = pp.scale_blocks(m_c, jnp.broadcast_to(scales[:, :1], (nb, nd)), nb, blk)
        x = jnp.concatenate([gn[None], pn[None], mn, g_c[None] * rs_c, m_c * rs_c], axis=0)
        out = mlp_forward_t(body, x, first_bias=pp.block_bias(blocks_c[:, :-2], nb, blk))
        return self.step(out), m_c

      step, momenta = layout.map_chunks(
          chunk_step, jnp.arange(layout.num_chunks), g, p, state.momenta,
          layout.chunked_blocks(per_block))
      new_updates = layout.unflatten(-layout.unchunk(step))
      new_updates = layout.treedef.unflatten(
          [pp.restore_nonfinite(u, f).astype(u.dtype)
           for u, f in zip(layout.treedef.flatten_up_to(new_updates), finite)])
      return new_updates, AdafacMLPLOptState(momenta=momenta, rows=tuple(rows),
                                             cols=tuple(cols), count=state.count + 1)

    return with_checks(optax.GradientTransformationExtraArgs(init_fn, update_fn), self.name,
                       needs_params=True)


def _flatten_lead(layout: FlatLayout, parts: Sequence[jax.Array], lead: int) -> jax.Array:
  """Concatenates per-leaf ``(lead, size)`` arrays into ``(lead, num_rows)`` rows."""
  pieces, end = [], 0
  for part, off, size in zip(parts, layout.offsets, layout.sizes):
    if off > end:
      pieces.append(jnp.zeros((lead, off - end), jnp.float32))
    pieces.append(part)
    end = off + size
  if layout.num_rows > end:
    pieces.append(jnp.zeros((lead, layout.num_rows - end), jnp.float32))
  return jnp.concatenate(pieces, axis=1)
