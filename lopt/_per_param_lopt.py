"""The base of the per-parameter MLP learned optimizers, and their shared building blocks.

``mlp_lopt``, ``adafac_mlp_lopt``, ``celo2_lopt`` and ``hierarchical_lopt`` apply
one small MLP to every scalar parameter (the kernel is :mod:`lopt._per_param_mlp`).
What they share lives here, once:

* :class:`PerParamLOpt`: the MLP's width and depth (``hidden_size``,
  ``hidden_layers``), the chunk size of its loop, the feature lists, the layer
  sizes, the default init and a *pass-through* init (:meth:`PerParamLOpt.pass_through`:
  the MLP outputs one input feature, so an optimizer can start as, or be set to
  reproduce, momentum, SGD or Adam).
* :class:`MagnitudeLOpt`: a direction ``d`` and a log-magnitude ``m`` out of the MLP,
  and the step rule ``step = d * exp(m * exp_mult) * step_mult``.
* :class:`AdamPriorLOpt`: an Adam-like init and an optional learned step-size
  schedule (:func:`schedule_lr`) on top of it (``mlp_lopt``, ``hierarchical_lopt``).
* The pieces of the two-pass chunk loop: :func:`ema` (a moment update),
  :func:`block_square_sums` and :func:`tensor_means` (per-tensor feature
  normalizers), :func:`scale_blocks` (normalize features per block) and
  :func:`block_bias` (a per-tensor first-layer bias), and the robustness to
  non-finite gradients, :func:`finite_rows` and :func:`restore_nonfinite`.

Reference: Metz et al., "Practical tradeoffs between memory, compute, and
performance in learned optimizers", CoLLAs 2022 (arXiv 2203.11860).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from lopt._base import LearnedOptimizer, setting
from lopt._horizon import Horizon, is_unknown
from lopt._per_param_mlp import TIME_FEATURE_NAMES, FlatLayout, mlp_init, time_features

__all__ = ["FREE_SCHEDULE_STEPS", "MAX_ABS_GRAD", "AdamPriorLOpt", "MagnitudeLOpt",
           "PerParamLOpt", "block_bias", "block_square_sums", "ema", "finite_rows",
           "init_schedule", "pass_through_mlp", "restore_nonfinite", "scale_blocks",
           "schedule_lr", "tensor_means"]

#: Gradient entries enter accumulators and features clipped to this magnitude, so
#: their squares (and sums of squares over a tensor) stay finite in float32.
MAX_ABS_GRAD = 1e12


@dataclasses.dataclass(frozen=True, kw_only=True, repr=False)
class PerParamLOpt(LearnedOptimizer):
  """Base of the learned optimizers that apply one MLP to every scalar parameter.

  A subclass names its per-parameter feature columns (:attr:`param_feature_names`)
  and, if it has any, the row-constant inputs folded into the first layer's bias
  (:attr:`shared_feature_names`; the training-step embedding by default), and
  implements ``transform``. Its own settings are further dataclass fields.

  Args:
    hidden_size: width of each hidden layer of the per-parameter MLP.
    hidden_layers: number of hidden layers.
    chunk: rows per iteration of the MLP loop (speed only; not part of the
      config); None: cache-sized on CPU, one chunk on accelerators
      (:func:`lopt._per_param_mlp.default_chunk`).
  """

  hidden_size: int = 32
  hidden_layers: int = 2
  chunk: int | None = setting(None, config=False)

  feature_major: ClassVar[bool] = True
  #: Outputs of the MLP per parameter.
  num_outputs: ClassVar[int] = 1
  #: Row-constant MLP inputs, folded into the first layer's bias.
  shared_feature_names: ClassVar[tuple[str, ...]] = TIME_FEATURE_NAMES
  RENAMED: ClassVar[dict[str, str]] = {"hidden": "hidden_size", "mlp_hidden": "hidden_size",
                                       "mlp_layers": "hidden_layers"}

  @property
  def param_feature_names(self) -> tuple[str, ...]:
    """Names of the per-parameter feature columns, in order."""
    raise NotImplementedError

  @property
  def feature_names(self) -> tuple[str, ...]:
    """All MLP inputs: per-parameter columns, then the row-constant ones."""
    return self.param_feature_names + self.shared_feature_names

  @property
  def mlp_sizes(self) -> tuple[int, ...]:
    """Layer sizes of the per-parameter MLP, input first."""
    fan_in = len(self.param_feature_names) + len(self.shared_feature_names)
    return (fan_in,) + (self.hidden_size,) * self.hidden_layers + (self.num_outputs,)

  def init(self, key: jax.Array) -> dict[str, Any]:
    """Returns ``{"mlp": [{"w", "b"}, ...]}`` with LeCun-normal weights."""
    return {"mlp": mlp_init(key, self.mlp_sizes)}

  def layout(self, params: Any) -> FlatLayout:
    """The row layout (padding, chunks) this optimizer uses for ``params``' tree."""
    return FlatLayout.from_tree(params, max_chunk=self.chunk)

  def pass_through(self, key: jax.Array, feature: str, scale: float = 1.0) -> dict[str, Any]:
    """Meta-params whose MLP outputs ``scale * x[feature]`` as the direction (``m = 0``).

    Everything else is ``self.init(key)``. See :func:`pass_through_mlp`.

    Example::

      lo = lopt.learned("mlp_lopt", normalize_features=False)
      mp = lo.pass_through(key, "g", scale=0.1 / lo.step_mult)   # SGD(0.1)
    """
    mp = dict(self.init(key))
    mp["mlp"] = pass_through_mlp(mp["mlp"], self.feature_names.index(feature), scale=scale)
    return mp


