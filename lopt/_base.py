"""The one optimizer interface: every optimizer is an optax.GradientTransformationExtraArgs."""

from __future__ import annotations

import abc
import dataclasses
import functools
import types
import typing
from typing import Any, ClassVar

import jax
import optax

from lopt._horizon import Horizon
from lopt._per_param_mlp import FlatLayout

__all__ = ["CheckedState", "LearnedOptimizer", "check_trees", "setting", "tree_spec",
           "with_checks"]

Params = Any
MetaParams = Any


TreeSpec = tuple[tuple[str, tuple[int, ...]], ...]


def tree_spec(tree: Any) -> TreeSpec:
  """``((path, shape), ...)`` of every leaf of ``tree``: hashable, static under ``jit``."""
  return tuple((jax.tree_util.keystr(p), tuple(int(d) for d in getattr(x, "shape", ())))
               for p, x in jax.tree_util.tree_leaves_with_path(tree))


def _describe_spec_mismatch(sa: TreeSpec, sb: TreeSpec, name_a: str, name_b: str
                            ) -> str | None:
  """How two tree specs differ (the first differing leaf), or None if they match.

  Leaves are matched in order; paths only name them, so trees that differ in
  container types but not in leaves and shapes (an ``nnx.State`` of variables and
  one of arrays) match.
  """
  pa, pb = [p for p, _ in sa], [p for p, _ in sb]
  if len(pa) != len(pb):
    only_a = sorted(set(pa) - set(pb))[:5]
    only_b = sorted(set(pb) - set(pa))[:5]
    first = next((i for i, (x, y) in enumerate(zip(pa, pb)) if x != y), min(len(pa), len(pb)))
    at = pa[first] if first < len(pa) else pb[first]
    return (f"{name_a} and {name_b} have different tree structures; first differing leaf: "
            f"{at}; only in {name_a}: {only_a or '-'}; only in {name_b}: {only_b or '-'} "
            f"({len(pa)} vs {len(pb)} leaves)")
  for (path, shape_a), (_, shape_b) in zip(sa, sb):
    if shape_a != shape_b:
      return f"{name_a} and {name_b} differ at {path}: shape {shape_a} vs {shape_b}"
  return None


def _describe_mismatch(a: Any, b: Any, name_a: str, name_b: str) -> str | None:
  """Returns a human-readable description of how two pytrees differ, or None."""
  if jax.tree.structure(a) == jax.tree.structure(b):
    for (path, la), lb in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
      if getattr(la, "shape", ()) != getattr(lb, "shape", ()):
        return (f"{name_a} and {name_b} differ at {jax.tree_util.keystr(path)}: "
                f"shape {getattr(la, 'shape', ())} vs {getattr(lb, 'shape', ())}")
    return None
  return _describe_spec_mismatch(tree_spec(a), tree_spec(b), name_a, name_b)


def check_trees(a: Any, b: Any, name_a: str = "updates", name_b: str = "params") -> None:
  """Raises ValueError naming the first difference if two pytrees do not match.

  Args:
    a: a pytree of arrays.
    b: another pytree of arrays, expected to have the same structure and shapes.
    name_a: how to call ``a`` in the error message.
    name_b: how to call ``b`` in the error message.
  """
  msg = _describe_mismatch(a, b, name_a, name_b)
  if msg is not None:
    raise ValueError(msg)


@functools.partial(jax.tree_util.register_dataclass, data_fields=["inner"],
                   meta_fields=["tree"])
@dataclasses.dataclass(frozen=True)
class CheckedState:
  """The state of a :func:`with_checks` optimizer: the wrapped state plus the tree it serves.

  Attributes:
    inner: the wrapped transformation's state.
    tree: static :func:`tree_spec` of the parameters given to ``init`` (leaf paths
      and shapes; part of the tree structure, not an array).
  """

  inner: Any
  tree: TreeSpec

  def __getattr__(self, name: str) -> Any:  # state.count etc. reach the wrapped state
    if name in ("inner", "tree") or name.startswith("__"):
      raise AttributeError(name)
    return getattr(self.inner, name)


