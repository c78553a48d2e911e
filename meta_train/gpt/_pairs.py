"""Training pairs for G.pt: (start, future) checkpoints of one run, with augmentation.

A pair is two checkpoints ``i <= j`` of the same run; the model learns to map
``(params_i, metric_i, metric_j)`` to ``params_j``. Hidden-unit permutation
augmentation applies one random permutation of every hidden layer's units to
both checkpoints of a pair (the network function is unchanged), for stacks of
dense layers whose spec paths look like ``<Layer>_<k>/kernel`` and ``.../bias``.

Reference: Peebles et al. 2022, arXiv 2209.12892, Sec. 3.3 (permutation augmentation).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import numpy as np

import tasks

# The tokenizer's definition of a dense stack (one definition for both).
from lopt.gpt import dense_stack

__all__ = ["permutation_index", "sample_pairs", "task_grad_fn"]


def permutation_index(spec: Sequence[dict[str, Any]], rng: np.random.Generator) -> np.ndarray:
  """A flat gather index applying random hidden-unit permutations to a dense stack.

  ``flat[..., idx]`` is the same network with each hidden layer's units permuted
  (the kernel's output columns and bias of layer ``l`` and the input rows of
  layer ``l + 1``). Non-dense structures get the identity.
  """
  sizes = [int(np.prod(s["shape"])) for s in spec]
  offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
  idx = np.arange(offsets[-1], dtype=np.int64)
  layers = dense_stack(spec)
  if layers is None:
    return idx
  views = {i: idx[offsets[i]:offsets[i + 1]].reshape(spec[i]["shape"]) for i in range(len(spec))}
  for (k0, b0), (k1, _) in zip(layers, layers[1:]):
    perm = rng.permutation(spec[k0]["shape"][1])
    views[k0][...] = views[k0][:, perm]
    views[b0][...] = views[b0][perm]
    views[k1][...] = views[k1][perm, :]
  return idx


def sample_pairs(rng: np.random.Generator, num_runs: int, num_ckpts: int, batch: int, *,
                 p_from_init: float = 0.25) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Samples ``batch`` pairs ``(run, i, j)`` with ``i <= j``.

  With probability ``p_from_init`` the start is the initialization (``i = 0``),
  which the one-update-from-scratch use of G.pt needs most.
  """
  r = rng.integers(0, num_runs, batch)
  a = rng.integers(0, num_ckpts, batch)
  b = rng.integers(0, num_ckpts, batch)
  i, j = np.minimum(a, b), np.maximum(a, b)
  init = rng.random(batch) < p_from_init
  i = np.where(init, 0, i)
  return r, i, j


def task_grad_fn(task: tasks.Task, tokenizer) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """``fn(flats, key) -> grads``: minibatch training gradients at flat parameter vectors.

  Each row gets its own batch (``task.batch(key_i, "train")``, the task's batch
  size), as an optax training loop would hand it to the optimizer. Used to train
  and evaluate ``condition_grad`` G.pt models.
  """
  like = task.init(jax.random.key(0))

  def one(flat, key):
    params = tokenizer.unflatten(flat, like=like)
    return tokenizer.flatten(jax.grad(task.loss)(params, key, task.batch(key, "train")))

  def fn(flats, key):
    return jax.vmap(one)(flats, jax.random.split(key, flats.shape[0]))
  return fn
