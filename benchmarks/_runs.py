"""Training many runs at once: one compiled function vmapped over seeds (and Adam's lrs)."""

from __future__ import annotations

import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import tasks

__all__ = ["Runs", "adam_grid", "evaluate_runs", "lr_grid", "train_runs"]


class Runs(NamedTuple):
  """Losses and final parameters of a batch of training runs.

  Attributes:
    losses: training losses, shape ``batch_shape + (steps,)`` (NaN/Inf kept).
    params: final parameters, every leaf with leading ``batch_shape`` axes.
    seconds: wall time of the compiled run (all runs together, excluding compile).
    compile_seconds: time to trace and compile.
    num_runs: the number of runs (product of ``batch_shape``).
  """
  losses: np.ndarray
  params: Any
  seconds: float
  compile_seconds: float
  num_runs: int

  @property
  def ms_per_step(self) -> float:
    """Wall milliseconds per step of one run (vmapped runs share the time)."""
    return 1e3 * self.seconds / (self.losses.shape[-1] * self.num_runs)


def lr_grid(num: int = 15, low: float = 1e-5, high: float = 1.0) -> np.ndarray:
  """``num`` learning rates log-spaced from ``low`` to ``high`` (inclusive)."""
  return np.logspace(np.log10(low), np.log10(high), num)


def _one_run(task: tasks.Task, make_tx: Callable[[Any], optax.GradientTransformation],
             num_steps: int) -> Callable[[Any, jax.Array], tuple[Any, jax.Array]]:
  """``(hparam, key) -> (final params, losses)``; keys split as in ``tasks.train``."""

  def run(hparam, key):
    tx = make_tx(hparam)
    k_init, k_train = jax.random.split(key)
    params = task.init(k_init)

    def body(carry, k):
      p, s = carry
      p, s, loss = tasks.train_step(task, tx, p, s, k)
      return (p, s), loss

    (params, _), losses = jax.lax.scan(body, (params, tx.init(params)),
                                       jax.random.split(k_train, num_steps))
    return params, losses

  return run


# XLA:CPU at its default backend optimization level (3) spends ~3x longer
# compiling these small scanned loops than level 1, with no faster code; on
# CPU, compilation is most of a short benchmark's wall time.
_CPU_COMPILER_OPTIONS = {"xla_backend_optimization_level": 1}


def _timed(fn, *args) -> tuple[Any, float, float]:
  t0 = time.perf_counter()
  opts = _CPU_COMPILER_OPTIONS if jax.default_backend() == "cpu" else None
  compiled = jax.jit(fn).lower(*args).compile(compiler_options=opts)
  t1 = time.perf_counter()
  out = jax.block_until_ready(compiled(*args))
  return out, time.perf_counter() - t1, t1 - t0


def train_runs(task: tasks.Task, tx: optax.GradientTransformation, num_steps: int,
               keys: jax.Array) -> Runs:
  """Trains ``task`` with ``tx`` from each key, all runs vmapped in one compiled scan.

  Run ``i`` equals ``tasks.train(task, tx, num_steps, keys[i])`` (same init and
  batches); non-finite losses are kept, never raised.

  Args:
    task: the task.
    tx: any optax transformation (``loss=`` is passed to ones taking extra args).
    num_steps: steps per run.
    keys: ``(num_seeds,)`` PRNG keys.

  Returns:
    :class:`Runs` with ``losses`` of shape ``(num_seeds, num_steps)``.
  """
  run = _one_run(task, lambda _: tx, int(num_steps))
  fn = jax.vmap(lambda k: run(None, k))
  (params, losses), secs, csecs = _timed(fn, keys)
  return Runs(np.asarray(losses, np.float64), params, secs, csecs, int(keys.shape[0]))


def adam_grid(task: tasks.Task, learning_rates: np.ndarray, num_steps: int,
              keys: jax.Array, **adam_kwargs: Any) -> Runs:
  """Trains ``task`` with Adam at every learning rate and seed in one compiled function.

  The learning rate enters through ``optax.inject_hyperparams(optax.adam)`` as
  a traced value, so a single compilation is vmapped over the grid and seeds.

  Args:
    task: the task.
    learning_rates: ``(num_lrs,)`` learning rates.
    num_steps: steps per run.
    keys: ``(num_seeds,)`` PRNG keys, shared by every learning rate.
    **adam_kwargs: other ``optax.adam`` arguments (``b1``, ``b2``, ``eps``).

  Returns:
    :class:`Runs` with ``losses`` of shape ``(num_lrs, num_seeds, num_steps)``.
  """
  make = lambda lr: optax.inject_hyperparams(optax.adam)(learning_rate=lr, **adam_kwargs)
  run = _one_run(task, make, int(num_steps))
  fn = jax.vmap(jax.vmap(run, in_axes=(None, 0)), in_axes=(0, None))
  lrs = jnp.asarray(learning_rates, jnp.float32)
  (params, losses), secs, csecs = _timed(fn, lrs, keys)
  return Runs(np.asarray(losses, np.float64), params, secs, csecs,
              int(lrs.shape[0] * keys.shape[0]))


def evaluate_runs(task: tasks.Task, params: Any, key: jax.Array,
                  split: str = "test") -> dict[str, np.ndarray]:
  """``tasks.evaluate`` for a batch of parameters (leading axis = runs), vmapped.

  Uses the whole split for tasks with ``full_batch``, else one ``task.batch``.

  Returns:
    Each metric as an array of shape ``(num_runs,)``.
  """
  batch = task.full_batch(split) if hasattr(task, "full_batch") else task.batch(key, split)
  fn = jax.jit(jax.vmap(task.metrics, in_axes=(0, None, None)))
  return {k: np.asarray(v, np.float64) for k, v in fn(params, key, batch).items()}