@dataclasses.dataclass(frozen=True, kw_only=True, repr=False)
class MagnitudeLOpt(PerParamLOpt):
  """A :class:`PerParamLOpt` whose MLP outputs a direction ``d`` and a log-magnitude ``m``.

  ``step = d * exp(m * exp_mult) * step_mult`` (:meth:`step`); ``updates = -step``.

  Args:
    step_mult: ``c1`` in ``step = d * exp(m * c2) * c1``.
    exp_mult: ``c2``.
  """

  step_mult: float = 1e-3
  exp_mult: float = 1e-3

  num_outputs: ClassVar[int] = 2

  def step(self, out: jax.Array) -> jax.Array:
    """The step rule on feature-major MLP outputs ``out = (d, m, ...)``: ``d exp(m c2) c1``."""
    return out[0] * jnp.exp(out[1] * self.exp_mult) * self.step_mult


@dataclasses.dataclass(frozen=True, kw_only=True, repr=False)
class AdamPriorLOpt(MagnitudeLOpt):
  """A :class:`MagnitudeLOpt` that can start as Adam and learn a step-size schedule.

  Shared by ``mlp_lopt`` and ``hierarchical_lopt``; the subclass has
  ``momentum_decays`` and an ``"{m}/rms"`` feature for each momentum ``m``, and
  multiplies its step by :meth:`schedule_scale`.

  Args:
    learned_schedule: multiply every step by celo2_lopt's learned warmup + cosine
      schedule (:func:`lopt.schedule_lr`, meta-params ``"schedule"``).
    init_kind: how :meth:`init` sets the per-parameter MLP (not part of
      :meth:`config`). ``"random"`` (default): LeCun-normal layers. ``"adam"``: the
      MLP passes the Adam direction :attr:`adam_feature` (tensor-normalized when
      the features are) through unchanged and its other units have no path to the
      output, so the untrained optimizer *is* Adam-like at ``init_lr`` (under the
      schedule when ``learned_schedule``) -- a prior that meta-training refines.
    init_lr: the step size of the ``"adam"`` init (the schedule's peak).
  """

  learned_schedule: bool = False
  init_kind: str = setting("random", config=False)
  init_lr: float = setting(1e-3, config=False)

  ADDED: ClassVar[dict[str, Any]] = {"learned_schedule": False}

  def __post_init__(self) -> None:
    super().__post_init__()
    if self.init_kind not in ("random", "adam"):
      raise ValueError(f"unknown init_kind {self.init_kind!r}; valid: 'random', 'adam'")
    if self.init_kind == "adam" and self.hidden_layers > 0 and self.hidden_size < 2:
      raise ValueError("init_kind='adam' needs hidden_size >= 2")
    if not self.init_lr > 0:
      raise ValueError(f"init_lr must be > 0, got {self.init_lr}")

  @property
  def adam_feature(self) -> str:
    """The feature the ``"adam"`` init passes through: momentum at 0.9 (else the
    first decay) over the root of the second moment."""
    decay = 0.9 if 0.9 in self.momentum_decays else self.momentum_decays[0]
    return f"m{decay:g}/rms"

  def with_prior(self, mp: dict[str, Any]) -> dict[str, Any]:
    """``mp`` with the ``"adam"`` init applied to ``mp["mlp"]`` (if ``init_kind`` says
    so) and the initial ``"schedule"`` (if ``learned_schedule``)."""
    if self.init_kind == "adam":
      scale = (1.0 if self.learned_schedule else self.init_lr) / self.step_mult
      mp["mlp"] = pass_through_mlp(mp["mlp"], self.feature_names.index(self.adam_feature),
                                   scale=scale, noise=0.1)
    if self.learned_schedule:
      mp["schedule"] = init_schedule(self.init_lr)
    return mp

  def schedule_scale(self, meta_params: Any, step: jax.Array, num_steps: Horizon) -> Any:
    """The learned schedule's step size at ``step`` (1.0 without ``learned_schedule``)."""
    if not self.learned_schedule:
      return 1.0
    return schedule_lr(meta_params["schedule"], step, num_steps)


