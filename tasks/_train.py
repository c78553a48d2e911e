"""Train a task with any optax optimizer as one ``lax.scan``."""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import numpy as np
import optax

from tasks._base import Task

__all__ = ["NonFiniteLossError", "TrainResult", "evaluate", "train", "train_step"]


class NonFiniteLossError(FloatingPointError):
  """Training produced a NaN or infinite loss."""


class TrainResult(NamedTuple):
  """What :func:`train` returns: final params and optimizer state, per-step losses."""
  params: Any
  opt_state: Any
  losses: jax.Array


def train_step(task: Task, tx: optax.GradientTransformation, params, opt_state, key):
  """One step: sample a batch, loss and gradient, optimizer update. Pure; jit it.

  The loss is passed to ``tx.update`` as ``loss=`` when ``tx`` takes extra args.
  Returns ``(params, opt_state, loss)``.
  """
  k_batch, k_loss = jax.random.split(key)
  batch = task.batch(k_batch, "train")
  loss, grads = jax.value_and_grad(task.loss)(params, k_loss, batch)
  if isinstance(tx, optax.GradientTransformationExtraArgs):
    updates, opt_state = tx.update(grads, opt_state, params, loss=loss)
  else:
    updates, opt_state = tx.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state, loss


@functools.partial(jax.jit, static_argnames=("task", "tx", "num_steps"))
def _scan_train(task, tx, num_steps, params, opt_state, key):
  def body(carry, k):
    params, opt_state = carry
    params, opt_state, loss = train_step(task, tx, params, opt_state, k)
    return (params, opt_state), loss

  (params, opt_state), losses = jax.lax.scan(body, (params, opt_state),
                                             jax.random.split(key, num_steps))
  return params, opt_state, losses


def train(task: Task, tx: optax.GradientTransformation, num_steps: int, key: jax.Array, *,
          params: Any = None, opt_state: Any = None, check_finite: bool = True) -> TrainResult:
  """Trains ``task`` with ``tx`` for ``num_steps`` steps, compiled as one ``lax.scan``.

  Example::

    task = tasks.get("digits_mlp")
    result = tasks.train(task, lopt.get("adam"), 500, jax.random.key(0))
    result.losses  # (500,) training losses

  Args:
    task: the task.
    tx: any optax transformation (learned ones receive ``loss=``).
    num_steps: number of steps.
    key: PRNG key for init (when ``params`` is None) and batches.
    params: start from these parameters instead of ``task.init``.
    opt_state: continue from this optimizer state instead of ``tx.init(params)``.
    check_finite: raise :class:`NonFiniteLossError` if any loss is NaN/Inf.

  Returns:
    A :class:`TrainResult`.
  """
  k_init, k_train = jax.random.split(key)
  if params is None:
    params = task.init(k_init)
  if opt_state is None:
    opt_state = tx.init(params)
  params, opt_state, losses = _scan_train(task, tx, int(num_steps), params, opt_state, k_train)
  if check_finite:
    bad = np.flatnonzero(~np.isfinite(np.asarray(losses)))
    if bad.size:
      raise NonFiniteLossError(
          f"training {task!r} produced a non-finite loss ({float(losses[bad[0]])}) first at "
          f"step {int(bad[0])} of {num_steps}; lower the learning rate or pass "
          f"check_finite=False to inspect the curve")
  return TrainResult(params, opt_state, losses)


def evaluate(task: Task, params: Any, key: jax.Array, split: str = "test") -> dict[str, float]:
  """Returns ``task.metrics`` on ``task.eval_batch(key, split)`` as Python floats.

  The evaluation batch is the whole split for tasks that hold it in memory, or a
  fixed large batch drawn from ``key`` (see :meth:`Task.eval_batch`).
  """
  batch = task.eval_batch(key, split)
  return {k: float(v) for k, v in jax.jit(task.metrics)(params, key, batch).items()}


