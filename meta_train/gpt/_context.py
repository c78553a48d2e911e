"""What both steps of the G.pt protocol share: the model, its data, sampling, measuring.

:class:`ProtocolContext` loads a G.pt model and its training data once and offers
the operations the validation and test steps are built from: starting networks of
a scheme, one or repeated updates, prompt-alignment sweeps, and the bank of
training checkpoints (the runs not held out of training) for novelty.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

import tasks
from lopt.gpt import higher_is_better, load_gpt
from meta_train.gpt._align import UnitLayout
from meta_train.gpt._baselines import MetricFn
from meta_train.gpt._data import load_dataset
from meta_train.gpt._inits import scheme_inits
from meta_train.gpt._pairs import task_grad_fn

__all__ = ["ProtocolContext", "dataset_init_scale_range"]


def dataset_init_scale_range(index: dict[str, Any]) -> tuple[float, float]:
  """The init-scale range shared by every dataset of ``index``; ``ValueError`` if they differ."""
  ranges = {tuple(float(v) for v in ds.get("init_scale_range", (0.5, 2.0)))
            for ds in index.get("datasets", [index])}
  if len(ranges) != 1:
    raise ValueError(f"the training datasets use different init-scale ranges {sorted(ranges)}; "
                     f"the 'train' scheme needs one")
  return ranges.pop()


def _pad(x: np.ndarray, multiple: int) -> np.ndarray:
  """``x`` with its first row repeated to a multiple of ``multiple`` rows."""
  extra = -len(x) % multiple
  return np.concatenate([x, np.repeat(x[:1], extra, 0)]) if extra else x


class ProtocolContext:
  """A loaded G.pt model, its task and training data, and the protocol's operations.

  Args:
    weights: the G.pt weights directory.
    dataset: its training data (comma-separated); None reads ``extra.dataset`` of the
      manifest.
    num_sampling_steps, eta: the sampler.
    chunk: networks sampled or measured per call (batches are padded to it).
    task_overrides: task settings that replace the dataset's, e.g. ``{"eval_batch_size":
      64}`` to measure a policy's return on more episodes (run settings only).
  """

  def __init__(self, weights: str, dataset: str | None = None, *, num_sampling_steps: int = 20,
               eta: float = 0.0, chunk: int = 64, task_overrides: dict[str, Any] | None = None):
    self.weights, self.loaded = str(weights), load_gpt(weights)
    m = self.loaded
    self.model, self.tok = m.model, m.model.tokenizer
    self.metric = m.model.cfg["metric"]
    self.lower_is_better = not higher_is_better(self.metric)
    self.dataset = dataset or m.manifest.get("extra", {}).get("dataset")
    if not self.dataset:
      raise ValueError(f"the manifest of {weights!r} names no training dataset; pass dataset=")
    data = load_dataset(self.dataset)
    if data.index["param_spec"] != self.tok.spec:
      raise ValueError(f"the dataset {self.dataset!r} holds another architecture than the "
                       f"model {weights!r} was trained for")
    self.index = data.index
    self.task = tasks.get(data.index["task"], **{**data.index["task_config"],
                                                 **(task_overrides or {})})
    held = set(m.manifest.get("extra", {}).get("heldout_run_ids", []))
    train = np.asarray([int(r) not in held for r in data.run_ids])
    self.bank = data.params[train].reshape(-1, self.tok.num_params)
    self.bank_metric = data.metrics[self.metric][train].reshape(-1)
    self.reference_metric = float(np.median(data.metrics[self.metric][train][:, -1]))
    self.best = float(m.manifest["best_metric"])
    self.init_scale_range = dataset_init_scale_range(data.index)
    del data
    self.mf = MetricFn(self.task, self.tok, chunk=chunk)
    self.layout = UnitLayout(self.tok.spec)
    self.num_sampling_steps, self.eta, self.chunk = int(num_sampling_steps), float(eta), chunk
    self._grad = (jax.jit(task_grad_fn(self.task, self.tok)) if self.model.cfg["condition_grad"]
                  else None)
    self._gen = {}

  def describe(self) -> dict[str, Any]:
    return {"metric": self.metric, "best_prompt": self.best, "dataset": self.dataset,
            "bank_checkpoints": int(len(self.bank)),
            "reference_metric": self.reference_metric,
            "task": {"name": self.index["task"], "config": json.loads(
                json.dumps(self.index["task_config"]))}}

  def inits(self, scheme: str, ids: Sequence[int]) -> np.ndarray:
    """Flat starting networks ``(len(ids), P)`` of ``scheme``."""
    p = scheme_inits(self.task, scheme, ids, init_scale_range=self.init_scale_range)
    return np.asarray(jax.vmap(self.tok.flatten)(p))

  def unflatten(self, flats: np.ndarray) -> Any:
    """Batched parameter trees of flat rows."""
    like = self.task.init(jax.random.key(0))
    return jax.vmap(lambda f: self.tok.unflatten(f, like=like))(jnp.asarray(flats))

  def measure(self, flats: np.ndarray) -> dict[str, np.ndarray]:
    """Every task metric (``train_loss``, ``test_loss``, ``test_error``, ...) of each row."""
    flats = np.asarray(flats, np.float32)
    out = self.mf(_pad(flats, self.chunk))  # one compiled shape
    return {k: v[:len(flats)] for k, v in out.items()}

  def generate(self, key: jax.Array, starts: np.ndarray, m_start: np.ndarray,
               prompts: np.ndarray | float, temperature: float, guidance: float) -> np.ndarray:
    """One update of each row of ``starts`` (metric ``m_start``) prompted with ``prompts``."""
    w, tmp = float(guidance), float(temperature)
    if (tmp, w) not in self._gen:
      self._gen[tmp, w] = jax.jit(lambda k, s, ms, mt, g: self.model.generate(
          self.loaded.params, self.loaded.stats, k, s, ms, mt, g,
          num_steps=self.num_sampling_steps, eta=self.eta, temperature=tmp, guidance=w))
    fn = self._gen[tmp, w]
    starts = np.asarray(starts, np.float32)
    m_start = np.asarray(m_start, np.float32)
    prompts = np.broadcast_to(np.asarray(prompts, np.float32), m_start.shape)
    out, n = [], len(starts)
    starts, m_start, prompts = (_pad(x, self.chunk) for x in (starts, m_start, prompts))
    for i in range(0, len(starts), self.chunk):  # chunks of one compiled shape
      k = jax.random.fold_in(key, i)
      s = jnp.asarray(starts[i:i + self.chunk])
      # condition_grad models see a minibatch gradient at the start, as in a training loop.
      g = None if self._grad is None else self._grad(s, jax.random.fold_in(k, 7))
      out.append(np.asarray(fn(k, s, jnp.asarray(m_start[i:i + self.chunk]),
                               jnp.asarray(prompts[i:i + self.chunk]), g)))
    return np.concatenate(out)[:n]

  def repeated(self, key: jax.Array, starts: np.ndarray, repeats: int, target: float,
               temperature: float, guidance: float) -> tuple[list[np.ndarray], list[dict]]:
    """``repeats`` updates in a row, each prompted with ``target`` from the current metric.

    Returns the networks and their metrics after each update (index 0 = the starts).
    """
    nets, mets = [np.asarray(starts, np.float32)], [self.measure(starts)]
    for r in range(repeats):
      nets.append(self.generate(jax.random.fold_in(key, r), nets[-1], mets[-1][self.metric],
                                target, temperature, guidance))
      mets.append(self.measure(nets[-1]))
    return nets, mets

  def alignment(self, key: jax.Array, starts: np.ndarray, num_prompts: int, temperature: float,
                guidance: float) -> tuple[np.ndarray, np.ndarray]:
    """Prompts evenly spaced from the best metric to each start's own; the achieved metric.

    Returns ``(prompts, achieved)``, each ``(len(starts), num_prompts)``.
    """
    own = self.measure(starts)[self.metric]
    prompts = np.stack([np.linspace(self.best, o, num_prompts) for o in own])
    new = self.generate(key, np.repeat(starts, num_prompts, 0), np.repeat(own, num_prompts),
                        prompts.reshape(-1), temperature, guidance)
    return prompts, self.measure(new)[self.metric].reshape(prompts.shape)
