"""Training many runs at once: one compiled function vmapped over seeds (and learning rates).

Every run records its training loss at every step and the task's test metrics
(``task.metrics`` on ``task.eval_batch``) on a fixed grid of steps, so test-loss
speedups compare like with like. Per-step wall-clock times are measured apart,
one run at a time, by :func:`time_per_step`.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import tasks

__all__ = ["Runs", "eval_every", "evaluate_runs", "grid_runs", "lr_grid", "time_per_step",
           "train_runs"]


class Runs(NamedTuple):
  """Losses, test metrics and final parameters of a batch of training runs.

  Attributes:
    losses: training losses, shape ``batch_shape + (steps,)`` (NaN/Inf kept).
    test: each test metric, shape ``batch_shape + (num_evals,)``, measured after
      the steps in ``test_steps``.
    test_steps: ``(num_evals,)`` the steps after which ``test`` was measured.
    params: final parameters, every leaf with leading ``batch_shape`` axes.
    seconds: wall time of the compiled run (all runs together, excluding compile).
    compile_seconds: time to trace and compile.
    num_runs: the number of runs (product of ``batch_shape``).
  """
  losses: np.ndarray
  test: dict[str, np.ndarray]
  test_steps: np.ndarray
  params: Any
  seconds: float
  compile_seconds: float
  num_runs: int


def lr_grid(num: int = 13, low: float = 1e-4, high: float = 1.0) -> np.ndarray:
  """``num`` learning rates log-spaced from ``low`` to ``high`` (inclusive).

  Raises:
    ValueError: unless ``0 < low <= high`` and ``num >= 1`` (``num == 1`` needs ``low == high``).
  """
  if not (np.isfinite(low) and np.isfinite(high) and 0 < low <= high):
    raise ValueError(f"learning-rate grid needs 0 < low <= high, got low={low}, high={high}")
  if num < 1 or (num == 1 and low != high):
    raise ValueError(f"learning-rate grid needs num >= 2 points (or low == high), got {num}")
  return np.logspace(np.log10(low), np.log10(high), num)


def eval_every(num_steps: int, points: int = 40) -> int:
  """The test-evaluation interval: the largest divisor of ``num_steps`` giving >= ``points``.

  Baselines running ``k * num_steps`` steps use the same interval, so the
  optimizer's and the baselines' test curves share their grid points.
  """
  num_steps, points = int(num_steps), max(1, int(points))
  best = 1
  for d in range(1, num_steps // points + 1):
    if num_steps % d == 0:
      best = d
  return best


def _one_run(task: tasks.Task, make_tx: Callable[[Any], optax.GradientTransformation],
             num_steps: int, every: int, eval_key: jax.Array
             ) -> Callable[[Any, jax.Array], tuple[Any, jax.Array, dict[str, jax.Array]]]:
  """``(hparam, key) -> (final params, losses, test metrics)``; keys split as in ``tasks.train``."""
  if num_steps % every:
    raise ValueError(f"{num_steps} steps are not a multiple of the evaluation interval {every}")
  eval_batch = task.eval_batch(eval_key, "test")

  def run(hparam, key):
    tx = make_tx(hparam)
    k_init, k_train = jax.random.split(key)
    params = task.init(k_init)

    def step(carry, k):
      p, s = carry
      p, s, loss = tasks.train_step(task, tx, p, s, k)
      return (p, s), loss

    def chunk(carry, ks):
      carry, losses = jax.lax.scan(step, carry, ks)
      return carry, (losses, task.metrics(carry[0], eval_key, eval_batch))

    keys = jax.random.split(k_train, num_steps).reshape(num_steps // every, every)
    (params, _), (losses, test) = jax.lax.scan(chunk, (params, tx.init(params)), keys)
    return params, losses.reshape(-1), test

  return run


# XLA:CPU at its default backend optimization level (3) spends ~3x longer
# compiling these small scanned loops than level 1, with no faster code; on
# CPU, compilation is most of a short benchmark's wall time.
_CPU_COMPILER_OPTIONS = {"xla_backend_optimization_level": 1}


def _compile(fn, *args):
  opts = _CPU_COMPILER_OPTIONS if jax.default_backend() == "cpu" else None
  return jax.jit(fn).lower(*args).compile(compiler_options=opts)


def _timed(fn, *args) -> tuple[Any, float, float]:
  t0 = time.perf_counter()
  compiled = _compile(fn, *args)
  t1 = time.perf_counter()
  out = jax.block_until_ready(compiled(*args))
  return out, time.perf_counter() - t1, t1 - t0


def _runs(out, num_steps: int, every: int, secs: float, csecs: float, num_runs: int) -> Runs:
  params, losses, test = out
  return Runs(np.asarray(losses, np.float64), {k: np.asarray(v, np.float64)
                                               for k, v in test.items()},
              np.arange(every, num_steps + 1, every), params, secs, csecs, num_runs)


def train_runs(task: tasks.Task, tx: optax.GradientTransformation, num_steps: int,
               keys: jax.Array, *, every: int | None = None,
               eval_key: jax.Array | None = None) -> Runs:
  """Trains ``task`` with ``tx`` from each key, all runs vmapped in one compiled scan.

  Run ``i`` equals ``tasks.train(task, tx, num_steps, keys[i])`` (same init and
  batches); non-finite losses are kept, never raised.

  Args:
    task: the task.
    tx: any optax transformation (``loss=`` is passed to ones taking extra args).
    num_steps: steps per run.
    keys: ``(num_seeds,)`` PRNG keys.
    every: test metrics are measured every ``every`` steps (default
      :func:`eval_every` of ``num_steps``).
    eval_key: the key of the fixed evaluation batch (default ``key(1)``).

  Returns:
    :class:`Runs` with ``losses`` of shape ``(num_seeds, num_steps)``.
  """
  every = eval_every(num_steps) if every is None else int(every)
  eval_key = jax.random.key(1) if eval_key is None else eval_key
  run = _one_run(task, lambda _: tx, int(num_steps), every, eval_key)
  out, secs, csecs = _timed(jax.vmap(lambda k: run(None, k)), keys)
  return _runs(out, int(num_steps), every, secs, csecs, int(keys.shape[0]))


def grid_runs(task: tasks.Task, make_tx: Callable[[jax.Array], optax.GradientTransformation],
              learning_rates: np.ndarray, num_steps: int, keys: jax.Array, *,
              every: int | None = None, eval_key: jax.Array | None = None) -> Runs:
  """Trains ``task`` at every learning rate and seed in one compiled function.

  ``make_tx(lr)`` is called inside the vmapped function with a traced scalar
  ``lr``, so one compilation serves the whole grid (any optax optimizer whose
  learning rate only scales its update works this way).

  Example::

    runs = grid_runs(task, lambda lr: optax.adam(lr), lr_grid(), 400, keys)
    runs.losses.shape  # (13, num_seeds, 400)

  Args:
    task: the task.
    make_tx: learning rate -> optimizer.
    learning_rates: ``(num_lrs,)`` learning rates.
    num_steps: steps per run.
    keys: ``(num_seeds,)`` PRNG keys, shared by every learning rate.
    every: the test-evaluation interval (default :func:`eval_every`).
    eval_key: the key of the fixed evaluation batch.

  Returns:
    :class:`Runs` with ``losses`` of shape ``(num_lrs, num_seeds, num_steps)``.
  """
  every = eval_every(num_steps) if every is None else int(every)
  eval_key = jax.random.key(1) if eval_key is None else eval_key
  run = _one_run(task, make_tx, int(num_steps), every, eval_key)
  fn = jax.vmap(jax.vmap(run, in_axes=(None, 0)), in_axes=(0, None))
  lrs = jnp.asarray(learning_rates, jnp.float32)
  out, secs, csecs = _timed(fn, lrs, keys)
  return _runs(out, int(num_steps), every, secs, csecs, int(lrs.shape[0] * keys.shape[0]))


def time_per_step(task: tasks.Task, optimizers: Mapping[str, optax.GradientTransformation],
                  key: jax.Array, *, block: int = 20, rounds: int = 7,
                  min_seconds: float = 0.05) -> dict[str, float]:
  """Wall seconds per training step of each optimizer, one run at a time, interleaved.

  Each optimizer's step (batch, loss and gradient, update) is compiled as a
  ``lax.scan`` of ``block`` steps for a single run (not vmapped). The timed
  calls alternate between optimizers, round after round, in a rotating order,
  so all of them see the same machine load; the median over rounds is kept.
  A round of one optimizer repeats its call until about ``min_seconds`` have
  passed (calibrated once), so dispatch overhead and timer noise stay small
  for tiny tasks.
  Ratios of these times are what the wall-clock speedup uses.

  Args:
    task: the task.
    optimizers: name -> optimizer.
    key: PRNG key of the initial parameters and batches.
    block: steps per timed call.
    rounds: timed rounds per optimizer.
    min_seconds: the least duration of one optimizer's round.

  Returns:
    name -> median seconds per step.
  """
  if block < 1 or rounds < 1:
    raise ValueError(f"block and rounds must be >= 1, got {block} and {rounds}")
  k_init, k_steps = jax.random.split(key)
  params = task.init(k_init)
  keys = jax.random.split(k_steps, block)
  fns, carries = {}, {}
  for name, tx in optimizers.items():
    def steps(carry, ks, _tx=tx):
      def body(c, k):
        p, s, _ = tasks.train_step(task, _tx, c[0], c[1], k)
        return (p, s), None
      return jax.lax.scan(body, carry, ks)[0]
    carry = (params, tx.init(params))
    fns[name] = _compile(steps, carry, keys)
    carries[name] = jax.block_until_ready(fns[name](carry, keys))  # warm-up
  reps = {}
  for name in optimizers:   # calibrate: calls per round so a round lasts ~min_seconds
    t0 = time.perf_counter()
    carries[name] = jax.block_until_ready(fns[name](carries[name], keys))
    reps[name] = max(1, int(np.ceil(min_seconds / max(time.perf_counter() - t0, 1e-6))))
  times: dict[str, list[float]] = {n: [] for n in optimizers}
  names = list(optimizers)
  for r in range(rounds):
    for name in names[r % len(names):] + names[:r % len(names)]:
      t0 = time.perf_counter()
      for _ in range(reps[name]):
        carries[name] = fns[name](carries[name], keys)
      jax.block_until_ready(carries[name])
      times[name].append((time.perf_counter() - t0) / reps[name])
  return {n: float(np.median(t)) / block for n, t in times.items()}


def evaluate_runs(task: tasks.Task, params: Any, key: jax.Array,
                  split: str = "test") -> dict[str, np.ndarray]:
  """``task.metrics`` on ``task.eval_batch`` for a batch of parameters (leading axis = runs).

  Returns:
    Each metric as an array of shape ``(num_runs,)``.
  """
  batch = task.eval_batch(key, split)
  fn = jax.jit(jax.vmap(task.metrics, in_axes=(0, None, None)))
  return {k: np.asarray(v, np.float64) for k, v in fn(params, key, batch).items()}
