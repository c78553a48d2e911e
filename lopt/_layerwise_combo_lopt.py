"""``layerwise_combo_lopt``: per-layer learned mixtures of base optimizer directions.

A cheap learned optimizer in the spirit of Kristiansen et al. 2024, "Narrowing the Focus: Learned
Optimizers for Pretrained Models" (arXiv 2408.09310): the update of
tensor ``t`` is a learned linear combination of ``K = 4`` base update directions
computed with the usual accumulators,

  ======== ================================ ====================================
  name     direction ``u_k``                reproduces (one-hot weights)
  ======== ================================ ====================================
  sgd      ``-g``                           ``optax.sgd(lr)``
  momentum ``-tr``, ``tr <- beta tr + g``   ``optax.sgd(lr, momentum=beta)``
  adam     ``-m_hat / (sqrt(v_hat) + eps)`` ``optax.adam(lr, b1, b2, eps)``
  sign     ``-sign(m)``                     ``trace(b1)``, ``scale_by_sign()``,
                                            ``scale(-lr)`` chained
  orth     ``-orth(tr) / rms(orth(tr))``    Muon-style orthogonalized momentum
                                            (optional: ``directions=``)
  ======== ================================ ====================================

``orth`` orthogonalizes each tensor's momentum trace (reshaped to
``(prod(shape[:-1]), shape[-1])``; Newton-Schulz, as ``celo2_lopt``) and scales it
to unit RMS, like the Adam and sign directions; a vector's trace is only scaled.
It is not among the default four (``BASE_DIRECTIONS``); ``directions=`` picks any
ordered subset of :data:`DIRECTIONS` that includes ``adam``.

::

  update_t = lr_t * sum_k c_{t,k} u_k,    lr_t = exp(log_lr + layer_log_lr_t)
  c_t      = bias + layer_bias_t + net(features_t)

``net`` is a small MLP applied to all tensors in one call, over per-tensor
features (log root-mean-squares of gradient, momentum, Adam direction and
parameters; the gradient-momentum cosine; training-fraction and loss features).
Its output layer starts at zero and ``bias`` starts one-hot on ``adam`` with
``log_lr = log(1e-3)``, so a fresh optimizer *is* Adam(1e-3); setting ``bias`` to
another one-hot vector and ``log_lr`` to ``log(lr)`` selects exactly one base
optimizer (:meth:`LayerwiseComboLOpt.one_hot`).

*Specialized* to one parameter tree (``num_layers`` set, e.g. by
:meth:`LayerwiseComboLOpt.for_params`), each tensor also gets a learned mixture
bias ``layer_bias_t`` and a learned step-size factor ``exp(layer_log_lr_t)``,
both zero at init, as in the paper's per-layer step sizes and mixtures; the
meta-parameters then only fit that tree. ``param_tree`` records its tensors'
paths and shapes, so applying the weights to another model raises a
``ValueError`` naming the first differing tensor (a trace-time check).
Without ``num_layers`` the per-tensor weights come from the network alone and the
same meta-parameters apply to any parameter tree. The features and the network
are this library's choices, not the paper's.

Example::

  lo = lopt.learned("layerwise_combo_lopt")
  opt = lo.transform(lo.one_hot("momentum", 0.05), num_steps=1000)
  lo = LayerwiseComboLOpt.for_params(params, init_lr=3e-3)   # specialized to params' tree
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lopt import _per_tensor as pt
from lopt._base import LearnedOptimizer, TreeSpec, setting, tree_spec, with_checks
from lopt._horizon import Horizon, check_num_steps
from lopt._per_param_lopt import finite_rows, restore_nonfinite
from lopt._per_param_mlp import TIME_FEATURE_NAMES, FlatLayout, mlp_forward, time_features

__all__ = ["BASE_DIRECTIONS", "DIRECTIONS", "LayerwiseComboLOpt", "LayerwiseComboLOptState",
           "SCHEDULES"]

#: The default base directions (the optimizer's ``directions``).
BASE_DIRECTIONS = ("sgd", "momentum", "adam", "sign")
#: Every direction ``directions=`` may name.
DIRECTIONS = BASE_DIRECTIONS + ("orth",)
#: Fixed step-size schedules ``schedule=`` may name: ``"constant"`` (the learned step
#: sizes alone) or ``"cosine"`` (times ``(1 + cos(pi t / num_steps)) / 2`` at update ``t``
#: = 0, 1, ...; as ``optax.cosine_decay_schedule``, so it needs the horizon).
SCHEDULES = ("constant", "cosine")


def orthogonalized(layout: FlatLayout, trace: jax.Array) -> jax.Array:
  """The ``orth`` direction's rows: per tensor, Newton-Schulz of the trace, unit RMS."""
  from lopt._celo2_lopt import newton_schulz

  def one(x):
    if x.ndim >= 2:
      x = newton_schulz(x.reshape(-1, x.shape[-1])).reshape(x.shape)
    return x / jnp.sqrt(jnp.mean(jnp.square(x)) + 1e-30)

  return layout.flatten(jax.tree.map(one, layout.unflatten(trace, dtype=jnp.float32)))


