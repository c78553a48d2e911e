"""Helpers for evaluating G.pt: batched task metrics, baselines, novelty, Adam curves.

The baselines are the ones Zeng et al. 2025 ("Generative modeling of weights:
generalization or memorization?") found generative weight models fail to beat:
retrieve the training checkpoint whose metric is closest to the prompt, the same
plus Gaussian noise, and the average of the k nearest by metric.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

import lopt
import tasks
from lopt.gpt import Tokenizer

__all__ = ["MetricFn", "adam_curves", "baselines_and_novelty", "knn_average", "nearest_distance",
           "retrieve", "r_squared", "sq_dists", "steps_to_reach"]


class MetricFn:
  """Evaluates ``task.metrics`` on whole splits for a batch of flat parameter vectors."""

  def __init__(self, task: tasks.Task, tokenizer: Tokenizer, chunk: int = 256):
    self.task, self.tok, self.chunk = task, tokenizer, chunk
    like = task.init(jax.random.key(0))

    def one(flat, key):
      params = tokenizer.unflatten(flat, like=like)
      out = {}
      for split in ("train", "test"):
        batch = task.eval_batch(key, split)
        for k, v in task.metrics(params, key, batch).items():
          out[f"{split}_{k}"] = v
      return out

    self._fn = jax.jit(jax.vmap(one, in_axes=(0, None)))

  def __call__(self, flats: np.ndarray, key: jax.Array | None = None) -> dict[str, np.ndarray]:
    key = jax.random.key(0) if key is None else key
    flats = np.asarray(flats, np.float32)
    outs = [self._fn(jnp.asarray(flats[i:i + self.chunk]), key)
            for i in range(0, len(flats), self.chunk)]
    return {k: np.concatenate([np.asarray(o[k]) for o in outs]) for k in outs[0]}


def r_squared(prompted: np.ndarray, achieved: np.ndarray) -> float:
  """Coefficient of determination of ``achieved`` against the identity line ``prompted``."""
  prompted, achieved = np.asarray(prompted), np.asarray(achieved)
  ss_res = np.sum((achieved - prompted) ** 2)
  ss_tot = np.sum((achieved - np.mean(achieved)) ** 2)
  return float(1.0 - ss_res / max(ss_tot, 1e-12))


def retrieve(bank_metric: np.ndarray, prompts: np.ndarray, k: int = 1) -> np.ndarray:
  """Indices ``(len(prompts), k)`` of the bank checkpoints whose metric is closest."""
  d = np.abs(bank_metric[None, :] - np.asarray(prompts)[:, None])
  return np.argsort(d, axis=1)[:, :k]


def knn_average(bank_params: np.ndarray, bank_metric: np.ndarray, prompts: np.ndarray,
                k: int = 5) -> np.ndarray:
  """The average of the ``k`` bank checkpoints whose metric is closest to each prompt."""
  idx = retrieve(bank_metric, prompts, k)
  return bank_params[idx].mean(axis=1)


@jax.jit
def sq_dists(xc, bank, bank_sq):
  """Squared L2 distances ``(len(xc), len(bank))``; ``bank_sq`` the bank's squared norms."""
  return jnp.sum(xc ** 2, axis=1)[:, None] - 2 * xc @ bank.T + bank_sq[None, :]


@jax.jit
def _min_dist(xc, bank, bank_sq):
  return jnp.sqrt(jnp.maximum(jnp.min(sq_dists(xc, bank, bank_sq), axis=1), 0.0))


def nearest_distance(x: np.ndarray, bank: np.ndarray, chunk: int = 64) -> np.ndarray:
  """L2 distance from each row of ``x`` to its nearest row of ``bank``."""
  bank_j = jnp.asarray(bank, jnp.float32)
  bank_sq = jnp.sum(bank_j ** 2, axis=1)
  x = np.asarray(x, np.float32)
  return np.concatenate([np.asarray(_min_dist(jnp.asarray(x[i:i + chunk]), bank_j, bank_sq))
                         for i in range(0, len(x), chunk)])


