"""Tasks from a user's own functions or Flax model, so any model can be benchmarked."""

from __future__ import annotations

import inspect
import math
from typing import Any, Callable, Mapping

import flax.linen as linen
import jax
import jax.numpy as jnp
from flax import nnx

from tasks._base import Task

__all__ = ["from_flax", "from_functions"]

#: ``from_flax`` measures ``loss_scale`` on at most this many training examples.
_LOSS_SCALE_EXAMPLES = 1024


def _check_callable(fn: Any, what: str, args: str, *, optional: bool = False) -> None:
  """Raises TypeError unless ``fn`` is callable with the positional ``args``."""
  if fn is None and optional:
    return
  if not callable(fn):
    raise TypeError(f"{what} must be a function {what}({args}), got {type(fn).__name__}")
  try:
    sig = inspect.signature(fn)
  except (TypeError, ValueError):  # builtins and some C callables have no signature
    return
  try:
    sig.bind(*args.split(", "))
  except TypeError as e:
    raise TypeError(f"{what} must accept the arguments ({args}); {fn!r} has the signature "
                    f"{sig}: {e}") from None


class FunctionTask(Task):
  """A task whose functions are given by the user (see :func:`from_functions`)."""

  def __init__(self, init, loss, batch, metrics, eval_batch, name: str, loss_scale: float):
    self._init, self._loss, self._batch = init, loss, batch
    self._metrics, self._eval_batch = metrics, eval_batch
    self.name, self.loss_scale = name, loss_scale

  def init(self, key):
    return self._init(key)

  def loss(self, params, key, batch):
    return self._loss(params, key, batch)

  def batch(self, key, split="train"):
    return self._batch(key, split)

  def eval_batch(self, key, split="test"):
    if self._eval_batch is None:
      return self._batch(key, split)
    return self._eval_batch(key, split)

  def metrics(self, params, key, batch):
    if self._metrics is None:
      return {"loss": self._loss(params, key, batch)}
    out = dict(self._metrics(params, key, batch))
    if "loss" not in out:
      out = {"loss": self._loss(params, key, batch), **out}
    return out

  def config(self):
    return {"name": self.name, "loss_scale": self.loss_scale}

  def __repr__(self) -> str:
    return f"tasks.from_functions(name={self.name!r}, loss_scale={self.loss_scale!r})"


def from_functions(init: Callable, loss: Callable, batch: Callable, *,
                   metrics: Callable | None = None, eval_batch: Callable | None = None,
                   name: str = "custom", loss_scale: float = 1.0) -> Task:
  """Builds a :class:`Task` from pure functions, to train or benchmark any model.

  The functions must be pure and jit-able: draw batches inside ``batch`` with
  ``jax.random`` from arrays held in memory (no Python iterators), so training
  compiles to one ``lax.scan``.

  Example::

    x = jax.random.normal(jax.random.key(0), (256, 3))
    y = x @ jnp.array([1.0, -2.0, 0.5])
    def batch(key, split):
      idx = jax.random.randint(key, (32,), 0, 256)
      return x[idx], y[idx]
    task = tasks.from_functions(
        init=lambda key: {"w": jnp.zeros(3)},
        loss=lambda params, key, b: jnp.mean((b[0] @ params["w"] - b[1]) ** 2),
        batch=batch)
    result = tasks.train(task, lopt.get("adam", learning_rate=0.1), 200, jax.random.key(1))

  Args:
    init: ``init(key) -> params``, a pytree of arrays.
    loss: ``loss(params, key, batch) -> scalar``.
    batch: ``batch(key, split) -> batch`` with ``split`` "train" or "test".
    metrics: ``metrics(params, key, batch) -> dict`` of scalars; "loss" is added
      when missing. Default: just the loss.
    eval_batch: ``eval_batch(key, split) -> batch`` for evaluation (the whole
      split, or a fixed large batch). Default: ``batch``.
    name: the task's name in results.
    loss_scale: a typical loss at initialization; ``task.normalize`` divides by it.

  Returns:
    A :class:`Task`.

  Raises:
    TypeError: a function is not callable or cannot take its arguments.
    ValueError: ``name`` is empty or ``loss_scale`` is not a positive finite number.
  """
  _check_callable(init, "init", "key")
  _check_callable(loss, "loss", "params, key, batch")
  _check_callable(batch, "batch", "key, split")
  _check_callable(metrics, "metrics", "params, key, batch", optional=True)
  _check_callable(eval_batch, "eval_batch", "key, split", optional=True)
  if not isinstance(name, str) or not name:
    raise ValueError(f"name must be a non-empty string, got {name!r}")
  loss_scale = float(loss_scale)
  if not (math.isfinite(loss_scale) and loss_scale > 0):
    raise ValueError(f"loss_scale must be a positive finite number, got {loss_scale}")
  return FunctionTask(init, loss, batch, metrics, eval_batch, name, loss_scale)