def with_checks(tx: optax.GradientTransformation, name: str, *, needs_params: bool = False,
                needs_loss: bool = False) -> optax.GradientTransformationExtraArgs:
  """Wraps ``tx`` so it accepts ``loss=`` and reports mismatched trees clearly.

  The returned transformation has ``update(updates, state, params=None, *,
  loss=None, **extra)``. Its state is a :class:`CheckedState` that records the
  leaf paths and shapes of the tree given to ``init``; gradients and parameters
  are compared with it (and with each other) before the update, and a mismatch
  raises a ``ValueError`` naming the optimizer and the first differing leaf
  instead of an opaque tree-map or broadcasting error.

  An optimizer that reads the parameters or the loss says so, and ``update``
  then raises a ``ValueError`` when they are not given, instead of using zeros.

  Args:
    tx: any optax transformation (plain or with extra args).
    name: the optimizer's name, used in error messages.
    needs_params: ``update`` requires ``params``.
    needs_loss: ``update`` requires ``loss=``.

  Returns:
    An ``optax.GradientTransformationExtraArgs``.
  """
  inner = optax.with_extra_args_support(tx)

  def init_fn(params):
    return CheckedState(inner.init(params), tree_spec(params))

  def update_fn(updates, state, params=None, *, loss=None, **extra):
    if (needs_params and params is None) or (needs_loss and loss is None):
      missing = " and ".join(w for w, need, got in (("params", needs_params, params),
                                                   ("loss=", needs_loss, loss))
                             if need and got is None)
      raise ValueError(f"optimizer {name!r} needs {missing}: call "
                       f"update(grads, state, params{', loss=loss' if needs_loss else ''})")
    if params is not None:
      check_trees(updates, params, "gradients", "params")
    if not isinstance(state, CheckedState):
      raise ValueError(f"optimizer {name!r}: the state was not made by this optimizer's init "
                       f"(got {type(state).__name__})")
    msg = _describe_spec_mismatch(tree_spec(updates), state.tree,
                                  "the gradients" if params is None else "params",
                                  "the tree given to init")
    if msg is not None:
      raise ValueError(f"optimizer {name!r}: {msg}")
    if loss is not None:
      extra["loss"] = loss
    try:
      new_updates, new_inner = inner.update(updates, state.inner, params, **extra)
    except (ValueError, TypeError) as e:
      if "tree" in str(e).lower() or "mismatch" in str(e).lower():
        raise ValueError(
            f"optimizer {name!r}: the gradient tree does not match the tree the "
            f"optimizer state was initialized with ({e})") from e
      raise
    return new_updates, CheckedState(new_inner, state.tree)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def setting(default: Any, *, config: bool = True) -> Any:
  """A dataclass field of a learned optimizer; ``config=False`` keeps it out of :meth:`config`.

  Fields left out of the config (a chunk size, how ``init`` starts) change speed or
  the starting point, not the architecture: weights saved with one value load into
  an optimizer built with another.
  """
  return dataclasses.field(default=default, metadata={"config": config})


def _coerce(value: Any, hint: Any) -> Any:
  """Converts a constructor argument to its field's declared type (lists -> tuples...)."""
  if hint in (int, float, bool, str):
    return hint(value)
  origin, args = typing.get_origin(hint), typing.get_args(hint)
  if origin in (types.UnionType, typing.Union):
    if value is None and type(None) in args:
      return None
    return _coerce(value, next(a for a in args if a is not type(None)))
  if origin is tuple:
    if len(args) == 2 and args[1] is Ellipsis or len(args) != len(value):
      return tuple(_coerce(v, args[0]) for v in value)
    return tuple(_coerce(v, a) for v, a in zip(value, args))  # tuple[str, tuple[int, ...]]
  return value


