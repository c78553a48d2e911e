"""Task and TaskFamily: training problems as pure functions."""

from __future__ import annotations

import abc
import itertools
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


def _canonical(cfg: Mapping[str, Any]) -> dict[str, Any]:
  """A config with tuples as lists and numbers as floats, for comparisons."""
  def canon(v):
    if isinstance(v, (tuple, list)):
      return [canon(x) for x in v]
    if isinstance(v, bool) or not isinstance(v, (int, float)):
      return v
    return float(v)
  return {k: canon(v) for k, v in cfg.items()}


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

  def group_configs(self, key: jax.Array, num: int) -> list[dict[str, Any]]:
    """``num`` configurations for meta-training's task groups (one compiled program each).

    Default: ``num`` independent draws ``sample(fold_in(key, g))``. A family over a
    short fixed list may override it to cover the list in order.
    """
    return [self.sample(jax.random.fold_in(key, g)) for g in range(num)]

  def contains(self, task: Task) -> bool:
    """Whether ``task`` (same class and ``config()``) can be drawn from this family.

    Used to keep held-out benchmark tasks out of meta-training families.

    Raises:
      NotImplementedError: a family whose configurations cannot be enumerated.
    """
    raise NotImplementedError(f"{type(self).__name__} cannot tell which tasks it contains")


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

  def configs(self) -> list[dict[str, Any]]:
    """Every configuration this family can draw (the product of the choices)."""
    names = sorted(self._choices)
    return [{**self._fixed, **dict(zip(names, combo))}
            for combo in itertools.product(*(self._choices[n] for n in names))]

  def contains(self, task: Task) -> bool:
    """Whether ``task`` equals a member: same class and the same full ``config()``.

    One member is built to learn the class and the defaults of the fields the
    family does not choose; the other members are compared by configuration.
    """
    configs = self.configs()
    proto = self.task(configs[0])
    if type(proto) is not type(task):
      return False
    defaults = _canonical(proto.config())
    target = _canonical(task.config())
    return any({**defaults, **_canonical(c)} == target for c in configs)

  def __repr__(self) -> str:
    return f"ChoiceFamily({self.name!r}, choices={self._choices})"
