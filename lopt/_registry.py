"""One registry that resolves optimizer names for users and command lines alike."""

from __future__ import annotations

from typing import Any, Callable

import optax

from lopt._hand import HAND_DESIGNED

__all__ = ["available", "available_learned", "get", "has_pretrained", "learned",
           "load_meta_params", "pretrained_path", "register", "register_learned"]

Factory = Callable[..., optax.GradientTransformationExtraArgs]

_REGISTRY: dict[str, Factory] = dict(HAND_DESIGNED)


def register(name: str, factory: Factory, *, overwrite: bool = False) -> None:
  """Adds an optimizer factory to the registry under ``name``.

  Args:
    name: the registry name.
    factory: a callable returning an ``optax.GradientTransformationExtraArgs``.
    overwrite: replace an existing entry instead of raising.
  """
  if name in _REGISTRY and not overwrite:
    raise ValueError(f"optimizer {name!r} is already registered")
  _REGISTRY[name] = factory


def available() -> list[str]:
  """Returns the sorted names of every registered optimizer."""
  return sorted(_REGISTRY)


def get(name: str, **kwargs: Any) -> optax.GradientTransformationExtraArgs:
  """Returns the optimizer registered under ``name``, built with ``kwargs``.

  ``name`` may carry weights after a colon, ``"mlp_lopt:pretrained"`` being
  ``get("mlp_lopt", weights="pretrained")``.

  Example::

    opt = lopt.get("adam", learning_rate=3e-3)
    state = opt.init(params)
    updates, state = opt.update(grads, state, params, loss=loss)

  Args:
    name: one of :func:`available`, optionally ``"name:weights"``.
    **kwargs: forwarded to the optimizer's factory.

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Raises:
    KeyError: for an unknown name; the message lists the valid names.
  """
  if ":" in name:
    name, weights = name.split(":", 1)
    if "weights" in kwargs:
      raise ValueError(f"weights given twice: in the name ({weights!r}) and as an argument")
    kwargs["weights"] = weights
  if name not in _REGISTRY:
    raise KeyError(f"unknown optimizer {name!r}; valid names: {', '.join(available())}")
  return _REGISTRY[name](**kwargs)


# ----------------------------------------------------------------------------
# Learned optimizers: a class registry plus the weights protocol.

_LEARNED: dict[str, Callable[..., Any]] = {}


def _weights_dir() -> "Any":
  import pathlib
  return pathlib.Path(__file__).parent / "weights"


def pretrained_path(name: str) -> "Any":
  """The directory holding the shipped weights of learned optimizer ``name``."""
  return _weights_dir() / name


def has_pretrained(name: str) -> bool:
  """Whether shipped ("pretrained") weights exist for learned optimizer ``name``."""
  return (pretrained_path(name) / "manifest.json").exists()


def learned(name: str, **config: Any):
  """Returns the :class:`~lopt.LearnedOptimizer` object registered under ``name``.

  Args:
    name: a learned optimizer's registry name (see :func:`available_learned`).
    **config: architecture arguments of its constructor.

  Raises:
    KeyError: unknown name; the message lists the valid learned optimizers.
  """
  if name not in _LEARNED:
    raise KeyError(f"unknown learned optimizer {name!r}; valid names: "
                   f"{', '.join(available_learned())}")
  cls = _LEARNED[name]
  for old, new in getattr(cls, "RENAMED", {}).items():
    if old in config:
      raise TypeError(f"learned optimizer {name!r}: the setting {old!r} is now called {new!r}")
  return cls(**config)


def available_learned() -> list[str]:
  """Returns the sorted names of the registered learned optimizers."""
  return sorted(_LEARNED)


def load_meta_params(lo: Any, weights: Any, *, seed: int = 0) -> Any:
  """Resolves ``weights`` for learned optimizer ``lo`` to a meta-params pytree.

  ``None`` (or the string ``"fresh"``, for ``"name:fresh"`` specs) initializes
  fresh meta-params from ``seed``; ``"pretrained"`` loads the shipped weights; a
  string or path loads saved weights (orbax + manifest); anything else is taken
  as a meta-params pytree.
  """
  import jax

  if weights is None or (isinstance(weights, str) and weights == "fresh"):
    return lo.init(jax.random.key(seed))
  if isinstance(weights, str) and weights == "pretrained":
    if not has_pretrained(lo.name):
      raise FileNotFoundError(
          f"no pretrained weights are shipped for {lo.name!r}; shipped: "
          f"{[n for n in available_learned() if has_pretrained(n)] or 'none'}. "
          f"Pass weights=None for fresh weights or a path to saved ones.")
    weights = pretrained_path(lo.name)
  if isinstance(weights, str) or hasattr(weights, "__fspath__"):
    from lopt._weights import load_weights
    return load_weights(weights, lo)
  return weights


def register_learned(name: str, cls: Callable[..., Any], *, overwrite: bool = False) -> None:
  """Registers a learned optimizer class and its optax factory under ``name``.

  ``lopt.get(name, weights=..., num_steps=..., seed=0, **config)`` then builds
  ``cls(**config)``, resolves ``weights`` with :func:`load_meta_params` (the
  default is ``"pretrained"`` when shipped weights exist, else fresh weights
  from ``seed``) and returns ``lo.transform(meta_params, num_steps)``.
  """
  if name in _LEARNED and not overwrite:
    raise ValueError(f"learned optimizer {name!r} is already registered")
  _LEARNED[name] = cls

  def factory(*, weights: Any = "default", num_steps: int | None = None, seed: int = 0,
              **config: Any):
    lo = learned(name, **config)
    if isinstance(weights, str) and weights == "default":
      weights = "pretrained" if has_pretrained(name) else None
    return lo.transform(load_meta_params(lo, weights, seed=seed), num_steps)

  factory.__name__ = name
  factory.__doc__ = f"Builds learned optimizer {name!r}; see :func:`register_learned`."
  register(name, factory, overwrite=overwrite)