class LayerwiseComboLOptState(NamedTuple):
  """State of ``layerwise_combo_lopt``; row arrays use the params' :class:`FlatLayout`.

  Attributes:
    step: number of updates taken (int32).
    trace: ``(num_rows,)`` heavy-ball trace ``beta * trace + g`` (optax's convention).
    mu: ``(num_rows,)`` Adam first moment.
    nu: ``(num_rows,)`` Adam second moment.
    loss_stats: running loss statistics.
    coef: ``(num_tensors, K)`` the last update's step sizes per tensor and base
      direction (``lr_t * c_t``, columns in the optimizer's ``directions`` order, tensors
      in the order of ``jax.tree.leaves(params)``); zeros before the first update.
      Read it to see which base optimizer each layer uses over a run.
  """

  step: jax.Array
  trace: jax.Array
  mu: jax.Array
  nu: jax.Array
  loss_stats: pt.LossStats
  coef: jax.Array


@dataclasses.dataclass(frozen=True, kw_only=True, repr=False)
class LayerwiseComboLOpt(LearnedOptimizer):
  """Per-tensor learned weights over sgd / momentum / adam / sign (/ orth) directions.

  Args:
    hidden_size: width of the per-tensor weight network.
    momentum: heavy-ball decay ``beta`` of the momentum direction.
    b1: Adam first-moment decay (also the sign direction's momentum).
    b2: Adam second-moment decay.
    eps: Adam epsilon (added outside the square root, as optax does).
    num_layers: if given, a learned per-tensor mixture bias and step-size factor
      with this many rows are added (the optimizer then only accepts parameter
      trees with that many tensors).
    param_tree: ``((path, shape), ...)`` of every tensor of the parameter tree the
      optimizer is specialized to (:func:`lopt._base.tree_spec`); ``init`` and
      ``update`` refuse any other tree. Sets ``num_layers`` when that is None.
    init_lr: the step size of :meth:`init` (Adam's learning rate at init); not part
      of the architecture, so weights load whatever its value.
    directions: the base directions mixed, in column order: distinct names of
      :data:`DIRECTIONS` including ``"adam"`` (default :data:`BASE_DIRECTIONS`; add
      ``"orth"`` for Muon-style orthogonalized momentum).
    schedule: a fixed factor on every step size, one of :data:`SCHEDULES`:
      ``"constant"`` (default) or ``"cosine"``, a decay to zero over ``num_steps``
      that stretches with the horizon (as celo2_lopt's), so the learned terms
      need not extrapolate to longer runs; ``"cosine"`` needs a known ``num_steps``.
    init_direction: the one base direction :meth:`init` selects (default
      ``"adam"``; ``"orth"`` with ``schedule="cosine"`` starts as Muon-style
      momentum under a cosine decay, celo2_lopt's prior); one of ``directions``.
      Like ``init_lr``, not part of the architecture.
  """

  hidden_size: int = 16
  momentum: float = 0.9
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  num_layers: int | None = None
  param_tree: tuple[tuple[str, tuple[int, ...]], ...] | None = None
  init_lr: float = setting(1e-3, config=False)
  directions: tuple[str, ...] = BASE_DIRECTIONS
  schedule: str = "constant"
  init_direction: str = setting("adam", config=False)

  name = "layerwise_combo_lopt"
  RENAMED: ClassVar[dict[str, str]] = {"hidden": "hidden_size"}
  ADDED: ClassVar[dict[str, Any]] = {"param_tree": None, "directions": list(BASE_DIRECTIONS),
                                     "schedule": "constant"}
  #: Per-tensor inputs of the weight network, in column order.
  feature_names: ClassVar[tuple[str, ...]] = (
      ("log_rms(g)", "log_rms(m)", "log_rms(trace)", "log_rms(adam)", "log_rms(p)",
       "log(rms(g)/rms(p))", "cos(g,m)") + TIME_FEATURE_NAMES + pt.LOSS_FEATURE_NAMES)

  def __post_init__(self) -> None:
    super().__post_init__()
    if self.param_tree is not None:
      if self.num_layers is None:
        object.__setattr__(self, "num_layers", len(self.param_tree))
      elif self.num_layers != len(self.param_tree):
        raise ValueError(f"num_layers={self.num_layers} but param_tree lists "
                         f"{len(self.param_tree)} tensors")
    if self.num_layers is not None and self.num_layers < 1:
      raise ValueError(f"num_layers must be >= 1, got {self.num_layers}")
    if not self.init_lr > 0:
      raise ValueError(f"init_lr must be > 0, got {self.init_lr}")
    bad = [d for d in self.directions if d not in DIRECTIONS]
    if bad or len(set(self.directions)) != len(self.directions) or "adam" not in self.directions:
      raise ValueError(f"directions must be distinct names of {DIRECTIONS} including 'adam' "
                       f"(the init), got {tuple(self.directions)}")
    if self.schedule not in SCHEDULES:
      raise ValueError(f"unknown schedule {self.schedule!r}; valid: {SCHEDULES}")
    if self.init_direction not in self.directions:
      raise ValueError(f"init_direction={self.init_direction!r} is not one of the "
                       f"directions {tuple(self.directions)}")

  @classmethod
  def for_params(cls, params: Any, **kwargs: Any) -> "LayerwiseComboLOpt":
    """The optimizer specialized to ``params``' tree (``num_layers``, ``param_tree``).

    Example::

      lo = LayerwiseComboLOpt.for_params(task.init(key), init_lr=3e-3)
    """
    spec = tree_spec(params)
    return cls(num_layers=len(spec), param_tree=spec, **kwargs)

  def check_params(self, params: Any) -> None:
    """Raises ``ValueError`` if the optimizer is specialized to a tree other than ``params``'.

    Only the number of tensors and their shapes (in leaf order) count; paths name them.
    """
    if self.num_layers is None:
      return
    got = tree_spec(params)
    if self.param_tree is None:
      if len(got) != self.num_layers:
        raise ValueError(f"layerwise_combo_lopt was built with num_layers={self.num_layers} "
                         f"but the parameter tree has {len(got)} tensors")
      return
    msg = _tree_mismatch(self.param_tree, got)
    if msg is not None:
      raise ValueError(f"layerwise_combo_lopt: these meta-parameters are specialized to "
                       f"another model: {msg}; specialize them to this model "
                       f"(meta_train.specialize) or use unspecialized weights")

  def init(self, key: jax.Array) -> dict[str, Any]:
    """Meta-params that make the optimizer exactly ``optax.adam(init_lr)``.

    (With ``init_direction`` other than ``"adam"``: that one direction at ``init_lr``,
    as :meth:`one_hot`.)

    Returns ``{"net": [{"w", "b"}, ...], "bias": (4,), "log_lr": ()}`` plus
    ``"layer_bias": (num_layers, 4)`` and ``"layer_log_lr": (num_layers,)`` (zeros)
    when ``num_layers`` is set.
    """
    k = len(self.directions)
    net = pt.dense_init(key, [(len(self.feature_names), self.hidden_size),
                               (self.hidden_size, k)], [1.0, 0.0])
    mp = {"net": net,
          "bias": jnp.asarray(np.eye(k, dtype=np.float32)[
              self.directions.index(self.init_direction)]),
          "log_lr": jnp.asarray(np.log(self.init_lr), jnp.float32)}
    if self.num_layers is not None:
      mp["layer_bias"] = jnp.zeros((self.num_layers, k), jnp.float32)
      mp["layer_log_lr"] = jnp.zeros((self.num_layers,), jnp.float32)
    return mp

  def one_hot(self, direction: str, learning_rate: float, key: jax.Array | None = None
              ) -> dict[str, Any]:
    """Meta-params selecting exactly one base direction with ``learning_rate``.

    Args:
      direction: one of the optimizer's ``directions``.
      learning_rate: the step size.
      key: PRNG key for the (zeroed-out) network; defaults to ``jax.random.key(0)``.
    """
    if direction not in self.directions:
      raise ValueError(f"unknown direction {direction!r}; valid: {tuple(self.directions)}")
    mp = self.init(jax.random.key(0) if key is None else key)
    k = self.directions.index(direction)
    mp["bias"] = jnp.asarray(np.eye(len(self.directions), dtype=np.float32)[k])
    mp["log_lr"] = jnp.asarray(np.log(learning_rate), jnp.float32)
    return mp

  def transform(self, meta_params: Any, num_steps: Horizon | None = None
                ) -> optax.GradientTransformationExtraArgs:
    """Returns the optimizer for a ``num_steps`` horizon: a positive int or ``"unknown"``.

    ``num_steps`` is required (:func:`lopt._horizon.check_num_steps`); meta-training
    passes a traced int.
    """
    num_steps = check_num_steps(num_steps, self.name)
    if self.schedule == "cosine" and isinstance(num_steps, str):
      raise ValueError(f"{self.name} with schedule='cosine' decays over num_steps and needs "
                       f"the horizon: pass num_steps=<int>, not {num_steps!r}")
    beta, b1, b2 = self.momentum, self.b1, self.b2

    def init_fn(params):
      self.check_params(params)
      layout = self.layout(params)
      z = lambda: jnp.zeros((layout.num_rows,), jnp.float32)  # distinct buffers (donation)
      return LayerwiseComboLOptState(
          jnp.zeros((), jnp.int32), z(), z(), z(), pt.init_loss_stats(),
          jnp.zeros((layout.num_leaves, len(self.directions)), jnp.float32))

    def update_fn(updates, state, params=None, *, loss=None, **extra):
      del extra
      self.check_params(params)
      layout = self.layout(params)
      g, finite = finite_rows(layout.flatten(updates))
      step = optax.safe_increment(state.step)
      trace = g + beta * state.trace
      mu = (1.0 - b1) * g + b1 * state.mu
      nu = (1.0 - b2) * jnp.square(g) + b2 * state.nu
      adam = self.adam_direction(mu, nu, step)

      loss_stats = pt.update_loss_stats(state.loss_stats, loss)
      log = lambda x: 0.1 * jnp.log(x + 1e-12)
      p = layout.flatten(params)
      # Per-tensor mean squares of g, m, trace, adam, p and mean of g * m; each on a
      # contiguous (num_rows,) vector (row-major (num_rows, 6) stacks are slow on CPU).
      means = jnp.stack([layout.tensor_mean(x) for x in (
          g * g, mu * mu, trace * trace, adam * adam, p * p, g * mu)], axis=1)  # (T, 6)
      rms = jnp.sqrt(means[:, :5] + 1e-20)  # (T, 5)
      cos = means[:, 5:] / (rms[:, 0:1] * rms[:, 1:2] + 1e-12)
      stats = jnp.concatenate(
          [log(rms[:, :5]), jnp.clip(log(rms[:, 0:1]) - log(rms[:, 4:5]), -2.0, 2.0), cos],
          axis=1)
      shared = jnp.concatenate([time_features(step, num_steps),
                                pt.loss_features(loss_stats, loss)])
      feats = jnp.concatenate(
          [stats, jnp.broadcast_to(shared[None, :], (layout.num_leaves, shared.shape[0]))],
          axis=1)
      coef = mlp_forward(meta_params["net"], feats) + meta_params["bias"][None, :]
      log_lr = jnp.broadcast_to(meta_params["log_lr"], (layout.num_leaves,))
      if self.num_layers is not None:
        coef = coef + meta_params["layer_bias"]
        log_lr = log_lr + meta_params["layer_log_lr"]
      coef = coef * jnp.exp(log_lr)[:, None]  # (T, 4)
      if self.schedule == "cosine":
        frac = jnp.clip((step - 1).astype(jnp.float32) / num_steps, 0.0, 1.0)
        coef = coef * (0.5 * (1.0 + jnp.cos(jnp.pi * frac)))

      u = self.direction_rows(layout, g, trace, mu, adam)
      step_rows = -sum(pt.tensor_rows(layout, coef[:, i]) * u_k for i, u_k in enumerate(u))
      new_state = LayerwiseComboLOptState(step, trace, mu, nu, loss_stats, coef)
      return layout.unflatten(restore_nonfinite(step_rows, finite)), new_state

    return with_checks(optax.GradientTransformationExtraArgs(init_fn, update_fn), self.name,
                       needs_params=True, needs_loss=True)

  def adam_direction(self, mu: jax.Array, nu: jax.Array, step: jax.Array) -> jax.Array:
    """The bias-corrected Adam direction ``m_hat / (sqrt(v_hat) + eps)`` after ``step`` updates."""
    t = step.astype(jnp.float32)
    nu_hat = nu / (1.0 - self.b2 ** t)
    return (mu / (1.0 - self.b1 ** t)) / (
        jnp.sqrt(jnp.maximum(nu_hat, 1e-36)) + self.eps)  # safe gradient at 0

  def direction_rows(self, layout: FlatLayout, g: jax.Array, trace: jax.Array, mu: jax.Array,
                     adam: jax.Array) -> list[jax.Array]:
    """The base directions' ``(num_rows,)`` rows (before the minus), in ``directions`` order.

    Args:
      layout: the parameters' :meth:`layout`.
      g, trace, mu: gradient, heavy-ball trace and Adam first moment rows.
      adam: the bias-corrected Adam direction rows.
    """
    rows = {"sgd": lambda: g, "momentum": lambda: trace, "adam": lambda: adam,
            "sign": lambda: jnp.sign(mu), "orth": lambda: orthogonalized(layout, trace)}
    return [rows[d]() for d in self.directions]


def _tree_mismatch(expected: TreeSpec, got: TreeSpec) -> str | None:
  """How ``got`` differs from the specialized tree ``expected`` (counts, then shapes), or None."""
  first = next((i for i, (a, b) in enumerate(zip(expected, got)) if a[1] != b[1]),
               min(len(expected), len(got)))
  def leaf(spec: TreeSpec) -> str:
    return f"{spec[first][0]} {spec[first][1]}" if first < len(spec) else "nothing"
  if len(expected) != len(got):
    return (f"expected {len(expected)} tensors (the model it was specialized to), got "
            f"{len(got)}; first difference at tensor {first}: expected {leaf(expected)}, "
            f"got {leaf(got)}")
  if first < len(expected):
    return (f"tensor {first} of {len(expected)} has another shape: expected "
            f"{leaf(expected)}, got {leaf(got)}")
  return None
