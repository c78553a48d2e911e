"""The G.pt protocol for return-prompted models (RL policies): settings and measurements.

The rule is the loss protocol's (:mod:`meta_train.gpt._protocol`): every setting is
chosen on validation init ids, written with its UTC date to a settings file before any
test figure, and checked against the weights' SHA-256; test ids are disjoint from the
validation ids and from every training run. What differs for a return (higher is
better, measured by rolling out episodes):

* returns are measured on ``eval_episodes`` episodes per network (the task's
  ``eval_batch_size`` is replaced; it is a run setting, not part of the task);
* Adam (REINFORCE gradients) runs on a short grid ``adam_lrs`` for ``adam_at`` steps,
  its return measured after *every* step on ``curve_episodes`` episodes; Adam's
  networks after ``adam_at`` steps are measured again on ``eval_episodes``;
* prompt alignment reports R^2 pooled and over the high range (prompts >=
  ``high_prompt_min``) instead of the low one;
* the spread of samples at temperatures > 0 from one start, permutation-aligned.

File layout: that of :mod:`meta_train.gpt._protocol` with format
:data:`ReturnProtocolSettings.FORMAT`.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import optax

import tasks
from meta_train.gpt._align import pairwise_aligned
from meta_train.gpt._baselines import r_squared
from meta_train.gpt._context import ProtocolContext
from meta_train.gpt._measures import adam_every_step, median_summary
from meta_train.gpt._protocol import SettingsJSON

__all__ = ["ReturnProtocolSettings", "adam_returns", "adam_seed_spread", "flat_key",
           "return_alignment_r2", "sample_spread", "wall_clock"]


@dataclasses.dataclass(frozen=True)
class ReturnProtocolSettings(SettingsJSON):
  """Every setting of a return-protocol test evaluation (one owner: this file).

  Attributes:
    weights, weights_sha256, dataset, init_scale_range, temperature, guidance, target,
      num_sampling_steps, eta, num_inits, num_validation_inits, num_align_nets,
      num_prompts, seed: as in :class:`~meta_train.gpt.ProtocolSettings` (the test
      inits are of the ``train`` scheme).
    eval_episodes: episodes per return measurement of a network.
    repeats: updates in a row reported (1 .. repeats).
    adam_lrs: Adam's learning rates; ``adam_at`` its steps (return after every one,
      on ``curve_episodes`` episodes).
    high_prompt_min: prompts at least this are the high range of the alignment R^2.
    spread_temperatures: temperatures (> 0) whose samples' spread is measured;
      ``num_spread_starts`` starting networks (the first test inits) with
      ``spread_samples`` samples each.
    success_return: the return a one-update median must reach (issue #19: 400).
  """
  FORMAT: ClassVar[str] = "lopt-gpt-protocol-return/1"
  KIND: ClassVar[str] = "return-protocol"
  weights: str
  weights_sha256: str
  dataset: str
  init_scale_range: tuple[float, float]
  temperature: float
  guidance: float
  target: float
  num_sampling_steps: int = 20
  eta: float = 0.0
  num_inits: int = 48
  num_validation_inits: int = 48
  eval_episodes: int = 64
  repeats: int = 2
  adam_lrs: tuple[float, ...] = (0.005, 0.01, 0.02, 0.04, 0.08, 0.16)
  adam_at: int = 100
  curve_episodes: int = 16
  num_align_nets: int = 16
  num_prompts: int = 20
  high_prompt_min: float = 400.0
  spread_temperatures: tuple[float, ...] = (0.3, 0.7, 1.0)
  num_spread_starts: int = 8
  spread_samples: int = 16
  success_return: float = 400.0
  seed: int = 0

  def __post_init__(self):
    for name in ("num_inits", "num_validation_inits", "eval_episodes", "repeats", "adam_at",
                 "curve_episodes", "num_align_nets", "num_sampling_steps", "num_spread_starts"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
    if not self.adam_lrs or min(self.adam_lrs) <= 0:
      raise ValueError(f"adam_lrs must hold positive rates, got {self.adam_lrs}")
    if any(t <= 0 for t in self.spread_temperatures) or self.spread_samples < 2:
      raise ValueError("spread_temperatures must be > 0 and spread_samples >= 2")
    if self.num_prompts < 2 or max(self.num_align_nets, self.num_spread_starts) > self.num_inits:
      raise ValueError("num_prompts must be >= 2 and num_align_nets, num_spread_starts "
                       "<= num_inits")


def return_alignment_r2(prompts: np.ndarray, achieved: np.ndarray, *,
                        high_min: float) -> dict[str, Any]:
  """R^2 of achieved against prompted return (identity line): pooled, per net, high range."""
  p, a = np.asarray(prompts, np.float64), np.asarray(achieved, np.float64)
  high = p >= high_min
  return {"pooled": r_squared(p.ravel(), a.ravel()),
          "per_net_mean": float(np.mean([r_squared(x, y) for x, y in zip(p, a)])),
          "high": r_squared(p[high], a[high]) if high.sum() >= 2 else None,
          "high_mean_abs_error": float(np.mean(np.abs(a[high] - p[high]))) if high.any()
          else None,
          "num_high": int(high.sum()), "high_min": float(high_min), "num_pairs": int(p.size)}


def adam_returns(ctx: ProtocolContext, s: ReturnProtocolSettings, starts: np.ndarray,
                 keys: jax.Array, level: float) -> dict[str, Any]:
  """Adam from ``starts`` on every rate: median return curves, steps to ``level`` and 400.

  The return after every step (``curve_episodes`` episodes, the same episode keys at
  every step of a run) gives per rate a median curve over inits; the best rate is the
  one with the highest median at ``adam_at``. Its networks there are measured again on
  ``eval_episodes`` episodes, like G.pt's.
  """
  cfg = {**ctx.index["task_config"], "eval_batch_size": s.curve_episodes}
  curve_task = tasks.get(ctx.index["task"], **cfg)
  curves, p_at = adam_every_step(curve_task, ctx.unflatten(starts), keys, s.adam_lrs,
                                 metric="test_return", ceiling=s.adam_at, at=s.adam_at)
  # median_summary is for lower-is-better metrics: negate, then negate back.
  summ = median_summary(-curves, s.adam_lrs, -level, at=s.adam_at)
  reach = median_summary(-curves, s.adam_lrs, -s.success_return, at=s.adam_at)
  best = s.adam_lrs.index(summ["best_lr_at"])
  nets = np.asarray(jax.vmap(ctx.tok.flatten)(jax.tree.map(lambda x: x[best], p_at)))
  final = ctx.measure(nets)[ctx.metric]
  med = np.median(curves, axis=1)
  return {"median_at_curve": -summ["median_at"], "at": s.adam_at,
          "best_lr_at": summ["best_lr_at"], "best_lr_on_grid_edge": summ["best_lr_on_grid_edge"],
          "median_at": float(np.median(final)), "mean_at": float(np.mean(final)),
          "fraction_at_least_success": float(np.mean(final >= s.success_return)),
          "steps_to_match": summ["steps_to_match"],
          "steps_to_match_per_lr": summ["steps_to_match_per_lr"], "level": float(level),
          "steps_to_success": reach["steps_to_match"],
          "median_at_per_lr": {f"{lr:g}": float(m[s.adam_at]) for lr, m in zip(s.adam_lrs, med)},
          "median_curve_best_lr": med[best].round(2).tolist(), "nets": nets}


def sample_spread(ctx: ProtocolContext, s: ReturnProtocolSettings, starts: np.ndarray,
                  key: jax.Array, temperature: float) -> dict[str, Any]:
  """``spread_samples`` samples per start at ``temperature``: returns and aligned spread.

  The spread is the median over starts of the median permutation-aligned L2 distance
  between the samples of one start (:func:`~meta_train.gpt._align.pairwise_aligned`);
  the raw L2 distance and the distance moved from the start are reported beside it.
  """
  k = s.spread_samples
  m0 = ctx.measure(starts)[ctx.metric]
  reps = np.repeat(starts, k, 0)
  new = ctx.generate(key, reps, np.repeat(m0, k), s.target, temperature, s.guidance)
  ret = ctx.measure(new)[ctx.metric].reshape(len(starts), k)
  new = new.reshape(len(starts), k, -1)
  aligned = [float(np.median(pairwise_aligned(x, ctx.layout))) for x in new]
  raw = [float(np.median([np.linalg.norm(x[i] - x[j]) for i in range(k)
                          for j in range(i + 1, k)])) for x in new]
  moved = np.linalg.norm(new - starts[:, None], axis=-1)
  return {"temperature": float(temperature), "median_return": float(np.median(ret)),
          "fraction_at_least_success": float(np.mean(ret >= s.success_return)),
          "per_start_median_return": np.median(ret, 1).round(1).tolist(),
          "aligned_pairwise_median": float(np.median(aligned)),
          "aligned_pairwise_per_start": np.round(aligned, 3).tolist(),
          "raw_pairwise_median": float(np.median(raw)),
          "moved_median": float(np.median(moved))}


def adam_seed_spread(ctx: ProtocolContext, s: ReturnProtocolSettings, starts: np.ndarray,
                     lr: float, key: jax.Array) -> dict[str, Any]:
  """The reference spread: Adam at ``lr`` for ``adam_at`` steps from each start with
  ``spread_samples`` different batch seeds; aligned pairwise distance and returns."""
  k = s.spread_samples
  reps = np.repeat(starts, k, 0)
  keys = jax.random.split(key, len(reps))
  _, p_at = adam_every_step(tasks.get(ctx.index["task"], **{**ctx.index["task_config"],
                                                             "eval_batch_size": 1}),
                            ctx.unflatten(reps), keys, (lr,), metric="test_return",
                            ceiling=s.adam_at, at=s.adam_at)
  nets = np.asarray(jax.vmap(ctx.tok.flatten)(jax.tree.map(lambda x: x[0], p_at)))
  ret = ctx.measure(nets)[ctx.metric]
  nets = nets.reshape(len(starts), k, -1)
  aligned = [float(np.median(pairwise_aligned(x, ctx.layout))) for x in nets]
  return {"lr": float(lr), "median_return": float(np.median(ret)),
          "aligned_pairwise_median": float(np.median(aligned)),
          "moved_median": float(np.median(np.linalg.norm(nets - starts[:, None], axis=-1)))}


def _interleaved_seconds(calls: dict[str, tuple], rounds: int = 5) -> dict[str, float]:
  """Median seconds per call of each ``name: (fn, *args)``, timed in interleaved rounds.

  Each function is compiled first; then every round times each once in turn, so a
  change of machine load hits all of them alike.
  """
  for fn, *args in calls.values():
    jax.block_until_ready(fn(*args))  # compile
  times: dict[str, list[float]] = {k: [] for k in calls}
  for _ in range(rounds):
    for k, (fn, *args) in calls.items():
      t0 = time.perf_counter()
      jax.block_until_ready(fn(*args))
      times[k].append(time.perf_counter() - t0)
  return {k: float(np.median(v)) for k, v in times.items()}


def wall_clock(ctx: ProtocolContext, s: ReturnProtocolSettings,
               ids: np.ndarray) -> dict[str, float]:
  """Seconds of one G.pt update and of one Adam step, one network each, jitted, this machine.

  XLA's FLOP count covers a loop body once, and an Adam step on a policy is a loop over
  the episode's steps, so for RL the wall clock (median of 5 interleaved rounds after
  compiling) is the fair comparison. The G.pt update starts from the init of ``ids[0]``
  (an id of the split being evaluated).
  """
  m = ctx.loaded
  start = jnp.asarray(ctx.inits("train", np.asarray(ids)[:1]))
  one = jnp.ones((1,), jnp.float32)
  gen = jax.jit(lambda k, x: m.model.generate(
      m.params, m.stats, k, x, one * 20.0, one * s.target, num_steps=s.num_sampling_steps,
      eta=s.eta, temperature=s.temperature, guidance=s.guidance))
  tx = optax.adam(1e-2)
  params = ctx.task.init(jax.random.key(0))
  step = jax.jit(lambda p, st, k: tasks.train_step(ctx.task, tx, p, st, k)[:2])
  t = _interleaved_seconds({"gpt": (gen, jax.random.key(0), start),
                            "adam": (step, params, tx.init(params), jax.random.key(0))})
  return {"gpt_update_s": t["gpt"], "adam_step_s": t["adam"],
          "adam_steps_per_update": t["gpt"] / max(t["adam"], 1e-12)}


def flat_key(seed: int, ids: np.ndarray) -> jax.Array:
  """One key per init id (Adam's batch keys), ``fold_in(key(seed), id)``."""
  return jax.vmap(lambda n: jax.random.fold_in(jax.random.key(seed), n))(
      jnp.asarray(np.asarray(ids).astype(np.uint32)))
