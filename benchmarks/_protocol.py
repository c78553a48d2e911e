"""The speedup-over-tuned-Adam protocol, as pure NumPy functions on loss curves.

Following learned_optimization's protocol (Metz et al., 2022, "VeLO: Training
Versatile Learned Optimizers by Scaling Up", Sec. 4 and App. G):

1. smooth every training-loss curve with a debiased exponential moving average;
2. average Adam's smoothed curves over seeds, for each learning rate of the grid,
   and take their lower envelope over learning rates: at each step, the best loss
   any tuned Adam reached;
3. for each step ``t`` of the optimizer under test, find the number of steps the
   envelope needs to reach the optimizer's smoothed loss at ``t``; the speedup at
   ``t`` is ``steps_adam / t``. The speedup at the horizon ``T`` is the headline.

Across tasks the speedups are summarized by their interquartile mean with a
(stratified) percentile-bootstrap 95 % interval (Agarwal et al., 2021, "Deep
Reinforcement Learning at the Edge of the Statistical Precipice").

Conventions: a curve is indexed by step; ``curve[i]`` is the loss after ``i``
updates, and reaching a value at index ``i`` costs ``i + 1`` steps (so both
sides of a speedup count the same way). A non-finite loss marks divergence:
from the first non-finite value on, the curve is ``+inf``.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

__all__ = ["auto_ema_decay", "bootstrap_ci", "diverged", "ema", "horizon_speedup", "iqm",
           "lower_envelope", "ratio_scores", "speedup_curve", "steps_to_reach",
           "wallclock_speedup"]


def diverged(curves: np.ndarray) -> np.ndarray:
  """Whether each curve (last axis = steps) contains a non-finite value."""
  return ~np.all(np.isfinite(np.asarray(curves, np.float64)), axis=-1)


def _poison_after_divergence(curves: np.ndarray) -> np.ndarray:
  """Sets each curve to ``+inf`` from its first non-finite value on."""
  bad = np.cumsum(~np.isfinite(curves), axis=-1) > 0
  return np.where(bad, np.inf, curves)


def auto_ema_decay(num_steps: int, *, fraction: float = 0.02, max_decay: float = 0.95) -> float:
  """An EMA decay whose window ``1 / (1 - decay)`` is ``fraction`` of the horizon.

  The window is at least 2 steps and the decay at most ``max_decay``, so short
  runs are not dominated by the smoothing lag and long ones stay readable.
  """
  window = max(2.0, fraction * num_steps)
  return float(min(max_decay, 1.0 - 1.0 / window))


def ema(curves: np.ndarray, decay: float = 0.9) -> np.ndarray:
  r"""Debiased exponential moving average along the last axis.

  .. math::
     m_t = \beta m_{t-1} + (1 - \beta) x_t, \qquad \hat m_t = m_t / (1 - \beta^{t+1})

  with :math:`m_{-1} = 0`, so ``ema(c)[0] == c[0]`` and a constant curve is left
  unchanged. Values from the first non-finite one on become ``+inf``.

  Example::

    ema(np.array([1.0, 0.0]), decay=0.5)  # -> [1.0, 1/3]

  Args:
    curves: array of shape ``(..., steps)``.
    decay: the EMA decay ``beta`` in ``[0, 1)``; 0 leaves curves unchanged.

  Returns:
    Array of the same shape (float64).
  """
  if not 0.0 <= decay < 1.0:
    raise ValueError(f"decay must be in [0, 1), got {decay}")
  x = _poison_after_divergence(np.asarray(curves, np.float64))
  out = np.empty_like(x)
  m = np.zeros(x.shape[:-1])
  with np.errstate(invalid="ignore"):
    for t in range(x.shape[-1]):
      m = decay * m + (1.0 - decay) * x[..., t]
      out[..., t] = m / (1.0 - decay ** (t + 1))
  return np.where(np.isnan(out), np.inf, out)


def lower_envelope(curves: np.ndarray, *, seed_axis: int | None = 1) -> np.ndarray:
  """The best loss over learning rates at each step (after averaging seeds).

  Args:
    curves: Adam's (smoothed) curves, shape ``(num_lrs, num_seeds, steps)``
      (or ``(num_lrs, steps)`` with ``seed_axis=None``).
    seed_axis: the axis averaged over first, or None.

  Returns:
    Array ``(steps,)``: ``min_lr mean_seed curves[lr, seed, t]``. A learning rate
    whose mean is ``+inf`` (a diverged seed) does not contribute after divergence.
  """
  c = np.asarray(curves, np.float64)
  if seed_axis is not None:
    c = c.mean(axis=seed_axis)
  return np.min(c, axis=0)


def steps_to_reach(reference: np.ndarray, targets: np.ndarray | float) -> np.ndarray:
  """Steps the reference curve needs to first reach (``<=``) each target loss.

  Args:
    reference: a curve of shape ``(steps,)``.
    targets: loss values, any shape.

  Returns:
    Float array of ``targets``' shape: ``i + 1`` for the first index ``i`` with
    ``reference[i] <= target``, ``inf`` where the reference never gets there.
  """
  ref = np.asarray(reference, np.float64)
  best = np.minimum.accumulate(np.where(np.isnan(ref), np.inf, ref))  # non-increasing
  t = np.asarray(targets, np.float64)
  # First index with best <= t: searchsorted on the increasing sequence -best.
  idx = np.searchsorted(-best, -t, side="left")
  idx = np.where(np.isnan(t), len(best), idx)
  return np.where(idx < len(best), idx + 1.0, np.inf)


def speedup_curve(curve: np.ndarray, envelope: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Speedup over the envelope at every step of ``curve``.

  ``speedup[i] = steps_to_reach(envelope, curve[i]) / (i + 1)``. Where the
  envelope never reaches ``curve[i]`` within its horizon ``T``, the speedup is
  only known to exceed ``T / (i + 1)``; that lower bound is returned and flagged.
  A diverged point (``+inf`` loss) is reached by the envelope in one step.

  Args:
    curve: the optimizer's smoothed curve, ``(steps,)``.
    envelope: tuned Adam's lower envelope, ``(adam_steps,)``.

  Returns:
    ``(speedup, is_lower_bound)``, each of shape ``(steps,)``.
  """
  c = np.asarray(curve, np.float64)
  need = steps_to_reach(envelope, np.where(np.isnan(c), np.inf, c))
  lower = ~np.isfinite(need)
  need = np.where(lower, float(len(envelope)), need)
  return need / np.arange(1, len(c) + 1, dtype=np.float64), lower


