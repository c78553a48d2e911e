"""Task and TaskFamily: training problems as pure functions."""

from __future__ import annotations

import abc
from typing import Any, Mapping

import jax
import jax.numpy as jnp

__all__ = ["Task", "TaskFamily"]

Params = Any
Batch = Any

#: Normalized losses are clipped to this value; a non-finite loss normalizes to it.
MAX_NORMALIZED_LOSS = 4.0


class Task(abc.ABC):
  """A training problem given by pure, jit- and vmap-able functions.

  ::

    params = task.init(key)
    batch = task.batch(key, "train")          # drawn inside jit from in-memory arrays
    loss = task.loss(params, key, batch)      # scalar
    metrics = task.metrics(params, key, batch)  # dict of scalars
    test = task.eval_batch(key, "test")       # the whole split, or a fixed large batch
    norm = task.normalize(loss)               # comparable across tasks

  Tasks are plain Python objects closed over by jitted functions; they hash by
  identity, so a task can be a static argument of ``jax.jit``.
  """

  name: str = "task"
  #: A typical loss at initialization; ``normalize`` divides by it.
  loss_scale: float = 1.0

  @abc.abstractmethod
  def init(self, key: jax.Array) -> Params:
    """Returns freshly initialized parameters."""

  @abc.abstractmethod
  def loss(self, params: Params, key: jax.Array, batch: Batch) -> jax.Array:
    """Returns the scalar training loss of ``params`` on ``batch``."""

  @abc.abstractmethod
  def batch(self, key: jax.Array, split: str = "train") -> Batch:
    """Samples a batch from ``split`` ("train" or "test") inside jit."""

  def eval_batch(self, key: jax.Array, split: str = "test") -> Batch:
    """Returns the batch used for evaluation: the whole split, or a fixed large batch.

    Tasks whose split fits in memory return all of it (image tasks); others
    return a batch much larger than a training batch, drawn from ``key`` so it
    is the same for the same key (many text windows, many RL episodes). The
    default is one training-sized ``self.batch(key, split)``.

    Example::

      metrics = jax.jit(task.metrics)(params, key, task.eval_batch(key, "test"))

    Args:
      key: PRNG key (ignored by tasks that return the whole split).
      split: "train" or "test".

    Returns:
      A batch in the format ``loss`` and ``metrics`` take.
    """
    return self.batch(key, split)

  def metrics(self, params: Params, key: jax.Array, batch: Batch) -> dict[str, jax.Array]:
    """Returns evaluation metrics; the default is just the loss."""
    return {"loss": self.loss(params, key, batch)}

  def normalize(self, loss: jax.Array) -> jax.Array:
    """Maps a loss to a comparable scale: ``loss / loss_scale`` clipped.

    A non-finite loss maps to ``MAX_NORMALIZED_LOSS`` so one diverged task
    cannot poison a meta-objective averaged over tasks.
    """
    norm = jnp.clip(loss / self.loss_scale, -MAX_NORMALIZED_LOSS, MAX_NORMALIZED_LOSS)
    return jnp.where(jnp.isfinite(loss), norm, MAX_NORMALIZED_LOSS)

  def config(self) -> dict[str, Any]:
    """The constructor arguments of this task (JSON-serializable)."""
    return {}

  def __repr__(self) -> str:
    args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
    return f"{type(self).__name__}({args})"


class TaskFamily(abc.ABC):
  """A distribution over task configurations.

  ``cfg = family.sample(key)`` draws a configuration (a dict of Python values,
  so architectures can differ); ``family.task(cfg)`` builds the task.
  """

  name: str = "family"

  @abc.abstractmethod
  def sample(self, key: jax.Array) -> dict[str, Any]:
    """Draws a task configuration."""

  @abc.abstractmethod
  def task(self, cfg: Mapping[str, Any]) -> Task:
    """Builds the task of configuration ``cfg``."""


class ChoiceFamily(TaskFamily):
  """A family whose configs pick each field uniformly from a list of choices."""

  def __init__(self, name: str, builder, choices: Mapping[str, list], **fixed: Any):
    self.name = name
    self._builder = builder
    self._choices = {k: list(v) for k, v in choices.items()}
    self._fixed = fixed

  def sample(self, key: jax.Array) -> dict[str, Any]:
    keys = jax.random.split(key, len(self._choices))
    cfg = dict(self._fixed)
    for k, (field, options) in zip(keys, sorted(self._choices.items())):
      cfg[field] = options[int(jax.random.randint(k, (), 0, len(options)))]
    return cfg

  def task(self, cfg: Mapping[str, Any]) -> Task:
    return self._builder(**cfg)

  def __repr__(self) -> str:
    return f"ChoiceFamily({self.name!r}, choices={self._choices})"