def _split_arrays(data: Any, which: str) -> tuple[Any, Any, int]:
  """Validates ``data = (x, y)`` (arrays or pytrees of arrays); returns ``(x, y, n)``."""
  if not isinstance(data, (tuple, list)) or len(data) != 2:
    raise TypeError(f"{which} must be a pair (x, y) of arrays, got {type(data).__name__}")
  x, y = (jax.tree.map(jnp.asarray, d) for d in data)
  sizes = {}
  for part, tree in (("x", x), ("y", y)):
    leaves = jax.tree.leaves(tree)
    if not leaves:
      raise ValueError(f"{which} {part} holds no arrays")
    for leaf in leaves:
      if leaf.ndim == 0:
        raise ValueError(f"{which} {part} must have a leading example axis; got a scalar")
      sizes.setdefault(part, set()).add(leaf.shape[0])
  if len(sizes["x"] | sizes["y"]) != 1:
    raise ValueError(f"{which} x and y must hold the same number of examples; got "
                     f"{sorted(sizes['x'])} for x and {sorted(sizes['y'])} for y")
  n = sizes["x"].pop()
  if n == 0:
    raise ValueError(f"{which} holds no examples")
  return x, y, n


def _example_shapes(tree):
  return jax.tree.structure(tree), [leaf.shape[1:] for leaf in jax.tree.leaves(tree)]


def _model_functions(model: Any, sample_x: Any):
  """Returns ``(init(key) -> params, apply(params, key, x) -> outputs)`` for a Flax model."""
  if isinstance(model, linen.Module):
    shapes = jax.eval_shape(model.init, jax.random.key(0), sample_x)
    extra = sorted(set(shapes) - {"params"})
    if extra:
      raise ValueError(f"from_flax supports Linen models whose only variables are 'params'; "
                       f"this one also has {extra}. Wrap it with from_functions and handle "
                       f"that state yourself.")

    def linen_init(key):
      return model.init(key, sample_x)["params"]

    def linen_apply(params, key, x):
      del key
      return model.apply({"params": params}, x)
    return linen_init, linen_apply

  if isinstance(model, nnx.Module):
    instance, factory = model, None
  elif callable(model):
    factory = model
    instance = factory(nnx.Rngs(0))
    if not isinstance(instance, nnx.Module):
      raise TypeError(f"from_flax takes a Linen module, an nnx module, or a function "
                      f"rngs -> nnx module; the function returned {type(instance).__name__}")
  else:
    raise TypeError(f"from_flax takes a Linen module, an nnx module, or a function "
                    f"rngs -> nnx module; got {type(model).__name__}")
  graphdef, params, rest = nnx.split(instance, nnx.Param, ...)
  # Plain dicts of arrays: the params are a pure pytree, and merging them inside a
  # trace builds fresh Variables (merging a captured State cannot be mutated there).
  params, rest = params.to_pure_dict(), rest.to_pure_dict()

  def nnx_init(key):
    if factory is None:
      del key
      return jax.tree.map(jnp.array, params)
    return nnx.split(factory(nnx.Rngs(key)), nnx.Param, ...)[1].to_pure_dict()

  def nnx_apply(p, key, x):
    # Each RNG stream of the model (dropout) is re-keyed from the task's key, so
    # every step draws fresh randomness; other state (batch statistics) is read
    # but its updates are discarded, which keeps the loss pure.
    leaves, treedef = jax.tree.flatten(rest)
    leaves = [jax.random.fold_in(key, i)
              if key is not None and jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key) else leaf
              for i, leaf in enumerate(leaves)]
    return nnx.merge(graphdef, p, jax.tree.unflatten(treedef, leaves))(x)
  return nnx_init, nnx_apply