def horizon_speedup(final: np.ndarray | float, envelope: np.ndarray, horizon: int, *,
                    grid: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Speedup at the horizon: steps the baseline needs to reach ``final`` / ``horizon``.

  The baseline may run longer than the optimizer (``len(envelope) > horizon``,
  by default 4x), so speedups up to ``len(envelope) / horizon`` are measured.
  Where the baseline never reaches ``final`` the speedup is only known to be at
  least ``last_step / horizon``: that bound is returned and flagged.

  Example::

    t = np.arange(1, 401)
    horizon_speedup(np.exp(-3 * 100 / 100), np.exp(-t / 100), 100)  # -> (3.0, False)

  Args:
    final: the optimizer's loss at its horizon (any shape, e.g. one per seed).
    envelope: the baseline's curve, one value per step (``envelope[i]`` after
      ``i + 1`` steps) or one per entry of ``grid``.
    horizon: the optimizer's number of steps.
    grid: the steps (increasing) at which ``envelope`` was measured, for curves
      evaluated on a step grid (test losses); None means every step.

  Returns:
    ``(speedup, is_lower_bound)``, each of ``final``'s shape.
  """
  env = np.asarray(envelope, np.float64)
  steps = (np.arange(1, len(env) + 1, dtype=np.float64) if grid is None
           else np.asarray(grid, np.float64))
  if steps.shape != env.shape:
    raise ValueError(f"grid has {steps.shape} steps but the envelope {env.shape}")
  target = np.asarray(final, np.float64)
  idx = steps_to_reach(env, np.where(np.isnan(target), np.inf, target))  # 1-based index
  lower = ~np.isfinite(idx)
  need = np.where(lower, steps[-1], steps[np.clip(np.nan_to_num(idx, posinf=1), 1,
                                                    len(steps)).astype(int) - 1])
  return need / float(horizon), lower


def wallclock_speedup(speedup_steps: np.ndarray | float, seconds_per_step: float,
                      baseline_seconds_per_step: float) -> np.ndarray:
  """Seconds the baseline needs to reach the optimizer's loss / the optimizer's seconds.

  With the baseline needing ``s * T`` steps of ``b`` seconds and the optimizer
  ``T`` steps of ``o`` seconds, this is ``s * b / o``; a lower-bound step
  speedup gives a lower-bound wall-clock speedup.
  """
  if not (seconds_per_step > 0 and baseline_seconds_per_step > 0):
    raise ValueError(f"per-step times must be positive, got {seconds_per_step} and "
                     f"{baseline_seconds_per_step}")
  return np.asarray(speedup_steps, np.float64) * (baseline_seconds_per_step / seconds_per_step)


def ratio_scores(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
  """Element-wise ``numerator / denominator`` of per-(task, seed) speedups.

  Used for "did meta-training help": a learned optimizer's speedups over those
  of its own untrained init on the same tasks and seeds (> 1: it helped).
  A zero denominator with a positive numerator gives ``inf``; 0/0 gives 1.
  """
  a, b = np.asarray(numerator, np.float64), np.asarray(denominator, np.float64)
  if a.shape != b.shape:
    raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
  with np.errstate(divide="ignore", invalid="ignore"):
    return np.where((a == 0) & (b == 0), 1.0, a / b)


def iqm(values: np.ndarray) -> float:
  """Interquartile mean: the mean of the middle 50 % (``int(n/4)`` cut per side).

  Equal to ``scipy.stats.trim_mean(values, 0.25)`` on the flattened values; for
  fewer than four values it is the plain mean.
  """
  v = np.sort(np.asarray(values, np.float64).ravel())
  if v.size == 0:
    return float("nan")
  k = int(0.25 * v.size)
  return float(np.mean(v[k:v.size - k]))


def bootstrap_ci(scores: np.ndarray, *, stat: Callable[[np.ndarray], float] = iqm,
                 num_samples: int = 2000, confidence: float = 0.95,
                 seed: int = 0) -> tuple[float, float, float]:
  """A statistic of ``scores`` with a stratified percentile-bootstrap interval.

  Rows are strata (tasks), columns are runs (seeds): each bootstrap sample
  redraws the runs of every task with replacement, as rliable does.

  Example::

    point, lo, hi = bootstrap_ci(speedups)  # speedups: (num_tasks, num_seeds)

  Args:
    scores: ``(num_tasks, num_runs)`` (a 1-D array is one run per task, and is
      then resampled over tasks).
    stat: maps the resampled ``(num_tasks, num_runs)`` array to a number.
    num_samples: bootstrap resamples.
    confidence: the interval's coverage.
    seed: seed of the NumPy generator used for resampling.

  Returns:
    ``(stat(scores), low, high)``.
  """
  s = np.asarray(scores, np.float64)
  point = float(stat(s))
  rng = np.random.default_rng(seed)
  if s.ndim == 1:
    idx = rng.integers(0, s.shape[0], size=(num_samples, s.shape[0]))
    boots = np.array([stat(s[i]) for i in idx])
  else:
    n_tasks, n_runs = s.shape
    idx = rng.integers(0, n_runs, size=(num_samples, n_tasks, n_runs))
    rows = np.arange(n_tasks)[None, :, None]
    boots = np.array([stat(b) for b in s[rows, idx]])
  alpha = (1.0 - confidence) / 2.0
  lo, hi = np.quantile(boots, [alpha, 1.0 - alpha])
  return point, float(lo), float(hi)