def pass_through_mlp(layers: list[dict[str, jax.Array]], column: int, *, scale: float = 1.0,
                     noise: float = 0.0) -> list[dict[str, jax.Array]]:
  """Rewrites MLP layers so that output 0 is ``scale * x[column]`` (other outputs 0).

  Units 0 and 1 of every hidden layer carry ``relu(x)`` and ``relu(-x)``; the output
  is ``scale`` times their difference. The other units keep ``noise`` times their
  weights but have no path into units 0/1 or to the output, so they change nothing
  until meta-training gives them an output weight. Biases are zero. Traceable
  (``jnp`` only), so it can run inside ``init`` under ``jit``/``vmap``.

  Args:
    layers: ``[{"w": (fan_in, fan_out), "b": (fan_out,)}, ...]``.
    column: the input feature to pass through.
    scale: the output multiplier.
    noise: the factor kept on the other units' weights.
  """
  out = []
  for n, layer in enumerate(layers):
    w = layer["w"].astype(jnp.float32) * noise
    if len(layers) == 1:  # no hidden layer: a linear read-out of the feature
      w = jnp.zeros_like(w).at[column, 0].set(scale)
    elif n == len(layers) - 1:  # output layer
      w = jnp.zeros_like(w).at[0, 0].set(scale).at[1, 0].set(-scale)
    elif n == 0:
      w = w.at[:, :2].set(0.0).at[column, 0].set(1.0).at[column, 1].set(-1.0)
    else:
      w = w.at[:2, :].set(0.0).at[:, :2].set(0.0).at[0, 0].set(1.0).at[1, 1].set(1.0)
    out.append({"w": w, "b": jnp.zeros_like(layer["b"])})
  return out


# ---- the learned step-size schedule (celo2_lopt; mlp_lopt with learned_schedule) -----

def init_schedule(init_lr: float) -> dict[str, jax.Array]:
  """Schedule meta-params: peak ``init_lr``, a 2 % warmup, cosine decay to 10 % of the peak."""
  return {"log_lr": jnp.asarray(np.log(init_lr), jnp.float32),
          "warmup": jnp.asarray(np.log(0.2 / 0.8), jnp.float32),  # w = 0.1 sigmoid = 0.02
          "final": jnp.asarray(np.log(0.1 / 0.9), jnp.float32),  # a = 0.1
          "corr": jnp.zeros((len(TIME_FEATURE_NAMES),), jnp.float32)}


#: The timescale, in steps, of the horizon-free schedule (``num_steps="unknown"``).
FREE_SCHEDULE_STEPS = 1000.0