def from_flax(model: Any, loss_fn: Callable, *, train: tuple[Any, Any], test: tuple[Any, Any],
              batch_size: int = 128, metrics: Mapping[str, Callable] | None = None,
              name: str = "flax_model", loss_scale: float | None = None) -> Task:
  """Builds a :class:`Task` from a Flax model and in-memory data.

  The task's params are a plain nested dict of arrays; its loss is
  ``loss_fn(model(x), y)`` on a batch of ``batch_size`` examples drawn (with
  replacement) inside jit; ``eval_batch`` is the whole split. ``model`` is one of

  * a Linen module (params from ``model.init(key, x)``, only the "params" collection);
  * an nnx module: ``task.init(key)`` returns *its current* parameters for every key;
  * a function ``rngs -> nnx module`` (e.g. the class): ``task.init(key)`` builds a
    fresh module from ``nnx.Rngs(key)``, so each seed starts from its own init.

  nnx state other than ``nnx.Param`` is held fixed: batch statistics are read,
  never updated; dropout draws fresh masks from the task's key each step. Set
  the model's mode (``model.eval()``) before passing it for a deterministic loss.

  Example::

    class MLP(nnx.Module):
      def __init__(self, rngs):
        self.l1, self.l2 = nnx.Linear(64, 32, rngs=rngs), nnx.Linear(32, 10, rngs=rngs)
      def __call__(self, x):
        return self.l2(nnx.relu(self.l1(x)))

    def loss_fn(logits, y):
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    task = tasks.from_flax(MLP, loss_fn, train=(x_train, y_train), test=(x_test, y_test),
                           batch_size=64,
                           metrics={"error": lambda logits, y: jnp.mean(logits.argmax(-1) != y)})

  Args:
    model: a Linen module, an nnx module, or a function ``rngs -> nnx module``.
    loss_fn: ``loss_fn(outputs, y) -> scalar``, the mean loss of a batch.
    train: ``(x, y)`` training data, arrays (or pytrees of arrays) with the same
      number of examples on their leading axis.
    test: ``(x, y)`` test data, shaped like ``train``.
    batch_size: training batch size.
    metrics: extra metrics ``{name: fn(outputs, y) -> scalar}`` (error rate, ...),
      reported next to "loss" by ``task.metrics``.
    name: the task's name in results.
    loss_scale: a typical loss at initialization for ``task.normalize``. Default:
      the loss of ``task.init(jax.random.key(0))`` on the first 1,024 training
      examples (1.0 if that is not positive and finite).

  Returns:
    A :class:`Task`.

  Raises:
    TypeError: ``model`` is not a Flax model, ``loss_fn`` or a metric is not
      callable, or ``train``/``test`` is not a pair.
    ValueError: x and y hold different numbers of examples, a split is empty,
      ``test`` is shaped unlike ``train``, or ``batch_size`` is not positive.
  """
  _check_callable(loss_fn, "loss_fn", "outputs, y")
  metrics = dict(metrics or {})
  for metric_name, fn in metrics.items():
    _check_callable(fn, f"metrics[{metric_name!r}]", "outputs, y")
  if isinstance(batch_size, bool) or not isinstance(batch_size, int):
    raise TypeError(f"batch_size must be an int, got {type(batch_size).__name__}")
  if batch_size <= 0:
    raise ValueError(f"batch_size must be positive, got {batch_size}")
  splits = {"train": _split_arrays(train, "train"), "test": _split_arrays(test, "test")}
  for part, idx in (("x", 0), ("y", 1)):
    if _example_shapes(splits["train"][idx]) != _example_shapes(splits["test"][idx]):
      raise ValueError(f"test {part} must be shaped like train {part} (apart from the number "
                       f"of examples)")
  sample_x = jax.tree.map(lambda a: a[:1], splits["train"][0])
  init, apply = _model_functions(model, sample_x)

  def data(split):
    if split not in splits:
      raise ValueError(f"unknown split {split!r}; valid splits: 'train', 'test'")
    return splits[split]

  def batch(key, split="train"):
    x, y, n = data(split)
    idx = jax.random.randint(key, (batch_size,), 0, n)
    return jax.tree.map(lambda a: a[idx], (x, y))

  def eval_batch(key, split="test"):
    del key
    return data(split)[:2]

  def loss(params, key, b):
    x, y = b
    return loss_fn(apply(params, key, x), y)

  def all_metrics(params, key, b):
    x, y = b
    out = apply(params, key, x)
    return {"loss": loss_fn(out, y), **{k: fn(out, y) for k, fn in metrics.items()}}

  if loss_scale is None:
    x, y, _ = splits["train"]
    first = jax.tree.map(lambda a: a[:_LOSS_SCALE_EXAMPLES], (x, y))
    key = jax.random.key(0)
    measured = float(jax.jit(loss)(init(key), key, first))
    loss_scale = measured if math.isfinite(measured) and measured > 0 else 1.0
  return from_functions(init, loss, batch, metrics=all_metrics, eval_batch=eval_batch,
                        name=name, loss_scale=loss_scale)
