"""Truncated unrolls: inner training of one task instance, K steps at a time.

Meta-training never trains an inner task from start to finish in one go. Each
*task instance* carries an :class:`InnerState` (its parameters, the learned
optimizer's state, how far it is into its run, how long that run is, its PRNG
key and its augmentation scalars) and :func:`unroll` advances it by one
*truncation* of ``K`` steps compiled as one ``lax.scan``; batches are sampled
inside the scan. An instance that reaches its horizon (or whose loss became
non-finite) is re-initialized at the start of the next truncation by
:func:`reset_if_done`: new initial parameters, a new horizon, new augmentation.

Everything here works on one instance; estimators ``jax.vmap`` it over the ``N``
instances of one task configuration (instances of one configuration share the
architecture, so they stack). Instances are *staggered*: the first run of each
instance has a horizon drawn uniformly from ``K, 2K, ..., max_horizon``, so after
the first resets the instances sit at different points of training and every
truncation mixes early and late training.

Task augmentation (for meta-generalization, as in Metz et al. 2022, "VeLO"):

* parameter rescaling: the optimizer sees ``u = params / s`` and the gradient
  ``s * grad`` for ``s`` log-uniform in ``param_scale_range``;
* loss (gradient) rescaling: the optimizer sees ``c * loss`` and ``c * grad`` for
  ``c`` log-uniform in ``loss_scale_range``;
* varied horizons: each run's length is drawn from ``[min_horizon, max_horizon]``.

The meta-objective of a truncation is the mean of ``task.normalize(loss)`` over
its ``K`` steps, computed on the unscaled loss (on a fresh held-out batch after
each update when ``meta_loss_split="test"``). Two options align it with the
benchmark's speedup at the horizon, which is decided by the loss at the *end* of
a run: ``meta_loss_log`` takes ``log(max(normalized loss, 1e-4))`` (so halving a
small late loss counts as much as halving the initial one) and
``meta_loss_weighting="late"`` weights each step by ``2 * step / horizon`` (a
ramp whose mean over a run is one; the objective of a whole run is then
dominated by its second half). Both are fixed functions of each inner step, so
ES and PES stay unbiased estimators of the weighted whole-run objective.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

import lopt
import tasks

__all__ = ["META_LOSS_WEIGHTINGS", "InnerState", "UnrollConfig", "UnrollOutput",
           "accepts_traced_horizon",
           "init_inner_state", "reset_if_done", "unroll"]


#: Valid ``UnrollConfig.meta_loss_weighting`` values.
META_LOSS_WEIGHTINGS = ("uniform", "late")
#: The floor of the normalized loss before its log (``meta_loss_log``).
LOG_LOSS_FLOOR = 1e-4


@dataclasses.dataclass(frozen=True)
class UnrollConfig:
  """How task instances are unrolled.

  Attributes:
    trunc_length: ``K``, inner steps per truncation.
    min_horizon: shortest inner run (rounded up to a multiple of ``K``).
    max_horizon: longest inner run (rounded up to a multiple of ``K``).
    param_scale_range: ``(lo, hi)`` of the log-uniform parameter rescaling ``s``.
    loss_scale_range: ``(lo, hi)`` of the log-uniform loss rescaling ``c``.
    meta_loss_split: "train" (the training loss of each step) or "test" (the loss
      of the updated parameters on a held-out batch).
    stagger: draw each instance's first horizon from ``K..max_horizon``.
    horizon_aware: build the optimizer with ``num_steps=`` the instance's horizon
      (a traced int), so step-fraction features see the true horizon; otherwise,
      or when the optimizer needs a Python int (see
      :func:`accepts_traced_horizon`), ``num_steps=max_horizon``.
    meta_loss_weighting: "uniform" (every inner step counts the same) or "late"
      (step ``t`` of a run of ``T`` steps weighs ``2 t / T``).
    meta_loss_log: take the log of the normalized loss (floored at 1e-4).
    remat: recompute each inner step's activations when differentiating the
      unroll (``jax.checkpoint`` on the step): truncated backprop then stores only
      the carried state per step instead of every activation of the task and the
      optimizer, for about one extra forward pass; the gradient is the same. No
      effect on ES and PES, which do not differentiate the unroll.
  """

  trunc_length: int = 20
  min_horizon: int = 200
  max_horizon: int = 1000
  param_scale_range: tuple[float, float] = (1.0, 1.0)
  loss_scale_range: tuple[float, float] = (1.0, 1.0)
  meta_loss_split: str = "train"
  stagger: bool = True
  horizon_aware: bool = True
  meta_loss_weighting: str = "uniform"
  meta_loss_log: bool = False
  remat: bool = False

  def __post_init__(self):
    if self.trunc_length < 1:
      raise ValueError(f"trunc_length must be >= 1, got {self.trunc_length}")
    if not 1 <= self.min_horizon <= self.max_horizon:
      raise ValueError(f"need 1 <= min_horizon <= max_horizon, got {self.min_horizon}, "
                       f"{self.max_horizon}")
    if self.meta_loss_split not in ("train", "test"):
      raise ValueError(f"meta_loss_split must be 'train' or 'test', got {self.meta_loss_split!r}")
    if self.meta_loss_weighting not in META_LOSS_WEIGHTINGS:
      raise ValueError(f"meta_loss_weighting must be one of {', '.join(META_LOSS_WEIGHTINGS)}; "
                       f"got {self.meta_loss_weighting!r}")
    for name in ("param_scale_range", "loss_scale_range"):
      lo, hi = getattr(self, name)
      if not 0 < lo <= hi:
        raise ValueError(f"{name} must satisfy 0 < lo <= hi, got {(lo, hi)}")

  @property
  def min_truncs(self) -> int:
    return -(-self.min_horizon // self.trunc_length)

  @property
  def max_truncs(self) -> int:
    return -(-self.max_horizon // self.trunc_length)


class InnerState(NamedTuple):
  """The state of one task instance between truncations.

  Attributes:
    params: the parameters the optimizer sees (``task params / param_scale``).
    opt_state: the learned optimizer's state.
    step: int32, inner steps taken in the current run.
    horizon: int32, length of the current run (a multiple of ``K``).
    key: uint32[2] raw PRNG key of the current run (batches use ``fold_in(key, step)``).
    param_scale: float32 augmentation ``s``.
    loss_scale: float32 augmentation ``c``.
    diverged: bool, a non-finite loss occurred in the current run.
  """

  params: Any
  opt_state: Any
  step: jax.Array
  horizon: jax.Array
  key: jax.Array
  param_scale: jax.Array
  loss_scale: jax.Array
  diverged: jax.Array


class UnrollOutput(NamedTuple):
  """Per-truncation outputs of :func:`unroll` (one instance).

  Attributes:
    meta_loss: scalar, mean normalized loss over the truncation.
    losses: (K,) unscaled training losses.
    was_reset: bool, the instance was re-initialized before this truncation.
  """

  meta_loss: jax.Array
  losses: jax.Array
  was_reset: jax.Array


def _key(raw: jax.Array) -> jax.Array:
  return jax.random.wrap_key_data(raw)


def _log_uniform(key: jax.Array, lo: float, hi: float) -> jax.Array:
  if lo == hi:
    return jnp.asarray(lo, jnp.float32)
  u = jax.random.uniform(key, (), jnp.float32, jnp.log(lo), jnp.log(hi))
  return jnp.exp(u)


def _scale(tree: Any, s: jax.Array) -> Any:
  return jax.tree.map(lambda x: x * s.astype(x.dtype), tree)


def _divide(tree: Any, s: jax.Array) -> Any:
  return jax.tree.map(lambda x: x / s.astype(x.dtype), tree)


_TRACED_HORIZON_OK: dict[int, tuple[Any, bool]] = {}


def accepts_traced_horizon(lo: lopt.LearnedOptimizer, meta_params: Any,
                           params: Any = None) -> bool:
  """Whether ``lo.transform(meta_params, num_steps)`` works with a traced ``num_steps``.

  Probed once per optimizer object by tracing ``init`` and one ``update`` on the
  shapes of ``params`` (default: a tiny tree; an optimizer specialized to one
  parameter tree refuses any other) -- no computation runs.
  """
  cached = _TRACED_HORIZON_OK.get(id(lo))
  if cached is not None and cached[0] is lo:
    return cached[1]
  if params is None:
    params = {"w": jnp.ones((3,), jnp.float32)}
  shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(jnp.shape(x), x.dtype), params)

  def probe(theta, horizon, p):
    tx = lo.transform(theta, horizon)
    return tx.update(p, tx.init(p), p, loss=jnp.ones(()))

  try:
    jax.eval_shape(probe, meta_params, jnp.ones((), jnp.int32), shapes)
    ok = True
  except (jax.errors.ConcretizationTypeError, TypeError):
    ok = False
  _TRACED_HORIZON_OK[id(lo)] = (lo, ok)
  return ok


def _transform(lo: lopt.LearnedOptimizer, meta_params: Any, horizon: jax.Array,
               cfg: UnrollConfig, params: Any) -> optax.GradientTransformationExtraArgs:
  if cfg.horizon_aware and accepts_traced_horizon(lo, meta_params, params):
    return lo.transform(meta_params, horizon)
  return lo.transform(meta_params, cfg.max_truncs * cfg.trunc_length)


def _fresh_run(task: tasks.Task, lo: lopt.LearnedOptimizer, meta_params: Any, raw_key: jax.Array,
               cfg: UnrollConfig, min_truncs: int) -> InnerState:
  """A new run of an instance: fresh init, horizon and augmentation from ``raw_key``."""
  k_run, k_init, k_h, k_s, k_c = jax.random.split(_key(raw_key), 5)
  truncs = jax.random.randint(k_h, (), min_truncs, cfg.max_truncs + 1)
  horizon = (truncs * cfg.trunc_length).astype(jnp.int32)
  s = _log_uniform(k_s, *cfg.param_scale_range)
  c = _log_uniform(k_c, *cfg.loss_scale_range)
  params = _divide(task.init(k_init), s)
  opt_state = _transform(lo, meta_params, horizon, cfg, params).init(params)
  return InnerState(params, opt_state, jnp.zeros((), jnp.int32), horizon,
                    jax.random.key_data(k_run), s, c, jnp.zeros((), bool))


def init_inner_state(task: tasks.Task, lo: lopt.LearnedOptimizer, meta_params: Any,
                     key: jax.Array, cfg: UnrollConfig) -> InnerState:
  """The initial state of one instance (first horizon staggered when ``cfg.stagger``).

  Args:
    task: the instance's task.
    lo: the learned optimizer.
    meta_params: its weights (only used to build the initial optimizer state).
    key: a PRNG key (typed or raw uint32[2]).
    cfg: the unroll configuration.

  Returns:
    An :class:`InnerState` with ``step == 0``.
  """
  raw = key if key.dtype == jnp.uint32 else jax.random.key_data(key)
  return _fresh_run(task, lo, meta_params, raw, cfg, 1 if cfg.stagger else cfg.min_truncs)


def reset_if_done(task: tasks.Task, lo: lopt.LearnedOptimizer, meta_params: Any,
                  state: InnerState, cfg: UnrollConfig, done: jax.Array | None = None
                  ) -> tuple[InnerState, jax.Array]:
  """Re-initializes the instance if its run is over or diverged.

  The new run's randomness comes from the old run's key, so resets are exactly
  reproducible. Under ``vmap`` both branches are computed and selected.

  Args:
    task, lo, meta_params, state, cfg: as in :func:`unroll`.
    done: force the decision (bool scalar); by default the run is done when
      ``step >= horizon`` or it diverged.

  Returns:
    ``(state, was_reset)``.
  """
  if done is None:
    done = (state.step >= state.horizon) | state.diverged
  fresh = _fresh_run(task, lo, meta_params, jax.random.key_data(
      jax.random.fold_in(_key(state.key), 0x5EED)), cfg, cfg.min_truncs)
  new = jax.tree.map(lambda a, b: jnp.where(done, a, b), fresh, state)
  return new, done


def unroll(task: tasks.Task, lo: lopt.LearnedOptimizer, meta_params: Any, state: InnerState,
           cfg: UnrollConfig, *, reset: bool = True) -> tuple[InnerState, UnrollOutput]:
  """Advances one instance by ``cfg.trunc_length`` inner steps (one ``lax.scan``).

  Differentiable with respect to ``meta_params`` (truncated backprop
  differentiates this function; ES/PES evaluate it at perturbed meta-params).

  Example::

    state = init_inner_state(task, lo, theta, key, cfg)
    state, out = unroll(task, lo, theta, state, cfg)   # out.meta_loss: scalar

  Args:
    task: the instance's task.
    lo: the learned optimizer.
    meta_params: its weights.
    state: the instance's state.
    cfg: the unroll configuration.
    reset: first re-initialize the instance if its run is over (see
      :func:`reset_if_done`).

  Returns:
    ``(new_state, UnrollOutput)``.
  """
  was_reset = jnp.zeros((), bool)
  if reset:
    state, was_reset = reset_if_done(task, lo, meta_params, state, cfg)
  tx = _transform(lo, meta_params, state.horizon, cfg, state.params)
  s, c = state.param_scale, state.loss_scale
  run_key = _key(state.key)

  def body(carry, _):
    params, opt_state, step = carry
    k_batch, k_loss, k_test = jax.random.split(jax.random.fold_in(run_key, step), 3)
    batch = task.batch(k_batch, "train")

    def scaled_loss(u):
      return c * task.loss(_scale(u, s), k_loss, batch)

    closs, grads = jax.value_and_grad(scaled_loss)(params)
    updates, opt_state = tx.update(grads, opt_state, params, loss=closs)
    params = optax.apply_updates(params, updates)
    loss = closs / c
    if cfg.meta_loss_split == "test":
      meta = task.loss(_scale(params, s), k_test, task.batch(k_test, "test"))
    else:
      meta = loss
    norm = task.normalize(meta)
    if cfg.meta_loss_log:
      norm = jnp.log(jnp.maximum(norm, LOG_LOSS_FLOOR))
    if cfg.meta_loss_weighting == "late":
      norm = norm * (2.0 * (step + 1).astype(jnp.float32)
                     / jnp.maximum(state.horizon, 1).astype(jnp.float32))
    return (params, opt_state, step + 1), (loss, norm)

  (params, opt_state, step), (losses, norm) = jax.lax.scan(
      jax.checkpoint(body) if cfg.remat else body, (state.params, state.opt_state, state.step),
      None, length=cfg.trunc_length)
  diverged = state.diverged | ~jnp.all(jnp.isfinite(losses))
  new = state._replace(params=params, opt_state=opt_state, step=step, diverged=diverged)
  return new, UnrollOutput(jnp.mean(norm), losses, was_reset)