def schedule_lr(schedule: dict[str, jax.Array], step: jax.Array,
                num_steps: Horizon) -> jax.Array:
  """The learned step size at ``step`` (1-based) of a ``num_steps`` horizon.

  ::

    lr(t) = exp(log_lr) * min(1, f / w) * (a + (1 - a) (1 + cos(pi min(f, 1))) / 2)
            * exp(clip(corr . time_features(t), +-5)),   f = t / num_steps,
    w = 0.1 sigmoid(warmup), a = sigmoid(final).

  ``num_steps`` may be a traced integer (meta-training gives each instance its
  own horizon), so the schedule is learned on the horizons it is used with.

  With ``num_steps="unknown"`` (:data:`lopt.UNKNOWN_HORIZON`, the horizon-free
  mode) the schedule is a function of the step count alone: a warmup over
  ``w S`` steps, then an inverse-square-root decay on the timescale
  ``S = FREE_SCHEDULE_STEPS = 1000``::

    lr(t) = exp(log_lr) * min(1, t / (w S)) * (a + (1 - a) / sqrt(1 + t / S))
            * exp(clip(corr . time_features(t), +-5)),

  where the training-fraction entries of ``time_features`` are zero.

  Args:
    schedule: the schedule's meta-params (:func:`init_schedule`).
    step: the 1-based step count, an integer scalar.
    num_steps: a positive int, a traced integer scalar or ``"unknown"``
      (validated by the optimizer's ``transform``).
  """
  t = step.astype(jnp.float32)
  warm = 0.1 * jax.nn.sigmoid(schedule["warmup"])
  final = jax.nn.sigmoid(schedule["final"])
  if is_unknown(num_steps):
    ramp = t / (warm * FREE_SCHEDULE_STEPS)
    decay = jax.lax.rsqrt(1.0 + t / FREE_SCHEDULE_STEPS)
  else:
    f = t / jnp.maximum(jnp.asarray(num_steps, jnp.float32), 1.0)
    ramp = f / warm
    decay = 0.5 * (1.0 + jnp.cos(jnp.pi * jnp.minimum(f, 1.0)))
  corr = jnp.clip(jnp.dot(schedule["corr"], time_features(step, num_steps)), -5.0, 5.0)
  return (jnp.exp(schedule["log_lr"]) * jnp.minimum(1.0, ramp)
          * (final + (1.0 - final) * decay) * jnp.exp(corr))


# ---- building blocks of the chunk loop ----------------------------------------------

def ema(acc: jax.Array, x: jax.Array, decay: Any) -> jax.Array:
  """One moment update, ``decay * acc + (1 - decay) * x`` (optax's ``update_moment``)."""
  return decay * acc + (1 - decay) * x


def block_square_sums(x: jax.Array, nb: int, blk: int) -> jax.Array:
  """Per-block sums of squares of feature-major ``x: (F, nb * blk)``: ``(F, nb)``."""
  return jnp.square(x).reshape(x.shape[0], nb, blk).sum(-1)


def tensor_means(layout: FlatLayout, chunk_sums: jax.Array) -> jax.Array:
  """Per-tensor means ``(T, F)`` from the chunk loop's ``(num_chunks, F, nb)`` block sums."""
  f = chunk_sums.shape[1]
  return layout.tensor_mean_from_blocks(
      chunk_sums.transpose(0, 2, 1).reshape(layout.num_blocks, f))


def scale_blocks(x: jax.Array, per_block: jax.Array, nb: int, blk: int) -> jax.Array:
  """Multiplies feature-major ``x: (F, nb * blk)`` by per-block factors ``(nb, F)``."""
  return (x.reshape(x.shape[0], nb, blk) * per_block.T[:, :, None]).reshape(x.shape)


def block_bias(per_block: jax.Array, nb: int, blk: int) -> jax.Array:
  """A first-layer bias ``(H, nb * blk)`` from per-block values ``(nb, H)``."""
  h = per_block.shape[1]
  return jnp.broadcast_to(per_block.T[:, :, None], (h, nb, blk)).reshape(h, nb * blk)


def finite_rows(rows: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Gradient rows safe to accumulate: non-finite entries zeroed, the rest clipped.

  A NaN or infinite gradient entry must not spread through per-tensor normalizers,
  second moments or Newton-Schulz to other parameters, nor stay in the state; a
  huge one must not overflow when squared. Returns ``(clean, finite)``: ``clean``
  has non-finite entries set to 0 and the others clipped to ``+-MAX_ABS_GRAD``;
  ``finite`` is the boolean mask. :func:`restore_nonfinite` then puts NaN back
  into those entries' own updates (as Adam does), and nowhere else.
  """
  finite = jnp.isfinite(rows)
  return jnp.clip(jnp.where(finite, rows, 0.0), -MAX_ABS_GRAD, MAX_ABS_GRAD), finite


def restore_nonfinite(step: jax.Array, finite: jax.Array) -> jax.Array:
  """``step`` with NaN where the gradient was not finite (see :func:`finite_rows`)."""
  return jnp.where(finite, step, jnp.nan)
