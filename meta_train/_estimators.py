"""Meta-gradient estimators: truncated backprop, PES and antithetic ES.

Each estimator is a small frozen object bound to one task (configuration), one
learned optimizer and an :class:`~meta_train.UnrollConfig`. It owns a batched
state for ``N`` task instances (leading axis ``N``) and has two pure functions::

  state = est.init(meta_params, keys)                     # keys: (N, 2) uint32
  grads, state, metrics = est.per_instance(meta_params, state, keys)
  grad, state, metrics = est.meta_grad(meta_params, state, keys)  # mean over N

``per_instance`` returns one meta-gradient estimate per instance (leading axis
``N``) and per-instance metrics, so the caller can drop non-finite estimates,
shard instances across devices and average with a collective (see
:mod:`meta_train._trainer`). ``meta_grad`` is the plain single-device average.

The objective of a truncation is the mean normalized loss over its ``K`` steps
(:func:`meta_train.unroll`). With ``sigma`` the perturbation scale:

* :class:`TruncatedBackprop`: ``d/dtheta`` of the truncation objective through
  the unrolled inner steps, the start state held fixed. Cheap and low-variance
  but biased: it ignores the effect of ``theta`` on the state a truncation
  starts from (the short-horizon bias, Wu et al. 2018).
* :class:`ES`: antithetic evolution strategies, ``eps (L(theta+eps) -
  L(theta-eps)) / (2 sigma^2)`` with ``eps ~ N(0, sigma^2 I)``; both unrolls
  start from the same state, which then continues along the ``+eps`` branch.
  With ``trunc_length == max_horizon`` this is full-unroll ES.
* :class:`PES`: persistent evolution strategies (Vicol, Metz and Sohl-Dickstein,
  ICML 2021, "Unbiased Gradient Estimation in Unrolled Computation Graphs with
  Persistent Evolution Strategies"). The ``+eps`` and ``-eps`` unrolls keep their
  own states across truncations and the perturbations are accumulated since the
  instance's last reset, ``xi = sum eps``; the estimate ``xi (L+ - L-) / (2
  sigma^2)`` summed over the truncations of a run is unbiased for the gradient of
  the (Gaussian-smoothed) whole-run objective.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

import lopt
import tasks
from meta_train._unroll import InnerState, UnrollConfig, init_inner_state, reset_if_done, unroll

__all__ = ["ES", "ESTIMATORS", "EstimatorConfig", "PES", "PESState", "TruncatedBackprop",
           "make_estimator"]


class PESState(NamedTuple):
  """Per-instance PES state: the two antithetic runs and the accumulated perturbation."""
  pos: InnerState
  neg: InnerState
  accum: Any


def _sample_like(key: jax.Array, tree: Any, sigma: float) -> Any:
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(key, len(leaves))
  return treedef.unflatten([sigma * jax.random.normal(k, x.shape, jnp.float32).astype(x.dtype)
                            for k, x in zip(keys, leaves)])


def _axpy(a: float, x: Any, y: Any) -> Any:
  return jax.tree.map(lambda u, v: a * u + v, x, y)


def _metrics(out, state: InnerState) -> dict[str, jax.Array]:
  return {"meta_loss": out.meta_loss, "train_loss": jnp.mean(out.losses),
          "resets": out.was_reset.astype(jnp.int32),
          "nonfinite_inner": (~jnp.all(jnp.isfinite(out.losses))).astype(jnp.int32),
          "inner_step": state.step}


@dataclasses.dataclass(frozen=True, eq=False)
class _Estimator:
  """Shared plumbing: binding to a task/LO/config, vmapping, averaging."""

  task: tasks.Task
  lo: lopt.LearnedOptimizer
  cfg: UnrollConfig

  #: inner-training unrolls per instance per truncation (for throughput figures).
  unrolls_per_instance = 1

  def _init_one(self, meta_params, raw_key):
    return init_inner_state(self.task, self.lo, meta_params, raw_key, self.cfg)

  def _grad_one(self, meta_params, state, raw_key):
    raise NotImplementedError

  def init(self, meta_params: Any, keys: jax.Array) -> Any:
    """Initial batched state of ``keys.shape[0]`` instances (keys: raw uint32[N, 2])."""
    return jax.vmap(self._init_one, in_axes=(None, 0))(meta_params, keys)

  def per_instance(self, meta_params: Any, state: Any, keys: jax.Array
                   ) -> tuple[Any, Any, dict[str, jax.Array]]:
    """One estimate per instance.

    Args:
      meta_params: the learned optimizer's weights (shared by all instances).
      state: the batched estimator state (leading axis ``N``).
      keys: raw uint32[N, 2] keys, one per instance, for this truncation.

    Returns:
      ``(grads, state, metrics)``: ``grads`` like ``meta_params`` with a leading
      axis ``N``; ``metrics`` a dict of ``(N,)`` arrays.
    """
    return jax.vmap(self._grad_one, in_axes=(None, 0, 0))(meta_params, state, keys)

  def meta_grad(self, meta_params: Any, state: Any, keys: jax.Array
                ) -> tuple[Any, Any, dict[str, jax.Array]]:
    """The meta-gradient estimate averaged over the instances, and mean metrics."""
    grads, state, metrics = self.per_instance(meta_params, state, keys)
    mean = lambda x: jnp.mean(x.astype(jnp.float32), axis=0)
    return jax.tree.map(mean, grads), state, {k: mean(v) for k, v in metrics.items()}


class TruncatedBackprop(_Estimator):
  """Truncated backpropagation through time over one truncation.

  ``grad = d/dtheta mean_k normalize(loss_k)`` through the ``K`` unrolled steps,
  the truncation's start state held fixed (no gradient flows into earlier
  truncations).
  """

  def _grad_one(self, meta_params, state, raw_key):
    del raw_key
    state, was_reset = reset_if_done(self.task, self.lo, meta_params, state, self.cfg)

    def objective(theta):
      new, out = unroll(self.task, self.lo, theta, state, self.cfg, reset=False)
      return out.meta_loss, (new, out)

    grads, (new, out) = jax.grad(objective, has_aux=True)(meta_params)
    out = out._replace(was_reset=was_reset)
    return grads, new, _metrics(out, new)


def _antithetic_pair(est, meta_params, eps, pos, neg, was_reset):
  """Unrolls ``meta_params + eps`` from ``pos`` and ``meta_params - eps`` from ``neg``.

  Shared by ES and PES. Returns the two advanced states, the antithetic
  coefficient ``(L+ - L-) / (2 sigma^2)`` and the pair's merged unroll output.
  """
  pos, out_p = unroll(est.task, est.lo, _axpy(1.0, eps, meta_params), pos, est.cfg,
                      reset=False)
  neg, out_n = unroll(est.task, est.lo, _axpy(-1.0, eps, meta_params), neg, est.cfg,
                      reset=False)
  coef = (out_p.meta_loss - out_n.meta_loss) / (2.0 * est.sigma**2)
  out = out_p._replace(meta_loss=0.5 * (out_p.meta_loss + out_n.meta_loss),
                       losses=jnp.concatenate([out_p.losses, out_n.losses]), was_reset=was_reset)
  return pos, neg, coef, out


@dataclasses.dataclass(frozen=True, eq=False)
class ES(_Estimator):
  """Antithetic evolution strategies over one truncation (see module docstring).

  Attributes:
    sigma: standard deviation of the Gaussian perturbation of ``meta_params``.
  """

  sigma: float = 0.01
  unrolls_per_instance = 2

  def _grad_one(self, meta_params, state, raw_key):
    eps = _sample_like(jax.random.wrap_key_data(raw_key), meta_params, self.sigma)
    state, was_reset = reset_if_done(self.task, self.lo, meta_params, state, self.cfg)
    pos, _, coef, out = _antithetic_pair(self, meta_params, eps, state, state, was_reset)
    grads = jax.tree.map(lambda e: coef.astype(e.dtype) * e, eps)
    return grads, pos, _metrics(out, pos)


@dataclasses.dataclass(frozen=True, eq=False)
class PES(_Estimator):
  """Persistent evolution strategies, antithetic (Vicol et al. 2021).

  Attributes:
    sigma: standard deviation of the Gaussian perturbation of ``meta_params``.
  """

  sigma: float = 0.01
  unrolls_per_instance = 2

  def _init_one(self, meta_params, raw_key):
    s = super()._init_one(meta_params, raw_key)
    return PESState(s, s, jax.tree.map(jnp.zeros_like, meta_params))

  def _grad_one(self, meta_params, state: PESState, raw_key):
    eps = _sample_like(jax.random.wrap_key_data(raw_key), meta_params, self.sigma)
    # both branches restart together (same fresh run, from the shared key); a
    # diverged negative branch also restarts the pair
    done = (state.pos.step >= state.pos.horizon) | state.pos.diverged | state.neg.diverged
    pos, _ = reset_if_done(self.task, self.lo, meta_params, state.pos, self.cfg, done)
    neg = jax.tree.map(lambda a, b: jnp.where(done, a, b), pos, state.neg)
    accum = jax.tree.map(lambda a, e: jnp.where(done, 0.0, a).astype(a.dtype) + e,
                         state.accum, eps)
    pos, neg, coef, out = _antithetic_pair(self, meta_params, eps, pos, neg, done)
    grads = jax.tree.map(lambda a: coef.astype(a.dtype) * a, accum)
    return grads, PESState(pos, neg, accum), _metrics(out, pos)


ESTIMATORS = {"tbptt": TruncatedBackprop, "es": ES, "pes": PES}


@dataclasses.dataclass(frozen=True)
class EstimatorConfig:
  """Which meta-gradient estimator, and its options.

  Attributes:
    name: "pes", "es" or "tbptt" (:data:`ESTIMATORS`).
    sigma: ES/PES perturbation standard deviation (unused by "tbptt").
  """

  name: str = "pes"
  sigma: float = 0.01

  def __post_init__(self):
    if self.name not in ESTIMATORS:
      raise ValueError(f"unknown estimator {self.name!r}; valid names: "
                       f"{', '.join(sorted(ESTIMATORS))}")
    if not self.sigma > 0:
      raise ValueError(f"sigma must be > 0, got {self.sigma}")

  def build(self, task: tasks.Task, lo: lopt.LearnedOptimizer, cfg: UnrollConfig) -> _Estimator:
    """The estimator bound to ``task``, ``lo`` and the unroll settings ``cfg``."""
    if self.name == "tbptt":
      return TruncatedBackprop(task, lo, cfg)
    return ESTIMATORS[self.name](task, lo, cfg, self.sigma)


def make_estimator(name: str, task: tasks.Task, lo: lopt.LearnedOptimizer, cfg: UnrollConfig,
                   *, sigma: float = 0.01) -> _Estimator:
  """Builds the estimator registered under ``name`` ("tbptt", "es" or "pes").

  Raises:
    KeyError: unknown name; the message lists the valid ones.
  """
  if name not in ESTIMATORS:
    raise KeyError(f"unknown estimator {name!r}; valid names: {', '.join(sorted(ESTIMATORS))}")
  return EstimatorConfig(name, sigma).build(task, lo, cfg)