@functools.partial(jax.jit, static_argnames=("task", "num_steps", "every"))
def _adam_run(task, num_steps, every, params, lr, key):
  tx = lopt.get("adam", learning_rate=lr)
  test = task.eval_batch(key, "test")

  def seg(carry, k):
    p, s = carry

    def step(c, kk):
      p, s, _ = tasks.train_step(task, tx, c[0], c[1], kk)
      return (p, s), None

    (p, s), _ = jax.lax.scan(step, (p, s), jax.random.split(k, every))
    return (p, s), task.metrics(p, k, test)["loss"]

  first = task.metrics(params, key, test)["loss"]
  _, losses = jax.lax.scan(seg, (params, tx.init(params)),
                           jax.random.split(key, num_steps // every))
  return jnp.concatenate([first[None], losses])


def adam_curves(task: tasks.Task, inits: Any, lrs: list[float], num_steps: int, every: int,
                key: jax.Array) -> dict[float, np.ndarray]:
  """Test-loss curves ``(num_inits, num_steps // every + 1)`` of Adam per learning rate.

  ``inits`` is a batched parameter tree (leading axis = inits). Entry ``k`` of a
  curve is the test loss after ``k * every`` steps.
  """
  n = jax.tree.leaves(inits)[0].shape[0]
  keys = jax.random.split(key, n)
  run = jax.vmap(lambda p, k, lr: _adam_run(task, num_steps, every, p, lr, k),
                 in_axes=(0, 0, None))
  return {lr: np.asarray(run(inits, keys, jnp.float32(lr))) for lr in lrs}


def steps_to_reach(curve: np.ndarray, level: float, every: int) -> int | None:
  """First step at which a (mean) curve is at or below ``level``; None if never."""
  hit = np.flatnonzero(np.asarray(curve) <= level)
  return None if hit.size == 0 else int(hit[0] * every)


def baselines_and_novelty(bank: np.ndarray, bank_metric: np.ndarray, mf: MetricFn, metric: str,
                          leaf_std: np.ndarray, gpt_one: np.ndarray, gpt_one_metric: np.ndarray,
                          gpt_aligned: np.ndarray, prompt: float, n: int, key: jax.Array,
                          knn: int, noise_levels: Sequence[float]):
  """The Zeng et al. (2025) baselines at ``prompt`` and the novelty of G.pt's networks.

  Args:
    bank: ``(N, P)`` training checkpoints; ``bank_metric`` their metric.
    mf: evaluates ``metric`` of flat parameter rows.
    leaf_std: ``(P,)`` per-parameter scale of the noise added to retrieved checkpoints.
    gpt_one: ``(n, P)`` G.pt's one-update networks; ``gpt_one_metric`` their metric.
    gpt_aligned: G.pt's prompt-alignment networks (their distance is reported too).
    prompt: the baselines' prompt; ``n`` noisy copies of the retrieved checkpoint per
      noise level in ``noise_levels`` (times ``leaf_std``); ``knn`` for the average.

  Returns:
    ``(baselines, novelty, points)``: per-baseline median metric and distance; G.pt's
    median distance and whether noisy retrieval dominates it (lower metric at G.pt's
    distance, interpolated along its noise levels); ``{label: (distances, metrics)}``
    for the performance-vs-novelty plot.
  """
  pr = np.full((n,), prompt, np.float32)
  ridx = retrieve(bank_metric, pr, k=1)[:, 0]
  retrieved = bank[ridx]
  points = {"G.pt (1 update, unseen inits)": (nearest_distance(gpt_one, bank), gpt_one_metric)}
  base = {"retrieval": {"median": float(np.median(bank_metric[ridx])), "distance": 0.0}}
  knn_p = knn_average(bank, bank_metric, pr[:1], k=knn)
  base[f"knn_average_k{knn}"] = {"median": float(mf(knn_p)[metric][0]),
                                 "distance": float(nearest_distance(knn_p, bank)[0])}
  noisy_curve = []
  for i, lvl in enumerate(noise_levels):
    eps = np.asarray(jax.random.normal(jax.random.fold_in(key, i), retrieved.shape))
    noisy = retrieved + lvl * leaf_std[None] * eps
    d, lo = nearest_distance(noisy, bank), mf(noisy)[metric]
    points[f"retrieval + noise {lvl:g}"] = (d, lo)
    noisy_curve.append((float(np.median(d)), float(np.median(lo))))
    base[f"retrieval_noise_{lvl:g}"] = {"median": noisy_curve[-1][1],
                                        "distance": noisy_curve[-1][0]}
  points["retrieval"] = (np.zeros(1), bank_metric[ridx][:1])
  points[f"kNN average (k={knn})"] = (np.asarray([base[f"knn_average_k{knn}"]["distance"]]),
                                      np.asarray([base[f"knn_average_k{knn}"]["median"]]))
  gd = float(np.median(points["G.pt (1 update, unseen inits)"][0]))
  ds, ls = zip(*sorted(noisy_curve))
  noisy_at = float(np.interp(gd, ds, ls)) if gd <= ds[-1] else float("nan")
  novelty = {
      "gpt_distance_median": gd,
      "gpt_alignment_distance_median": float(np.median(nearest_distance(gpt_aligned, bank))),
      "noisy_retrieval_loss_at_gpt_distance": noisy_at,
      "noisy_retrieval_max_distance": float(ds[-1]),
      "gpt_not_dominated": bool(np.isnan(noisy_at)
                                or float(np.median(gpt_one_metric)) <= noisy_at)}
  return base, novelty, points
