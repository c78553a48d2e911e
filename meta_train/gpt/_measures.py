"""Measurements of the G.pt protocol: Adam's median curves, prompt alignment, FLOPs.

* **Adam, medians against medians.** Adam runs from the same inits on every rate of
  a grid with the test metric measured after *every* step up to a ceiling;
  per rate the median over inits gives a curve. Adam's figure at step ``s`` is the
  best rate's median there; the steps Adam needs to match a level are the first
  step at which any rate's median curve reaches it (or "> ceiling").
* **Prompt alignment** R^2 (against the identity line) pooled over all
  (prompt, achieved) pairs, per network (averaged), for prompts at most a bound,
  and between log prompt and log achieved.
* **Compute**: the FLOPs of one G.pt update (one network pass per sampling step, two
  with guidance) against one Adam step (loss, gradient and update on one batch).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

import tasks
from meta_train.gpt._baselines import r_squared, steps_to_reach

__all__ = ["adam_every_step", "adam_step_flops", "alignment_r2", "compute_ratio",
           "gpt_update_flops", "median_summary"]


@functools.partial(jax.jit, static_argnames=("task", "metric", "ceiling", "at"))
def _adam_run(task, metric, ceiling, at, params, lr, key):
  split, name = metric.split("_", 1)
  tx = optax.adam(lr)
  data = task.eval_batch(key, split)

  def step(c, k):
    p, s, _ = tasks.train_step(task, tx, c[0], c[1], k)
    return (p, s), task.metrics(p, k, data)[name]

  keys = jax.random.split(key, ceiling)
  (p_at, s), early = jax.lax.scan(step, (params, tx.init(params)), keys[:at])
  _, late = jax.lax.scan(step, (p_at, s), keys[at:])
  first = task.metrics(params, key, data)[name]
  return jnp.concatenate([first[None], early, late]), p_at


def adam_every_step(task: tasks.Task, inits: Any, keys: jax.Array, lrs: Sequence[float], *,
                    metric: str = "test_loss", ceiling: int = 200,
                    at: int = 100) -> tuple[np.ndarray, Any]:
  """Adam's metric after every step, from each init, on each learning rate.

  Args:
    task: the task; ``metric`` ``"<split>_<name>"`` of ``task.metrics``.
    inits: batched parameters (leading axis = inits); ``keys`` one key per init
      (the same batches on every rate).
    lrs: Adam's learning rates.
    ceiling: steps run; ``at`` the step whose parameters are returned.

  Returns:
    ``(curves (len(lrs), num_inits, ceiling + 1), params after `at` steps)``; entry
    ``s`` of a curve is the metric after ``s`` steps (0 = the init).
  """
  run = jax.vmap(lambda p, k, lr: _adam_run(task, metric, ceiling, at, p, lr, k),
                 in_axes=(0, 0, None))
  out = [run(inits, keys, jnp.float32(lr)) for lr in lrs]
  return np.stack([np.asarray(c) for c, _ in out]), jax.tree.map(
      lambda *xs: np.stack([np.asarray(x) for x in xs]), *[p for _, p in out])


def median_summary(curves: np.ndarray, lrs: Sequence[float], level: float, *,
                   at: int) -> dict[str, Any]:
  """Adam's medians against one level (e.g. G.pt's one-update median).

  ``curves`` is ``(rates, inits, steps + 1)`` for a lower-is-better metric.

  Returns:
    ``median_at`` (the best rate's median at step ``at``) and ``best_lr_at`` (with
    ``best_lr_on_grid_edge``); ``steps_to_match`` (first step at which some rate's
    median curve is at or below ``level``, else ``"> ceiling"``) and
    ``steps_to_match_per_lr``; ``best_final_median``.
  """
  med = np.median(curves, axis=1)  # (rates, steps + 1)
  ceiling = med.shape[1] - 1
  per_lr = {f"{lr:g}": steps_to_reach(m, level, every=1) for lr, m in zip(lrs, med)}
  reached = [s for s in per_lr.values() if s is not None]
  b = int(np.argmin(med[:, at]))
  return {"median_at": float(med[b, at]), "at": int(at), "best_lr_at": float(lrs[b]),
          "best_lr_on_grid_edge": b in (0, len(lrs) - 1),
          "steps_to_match": min(reached) if reached else f"> {ceiling}",
          "steps_to_match_per_lr": per_lr, "level": float(level),
          "best_final_median": float(med[:, -1].min()), "ceiling": int(ceiling)}


def alignment_r2(prompts: np.ndarray, achieved: np.ndarray, *,
                 low_max: float = 0.5) -> dict[str, Any]:
  """R^2 of achieved against prompted metric (identity line): pooled, per net, low, log.

  ``prompts`` and ``achieved`` are ``(nets, prompts)``; ``low`` pools the pairs whose
  prompt is at most ``low_max``; ``log`` compares ``log(prompt)`` with
  ``log(achieved)`` (positive metrics only).
  """
  p, a = np.asarray(prompts, np.float64), np.asarray(achieved, np.float64)
  low = p <= low_max
  out = {"pooled": r_squared(p.ravel(), a.ravel()),
         "per_net_mean": float(np.mean([r_squared(x, y) for x, y in zip(p, a)])),
         "low": r_squared(p[low], a[low]) if low.sum() >= 2 else None,
         "num_low": int(low.sum()), "low_max": float(low_max), "num_pairs": int(p.size)}
  pos = (p > 0) & (a > 0)
  out["log"] = r_squared(np.log(p[pos]), np.log(a[pos])) if pos.sum() >= 2 else None
  return out


def _flops(compiled) -> float | None:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  f = (cost or {}).get("flops")
  return float(f) if f is not None and f > 0 else None


def gpt_update_flops(loaded, *, num_sampling_steps: int, guidance: float) -> dict[str, Any]:
  """FLOPs of one G.pt update of one network.

  XLA's cost analysis counts a loop body once, so one network pass (batch 1) is
  measured and multiplied by the passes of an update: ``num_sampling_steps``, twice
  that with guidance. Without a count from XLA, ``2 x parameters x tokens`` per pass.
  """
  model, tok = loaded.model, loaded.model.tokenizer
  start = jnp.zeros((1, tok.num_params), jnp.float32)
  one = jnp.ones((1,), jnp.float32)
  fn = model._denoiser(loaded.params, loaded.stats, start, one, one)
  x = jnp.zeros((1, tok.num_tokens, tok.chunk_size), jnp.float32)
  per_pass = _flops(jax.jit(fn).lower(x, jnp.zeros((1,), jnp.int32)).compile())
  source = "xla_cost_analysis"
  if per_pass is None:
    n = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(loaded.params))
    per_pass, source = 2.0 * n * tok.num_tokens, "analytic"
  passes = int(num_sampling_steps) * (2 if float(guidance) != 0.0 else 1)
  return {"per_pass": per_pass, "passes": passes, "per_update": per_pass * passes,
          "source": source}


def adam_step_flops(task: tasks.Task) -> dict[str, Any]:
  """FLOPs of one Adam step (batch, loss, gradient, update) on ``task``, one network."""
  tx = optax.adam(1e-3)
  params = task.init(jax.random.key(0))
  state = tx.init(params)
  step = jax.jit(lambda p, s, k: tasks.train_step(task, tx, p, s, k))
  flops = _flops(step.lower(params, state, jax.random.key(0)).compile())
  source = "xla_cost_analysis"
  if flops is None:
    n = sum(int(np.prod(np.shape(v))) for v in jax.tree.leaves(params))
    flops, source = 6.0 * n * getattr(task, "batch_size", 1), "analytic"
  return {"per_step": flops, "source": source}


def compute_ratio(gpt: dict[str, Any], adam: dict[str, Any]) -> float:
  """Adam steps whose FLOPs equal one G.pt update."""
  return float(gpt["per_update"]) / max(float(adam["per_step"]), 1.0) if math.isfinite(
      float(gpt["per_update"])) else float("nan")
