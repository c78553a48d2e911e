"""``mlp_lopt``: a per-parameter MLP learned optimizer.

For every scalar parameter the optimizer forms features from the gradient ``g``,
the parameter value ``p``, momenta ``m_k = b_k m_k + (1 - b_k) g`` at several
decays, second moments ``v_j = c_j v_j + (1 - c_j) g^2`` and the normalized
momenta ``m_k / (sqrt(v) + eps)`` (bias-corrected, as in Adam); each feature column
is divided by its root-mean-square over the parameter's tensor. A training-step
embedding (``tanh`` of ``step / num_steps`` and of ``step`` at several scales) is
shared by every parameter. One MLP (``hidden_layers`` x ``hidden_size``, ReLU) maps
the features to a direction ``d`` and a log-magnitude ``m``::

  step = d * exp(m * exp_mult) * step_mult        # updates = -step

The MLP runs through the chunked kernel of :mod:`lopt._per_param_mlp`: optimizer
state is kept in its flat row layout, features are computed inside the chunk loop
and the time embedding is folded into the first layer's bias, so one update is a
few fused elementwise passes plus one loop of matmuls.

Example::

  lo = lopt.learned("mlp_lopt")
  meta_params = lo.init(jax.random.key(0))
  opt = lo.transform(meta_params, num_steps=1000)     # or lopt.get("mlp_lopt", ...)
  state = opt.init(params)
  updates, state = opt.update(grads, state, params)

Reference: Metz et al., "Practical tradeoffs between memory, compute, and
performance in learned optimizers", CoLLAs 2022 (arXiv 2203.11860); design after
learned_optimization's ``MLPLOpt``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lopt import _per_param_lopt as pp
from lopt._base import with_checks
from lopt._horizon import Horizon, check_num_steps
from lopt._per_param_mlp import FlatLayout, default_chunk, mlp_forward_t, mlp_init, time_features

__all__ = ["MLPLOpt", "MLPLOptState"]

NORM_EPS = 1e-12
ADAM_EPS = 1e-8

#: Rows per iteration of the MLP loop on CPU when ``chunk`` is None: small, because
#: meta-training ``vmap``s the update over task instances and one loop iteration
#: then holds a chunk of every instance (measurements: docs/speed.md).
CPU_CHUNK = 768
#: Parameter trees up to this many scalars run as one chunk on CPU.
CPU_ONE_CHUNK_MAX = 4096


class MLPLOptState(NamedTuple):
  """State of ``mlp_lopt``, stored in the flat row layout of the parameters.

  Attributes:
    momenta: ``(num_chunks, len(momentum_decays), chunk)`` float32 (feature-major
      chunks of the parameters' :class:`~lopt._per_param_mlp.FlatLayout` rows).
    rms: ``(num_chunks, len(rms_decays), chunk)`` float32 second-moment accumulators.
    count: int32 scalar, the number of updates done.
  """
  momenta: jax.Array
  rms: jax.Array
  count: jax.Array


def _sqrt(x: jax.Array) -> jax.Array:
  """``sqrt(x)`` for ``x >= 0`` whose derivative at 0 is 0 instead of infinite.

  A second moment is exactly 0 on padding rows and on parameters that never get a
  gradient; there ``jnp.sqrt``'s infinite slope times a zero cotangent is NaN, which
  turned every truncated-backprop meta-gradient through this optimizer into NaN.
  The value is ``jnp.sqrt``'s, bit for bit.
  """
  pos = x > 0
  return jnp.where(pos, jnp.sqrt(jnp.where(pos, x, 1.0)), 0.0)


def _param_features(g, p, m, v, m_corr, v_corr) -> jax.Array:
  """Feature-major features ``(F, rows)`` from ``g, p, m: (K, rows), v: (J, rows)``."""
  inv = 1.0 / (_sqrt(v[-1:] * v_corr) + ADAM_EPS)
  return jnp.concatenate(
      [g[None], p[None], m, _sqrt(v), m * (m_corr[:, None] * inv), g[None] * inv], axis=0)


@dataclasses.dataclass(frozen=True, kw_only=True, repr=False)
class MLPLOpt(pp.AdamPriorLOpt):
  """Per-parameter MLP learned optimizer (see the module docstring).

  Fields of :class:`~lopt.PerParamLOpt`, :class:`~lopt.MagnitudeLOpt` and
  :class:`~lopt._per_param_lopt.AdamPriorLOpt` (``hidden_size``, ``hidden_layers``,
  ``chunk``, ``step_mult``, ``exp_mult``, ``learned_schedule``, ``init_kind``,
  ``init_lr``), and:

  Args:
    momentum_decays: decays of the momentum accumulators.
    rms_decays: decays of the second-moment accumulators; the last one
      normalizes the momenta.
    normalize_features: divide each feature by its rms over the parameter's
      tensor. Off gives a linear-in-features optimizer (used to reproduce SGD).

  With ``chunk=None`` the MLP loop runs, on CPU, as one chunk up to
  :data:`CPU_ONE_CHUNK_MAX` parameters and in :data:`CPU_CHUNK`-row chunks above;
  as one chunk on accelerators.
  """

  hidden_size: int = 32
  momentum_decays: tuple[float, ...] = (0.5, 0.9, 0.99, 0.999)
  rms_decays: tuple[float, ...] = (0.99, 0.999)
  normalize_features: bool = True

  name = "mlp_lopt"

  def init(self, key: jax.Array) -> dict[str, Any]:
    """Meta-params ``{"mlp": [...]}`` (plus ``"schedule"`` when ``learned_schedule``).

    See ``init_kind`` of :class:`~lopt._per_param_lopt.AdamPriorLOpt`.
    """
    return self.with_prior({"mlp": mlp_init(key, self.mlp_sizes)})

  @property
  def param_feature_names(self) -> tuple[str, ...]:
    """Names of the per-parameter feature columns, in order."""
    return (("g", "p") + tuple(f"m{d:g}" for d in self.momentum_decays)
            + tuple(f"rms{d:g}" for d in self.rms_decays)
            + tuple(f"m{d:g}/rms" for d in self.momentum_decays) + ("g/rms",))

  def layout(self, params: Any) -> FlatLayout:
    """The row layout (padding, chunks) this optimizer uses for ``params``' tree."""
    chunk = self.chunk
    if chunk is None:
      chunk = default_chunk()
      if jax.default_backend() == "cpu":
        size = sum(int(np.prod(np.shape(x))) for x in jax.tree.leaves(params))
        chunk = chunk if size <= CPU_ONE_CHUNK_MAX else CPU_CHUNK
    return FlatLayout.from_tree(params, max_chunk=chunk)

  def transform(self, meta_params: Any, num_steps: Horizon | None = None
                ) -> optax.GradientTransformationExtraArgs:
    """Returns the optimizer for a ``num_steps`` horizon: a positive int or ``"unknown"``.

    ``num_steps`` is required (:func:`lopt._horizon.check_num_steps`); meta-training
    passes a traced int.
    """
    num_steps = check_num_steps(num_steps, self.name)
    mom_decays = jnp.asarray(self.momentum_decays, jnp.float32)
    rms_decays = jnp.asarray(self.rms_decays, jnp.float32)
    nf = len(self.param_feature_names)
    normalize = self.normalize_features

    def init_fn(params):
      layout = self.layout(params)
      return MLPLOptState(
          momenta=jnp.zeros((layout.num_chunks, len(self.momentum_decays), layout.chunk),
                            jnp.float32),
          rms=jnp.zeros((layout.num_chunks, len(self.rms_decays), layout.chunk), jnp.float32),
          count=jnp.zeros((), jnp.int32))

    def update_fn(updates, state, params=None, **extra):
      del extra  # loss= is accepted and ignored
      layout = self.layout(updates)
      nb, blk = layout.chunk // layout.block, layout.block
      g, finite = pp.finite_rows(layout.chunked(layout.flatten(updates)))
      p = layout.chunked(layout.flatten(params))
      count = state.count + 1
      t = count.astype(jnp.float32)
      m_corr = 1.0 / (1.0 - mom_decays ** t)
      v_corr = 1.0 / (1.0 - rms_decays[-1] ** t)

      # Pass 1, one chunk at a time: new accumulators (+ per-block feature stats).
      def accumulate(g_c, p_c, m_c, v_c):
        m_c = pp.ema(m_c, g_c[None, :], mom_decays[:, None])
        v_c = pp.ema(v_c, (g_c * g_c)[None, :], rms_decays[:, None])
        if not normalize:
          return m_c, v_c, jnp.zeros((0,), jnp.float32)
        x = _param_features(g_c, p_c, m_c, v_c, m_corr, v_corr)
        return m_c, v_c, pp.block_square_sums(x, nb, blk)

      momenta, rms, sq_sums = layout.map_chunks(accumulate, g, p, state.momenta, state.rms)

      lr = self.schedule_scale(meta_params, count, num_steps)
      layers = meta_params["mlp"]
      w_first = layers[0]["w"]
      first_bias = (time_features(count, num_steps) @ w_first[nf:])[:, None]
      body = [{"w": w_first[:nf], "b": layers[0]["b"]}] + list(layers[1:])

      if normalize:
        scale = jax.lax.rsqrt(pp.tensor_means(layout, sq_sums) + NORM_EPS)
        scale_blocks = layout.chunked_blocks(layout.per_block(scale))
      else:
        scale_blocks = jnp.zeros((layout.num_chunks, 0), jnp.float32)

      # Pass 2, one chunk at a time: features, normalization, MLP, step.
      def chunk_step(g_c, p_c, m_c, v_c, s_c):
        x = _param_features(g_c, p_c, m_c, v_c, m_corr, v_corr)
        if normalize:
          x = pp.scale_blocks(x, s_c, nb, blk)
        return self.step(mlp_forward_t(body, x, first_bias=first_bias)) * lr

      step = pp.restore_nonfinite(
          layout.map_chunks(chunk_step, g, p, momenta, rms, scale_blocks), finite)
      new_updates = layout.unflatten(-layout.unchunk(step))
      return new_updates, MLPLOptState(momenta=momenta, rms=rms, count=count)

    return with_checks(optax.GradientTransformationExtraArgs(init_fn, update_fn), self.name,
                       needs_params=True)
