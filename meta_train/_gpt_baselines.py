"""Helpers for evaluating G.pt: batched task metrics, baselines, novelty, Adam curves.

The baselines are the ones Zeng et al. 2025 ("Generative modeling of weights:
generalization or memorization?") found generative weight models fail to beat:
retrieve the training checkpoint whose metric is closest to the prompt, the same
plus Gaussian noise, and the average of the k nearest by metric.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import lopt
import tasks
from lopt.gpt import Tokenizer

__all__ = ["MetricFn", "adam_curves", "knn_average", "nearest_distance", "retrieve",
           "r_squared"]


class MetricFn:
  """Evaluates ``task.metrics`` on whole splits for a batch of flat parameter vectors."""

  def __init__(self, task: tasks.Task, tokenizer: Tokenizer, chunk: int = 256):
    self.task, self.tok, self.chunk = task, tokenizer, chunk
    like = task.init(jax.random.key(0))

    def one(flat, key):
      params = tokenizer.unflatten(flat, like=like)
      out = {}
      for split in ("train", "test"):
        batch = (task.full_batch(split) if hasattr(task, "full_batch")
                 else task.batch(key, split))
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
def _min_dist(xc, bank, bank_sq):
  d2 = jnp.sum(xc ** 2, axis=1)[:, None] - 2 * xc @ bank.T + bank_sq[None, :]
  return jnp.sqrt(jnp.maximum(jnp.min(d2, axis=1), 0.0))


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
  test = task.full_batch("test") if hasattr(task, "full_batch") else task.batch(key, "test")

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