def _plain(value: Any) -> Any:
  return [_plain(v) for v in value] if isinstance(value, tuple) else value


class LearnedOptimizer(abc.ABC):
  """A learned optimizer: learnable weights plus a rule that turns them into optax.

  Subclasses implement two pure functions::

    meta_params = lo.init(key)                   # a pytree of weights
    opt = lo.transform(meta_params, num_steps)   # optax.GradientTransformationExtraArgs

  ``transform`` must be differentiable with respect to ``meta_params`` and
  vmap-able over it, so meta-training can unroll the optimizer. An optimizer
  whose update depends on the horizon validates ``num_steps`` with
  :func:`lopt._horizon.check_num_steps` (None raises; ``"unknown"`` selects a
  horizon-free mode); one that does not ignores it. ``name`` and
  ``config()`` identify the architecture in saved-weight manifests.

  Subclasses written as frozen, keyword-only dataclasses declare each setting
  once, as a field: the field gives the constructor argument (converted to its
  declared type), the :meth:`config` entry and the manifest entry. The class
  attributes below describe the per-parameter MLP, if there is one; tools (speed
  benchmarks) read them without ``getattr`` fallbacks.
  """

  name: ClassVar[str] = "learned_optimizer"
  #: Whether the per-parameter MLP runs on ``(features, rows)`` chunks (``mlp_forward_t``).
  feature_major: ClassVar[bool] = False
  #: Names of every input feature, recorded in manifests (None: no feature list).
  feature_names: ClassVar[tuple[str, ...] | None] = None
  #: Names of the per-parameter feature columns (None: no per-parameter MLP).
  param_feature_names: ClassVar[tuple[str, ...] | None] = None
  #: Layer sizes of the per-parameter MLP, input first (None: no per-parameter MLP).
  mlp_sizes: ClassVar[tuple[int, ...] | None] = None
  #: Config keys of older versions and the fields they are now called; saved
  #: manifests that use an old key keep loading.
  RENAMED: ClassVar[dict[str, str]] = {}
  #: Config fields added after weights were first saved: their value in older manifests.
  ADDED: ClassVar[dict[str, Any]] = {}

  def __post_init__(self) -> None:
    hints = typing.get_type_hints(type(self))
    for f in dataclasses.fields(self):
      object.__setattr__(self, f.name, _coerce(getattr(self, f.name), hints[f.name]))

  @abc.abstractmethod
  def init(self, key: jax.Array) -> MetaParams:
    """Returns freshly initialized meta-parameters."""

  @abc.abstractmethod
  def transform(self, meta_params: MetaParams, num_steps: Horizon | None = None
                ) -> optax.GradientTransformationExtraArgs:
    """Returns the optimizer defined by ``meta_params`` for a ``num_steps`` horizon.

    ``num_steps``: the number of updates training will take, ``"unknown"``
    (:data:`lopt.UNKNOWN_HORIZON`) or, in meta-training, a traced integer.
    """

  def config(self) -> dict[str, Any]:
    """The JSON-serializable constructor arguments that define the architecture.

    For a dataclass subclass: every field not declared with ``setting(...,
    config=False)``; tuples become lists.
    """
    if not dataclasses.is_dataclass(self):
      return {}
    return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)
            if f.metadata.get("config", True)}

  @classmethod
  def renamed_config(cls, config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with keys of older versions (:attr:`RENAMED`) mapped to today's names,
    and fields added since (:attr:`ADDED`) at the value that reproduces the old behaviour."""
    out = {cls.RENAMED.get(k, k): v for k, v in config.items()}
    return {**{k: _plain(v) for k, v in cls.ADDED.items()}, **out}

  def layout(self, params: Any) -> FlatLayout:
    """The flat row layout (padding, chunks) the optimizer uses for ``params``' tree."""
    return FlatLayout.from_tree(params)

  def __repr__(self) -> str:
    args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
    return f"{type(self).__name__}({args})"
