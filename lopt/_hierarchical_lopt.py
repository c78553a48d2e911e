"""``hierarchical_lopt``: a per-tensor LSTM that modulates a per-parameter MLP.

Two levels, in the style of learned_optimization's RNN-MLP optimizer and VeLO
(Metz et al., "VeLO: Training Versatile Learned Optimizers by Scaling Up",
arXiv 2211.09760), written from their description:

* **Per tensor** (one row per parameter tensor, all tensors in one batched LSTM
  call): statistics of the tensor's gradient, momenta, parameters and previous
  update (log root-mean-squares, gradient-momentum cosines, log size), the
  training-fraction embedding and scale-free loss features go through a
  ``Dense`` embedding plus a cross-tensor context (the mean over tensors of a ReLU
  projection, VeLO's "mix" layer) into an LSTM cell (:func:`tensor_lstm`). Its
  output is a per-tensor log step-size scale ``s_t`` and ``C`` control values.
* **Per parameter**: a small MLP over per-parameter features (gradient, parameter,
  momenta at several decays, rms, momenta and gradient divided by the rms, each
  normalized by its per-tensor root-mean-square) plus the tensor's controls, which
  enter the first layer as a per-tensor bias ``controls_t @ W_c`` (no per-row
  cost). It outputs a direction ``d`` and log-magnitude ``m``::

    update = -exp(s_t) * d * exp(m * exp_mult) * step_mult

The LSTM's output layer starts at zero, so a fresh optimizer begins as a plain
per-parameter MLP optimizer with unit per-tensor scales.

Example::

  lo = lopt.learned("hierarchical_lopt")
  opt = lo.transform(lo.init(jax.random.key(0)), num_steps=1000)
  state = opt.init(params)
  updates, state = opt.update(grads, state, params, loss=loss)
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lopt import _per_param_lopt as pp
from lopt import _per_tensor as pt
from lopt._base import with_checks
from lopt._horizon import Horizon, check_num_steps
from lopt._per_param_mlp import TIME_FEATURE_NAMES, mlp_forward_t, time_features

__all__ = ["HierarchicalLOpt", "HierarchicalLOptState", "tensor_lstm"]

_EPS = 1e-12


class HierarchicalLOptState(NamedTuple):
  """State of ``hierarchical_lopt``; per-parameter arrays use the params' :class:`FlatLayout`.

  Attributes:
    step: number of updates taken (int32).
    mom: ``(num_chunks, K, chunk)`` momenta (feature-major chunks of the rows).
    rms: ``(num_chunks, chunk)`` moving average of squared gradients.
    lstm_c: ``(num_tensors, hidden)`` LSTM cell state, one row per tensor.
    lstm_h: ``(num_tensors, hidden)`` LSTM hidden state, one row per tensor.
    update_rms: ``(num_tensors,)`` root-mean-square of each tensor's last update.
    loss_stats: running loss statistics (:class:`lopt._per_tensor.LossStats`).
  """

  step: jax.Array
  mom: jax.Array
  rms: jax.Array
  lstm_c: jax.Array
  lstm_h: jax.Array
  update_rms: jax.Array
  loss_stats: pt.LossStats


def _dense(layer: dict[str, jax.Array], x: jax.Array) -> jax.Array:
  return x @ layer["w"] + layer["b"][None, :]


def tensor_lstm(weights: dict[str, Any], carry: tuple[jax.Array, jax.Array], x: jax.Array
                ) -> tuple[tuple[jax.Array, jax.Array], jax.Array]:
  """The per-tensor network, batched over tensors: embedding + context -> LSTM -> controls.

  ``u = tanh(x W_e + mean_t relu(x W_x))``; a standard LSTM cell
  ``[i, f, g, o] = [u, h] W + b``, ``c' = sigmoid(f + 1) c + sigmoid(i) tanh(g)``,
  ``h' = sigmoid(o) tanh(c')``; controls ``h' W_o + b_o``.

  Args:
    weights: ``{"embed", "mix", "cell", "out"}`` dense layers.
    carry: ``(c, h)``, each ``(num_tensors, hidden)``.
    x: ``(num_tensors, num_tensor_features)``.

  Returns:
    ``((c', h'), controls)`` with controls ``(num_tensors, 1 + num_controls)``.
  """
  c, h = carry
  context = jnp.mean(jax.nn.relu(_dense(weights["mix"], x)), axis=0, keepdims=True)
  u = jnp.tanh(_dense(weights["embed"], x) + context)
  i, f, g, o = jnp.split(_dense(weights["cell"], jnp.concatenate([u, h], axis=1)), 4, axis=1)
  c = jax.nn.sigmoid(f + 1.0) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
  h = jax.nn.sigmoid(o) * jnp.tanh(c)
  return (c, h), _dense(weights["out"], h)


@dataclasses.dataclass(frozen=True, kw_only=True, repr=False)
class HierarchicalLOpt(pp.AdamPriorLOpt):
  """Per-tensor LSTM modulating a per-parameter MLP (VeLO-lite).

  Fields of :class:`~lopt.PerParamLOpt`, :class:`~lopt.MagnitudeLOpt` and
  :class:`~lopt._per_param_lopt.AdamPriorLOpt` (``hidden_size``: the per-parameter
  MLP's width, ``hidden_layers``, ``chunk``, ``step_mult``, ``exp_mult``;
  ``learned_schedule``, ``init_kind``, ``init_lr``: with ``"adam"`` and the LSTM's
  zero output layer the untrained optimizer is Adam-like, and with
  ``learned_schedule`` the LSTM's per-tensor scale, which sees the loss features,
  modulates the schedule), and:

  Args:
    lstm_hidden: LSTM width (per tensor).
    num_controls: control values the LSTM feeds each tensor's per-parameter MLP.
    momentum_decays: decays of the momentum accumulators.
    rms_decay: decay of the squared-gradient accumulator.
  """

  hidden_size: int = 16
  lstm_hidden: int = 16
  num_controls: int = 4
  momentum_decays: tuple[float, ...] = (0.9, 0.99, 0.999)
  rms_decay: float = 0.999

  name = "hierarchical_lopt"
  #: The time embedding reaches the MLP through the LSTM's controls, not directly.
  shared_feature_names: ClassVar[tuple[str, ...]] = ()

  @property
  def param_feature_names(self) -> tuple[str, ...]:
    """Per-parameter MLP inputs, in column order (before the per-tensor controls)."""
    m = tuple(f"m{d:g}" for d in self.momentum_decays)
    return ("g", "p") + m + ("sqrt(rms)",) + tuple(f"{n}/rms" for n in m) + ("g/rms",)

  @property
  def adam_feature(self) -> str:
    """The feature the ``"adam"`` init passes through: the first momentum over ``sqrt(rms)``."""
    return f"m{self.momentum_decays[0]:g}/rms"

  @property
  def tensor_feature_names(self) -> tuple[str, ...]:
    """Per-tensor LSTM inputs, in column order (see :meth:`_tensor_features`)."""
    m = tuple(f"m{d:g}" for d in self.momentum_decays)
    return (("log_rms(g)",) + tuple(f"log_rms({n})" for n in m)
            + ("log_rms(p)", "log_rms(last_update)", "log(rms(g)/rms(p))",
               "log_rms(g)-mean_over_tensors") + tuple(f"cos(g,{n})" for n in m)
            + ("log(size)", "is_matrix") + TIME_FEATURE_NAMES + pt.LOSS_FEATURE_NAMES)

  @property
  def feature_names(self) -> tuple[str, ...]:
    """Every input feature (per-parameter, then ``tensor/``-prefixed per-tensor)."""
    return self.param_feature_names + tuple(f"tensor/{n}" for n in self.tensor_feature_names)

  def init(self, key: jax.Array) -> dict[str, Any]:
    """Returns LeCun-normal meta-params with a zero LSTM output layer.

    ``{"lstm": {"embed", "mix", "cell", "out"}, "mlp": [{"w", "b"}, ...],
    "ctrl": (num_controls, hidden_size)}``; every dense layer is ``{"w", "b"}``.
    """
    f, h, c = len(self.tensor_feature_names), self.lstm_hidden, self.num_controls
    sizes = self.mlp_sizes
    mlp_shapes = list(zip(sizes[:-1], sizes[1:]))
    shapes = [(f, h), (f, h), (2 * h, 4 * h), (h, 1 + c), (max(c, 1), self.hidden_size)]
    layers = pt.dense_init(key, shapes + mlp_shapes,
                           [1.0, 1.0, 1.0, 0.0, 1.0] + [1.0] * (len(mlp_shapes) - 1) + [0.1])
    lstm = dict(zip(("embed", "mix", "cell", "out"), layers[:4]))
    return self.with_prior({"lstm": lstm, "ctrl": layers[4]["w"][:c], "mlp": layers[5:]})

  def _tensor_features(self, layout, means, update_rms, step, num_steps, loss_stats, loss):
    """``(num_tensors, num_tensor_features)`` statistics of every tensor.

    ``means`` holds per-tensor means of ``[x**2 for each MLP input x, g * m_k]``.
    """
    k = len(self.momentum_decays)
    log = lambda x: 0.1 * jnp.log(x + 1e-12)
    g_rms, p_rms = jnp.sqrt(means[:, 0] + _EPS), jnp.sqrt(means[:, 1] + _EPS)
    m_rms = jnp.sqrt(means[:, 2:2 + k] + _EPS)  # (T, K)
    cos = means[:, -k:] / (g_rms[:, None] * m_rms + 1e-12)
    sizes = np.asarray(layout.sizes, np.float32)
    ndims = np.asarray([len(s) for s in layout.shapes], np.float32)
    t = layout.num_leaves
    shared = jnp.concatenate([time_features(step, num_steps),
                              pt.loss_features(loss_stats, loss)])
    cols = [log(g_rms)[:, None], log(m_rms), log(p_rms)[:, None],
            log(update_rms)[:, None],
            jnp.clip(log(g_rms) - log(p_rms), -2.0, 2.0)[:, None],
            (log(g_rms) - jnp.mean(log(g_rms)))[:, None], cos,
            jnp.asarray(np.log(sizes + 1.0)[:, None] / 10.0),
            jnp.asarray((ndims[:, None] >= 2).astype(np.float32)),
            jnp.broadcast_to(shared[None, :], (t, shared.shape[0]))]
    return jnp.concatenate(cols, axis=1)

  def transform(self, meta_params: Any, num_steps: Horizon | None = None
                ) -> optax.GradientTransformationExtraArgs:
    """Returns the optimizer for a ``num_steps`` horizon: a positive int or ``"unknown"``.

    ``num_steps`` is required (:func:`lopt._horizon.check_num_steps`); meta-training
    passes a traced int.
    """
    num_steps = check_num_steps(num_steps, self.name)
    k = len(self.momentum_decays)
    decays = jnp.asarray(self.momentum_decays, jnp.float32)[:, None]  # (K, 1)
    b2 = self.rms_decay
    hidden, nf = self.lstm_hidden, len(self.param_feature_names)

    def features(g, p, m, v):
      """Feature-major per-parameter features ``(F, rows)`` of one chunk."""
      rsqrt = jax.lax.rsqrt(v + 1e-12)
      return jnp.concatenate([g[None], p[None], m, jnp.sqrt(v + 1e-30)[None],
                              m * rsqrt[None], (g * rsqrt)[None]], axis=0)

    def init_fn(params):
      layout = self.layout(params)
      nc, chunk, t = layout.num_chunks, layout.chunk, layout.num_leaves
      zeros_th = lambda: jnp.zeros((t, hidden), jnp.float32)  # distinct buffers (donation)
      return HierarchicalLOptState(
          step=jnp.zeros((), jnp.int32), mom=jnp.zeros((nc, k, chunk), jnp.float32),
          rms=jnp.zeros((nc, chunk), jnp.float32), lstm_c=zeros_th(), lstm_h=zeros_th(),
          update_rms=jnp.zeros((t,), jnp.float32), loss_stats=pt.init_loss_stats())

    def update_fn(updates, state, params=None, *, loss=None, **extra):
      del extra
      layout = self.layout(params)
      nb, blk = layout.chunk // layout.block, layout.block
      g, finite = pp.finite_rows(layout.chunked(layout.flatten(updates)))
      p = layout.chunked(layout.flatten(params))
      step = state.step + 1
      loss_stats = pt.update_loss_stats(state.loss_stats, loss)

      # Pass 1, chunk by chunk: accumulators and per-block sums for per-tensor means
      # of [x**2 for every MLP input x] and [g * m_k].
      def accumulate(g_c, p_c, m_c, v_c):
        m_c = pp.ema(m_c, g_c[None], decays)
        v_c = pp.ema(v_c, jnp.square(g_c), b2)
        stats = jnp.concatenate([jnp.square(features(g_c, p_c, m_c, v_c)), g_c[None] * m_c])
        return m_c, v_c, stats.reshape(nf + k, nb, blk).sum(-1)

      mom, rms, sums = layout.map_chunks(accumulate, g, p, state.mom, state.rms)
      means = pp.tensor_means(layout, sums)  # (T, F + K)
      inv = jax.lax.rsqrt(means[:, :nf] + 1e-16)

      # Per-tensor LSTM, all tensors in one call.
      tfeat = self._tensor_features(layout, means, state.update_rms, step, num_steps,
                                    loss_stats, loss)
      (lstm_c, lstm_h), ctrl = tensor_lstm(meta_params["lstm"], (state.lstm_c, state.lstm_h),
                                           tfeat)
      scale = jnp.exp(jnp.clip(ctrl[:, 0], -10.0, 5.0))  # (T,)
      scale = scale * self.schedule_scale(meta_params, step, num_steps)
      first_bias = ctrl[:, 1:] @ meta_params["ctrl"]  # (T, hidden_size)
      per_block = lambda a: layout.chunked_blocks(layout.per_block(a))

      # Pass 2, chunk by chunk: normalized features, MLP (controls as a per-block
      # first-layer bias), step, and per-block sums of squares of the step.
      def chunk_step(g_c, p_c, m_c, v_c, inv_c, bias_c, scale_c, valid_c):
        x = pp.scale_blocks(features(g_c, p_c, m_c, v_c), inv_c, nb, blk)
        out = mlp_forward_t(meta_params["mlp"], x, first_bias=pp.block_bias(bias_c, nb, blk))
        s = self.step(out) * pt.chunk_mask(valid_c, blk)
        s = -(s.reshape(nb, blk) * scale_c[:, None])
        return s.reshape(nb * blk), jnp.square(s).sum(-1)

      steps, sq = layout.map_chunks(chunk_step, g, p, mom, rms, per_block(inv),
                                    per_block(first_bias), per_block(scale),
                                    layout.chunked_blocks(jnp.asarray(pt.block_valid(layout))))
      update_rms = pt.tensor_rms_from_blocks(layout, sq.reshape(layout.num_blocks), _EPS)
      new_state = HierarchicalLOptState(
          step=step, mom=mom, rms=rms, lstm_c=lstm_c, lstm_h=lstm_h,
          update_rms=update_rms, loss_stats=loss_stats)
      return layout.unflatten(layout.unchunk(pp.restore_nonfinite(steps, finite))), new_state

    return with_checks(optax.GradientTransformationExtraArgs(init_fn, update_fn), self.name,
                       needs_params=True, needs_loss=True)
