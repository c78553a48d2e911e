"""One registry that resolves optimizer names for users and command lines alike."""

from __future__ import annotations

import difflib
import os
from typing import Any, Callable

import optax

from lopt._hand import HAND_DESIGNED

__all__ = ["available", "available_learned", "get", "has_pretrained", "is_learned", "learned",
           "load_meta_params", "pretrained_path", "register", "register_learned",
           "saved_config", "specialized_path", "weights_word_hint"]

Factory = Callable[..., optax.GradientTransformationExtraArgs]

_REGISTRY: dict[str, Factory] = dict(HAND_DESIGNED)


_PRETRAINED: dict[str, str] = {}
_IS_LEARNED: set[str] = set()


def register(name: str, factory: Factory, *, overwrite: bool = False, learned: bool = False,
             pretrained: str | None = None) -> None:
  """Adds an optimizer factory to the registry under ``name``.

  Args:
    name: the registry name.
    factory: a callable returning an ``optax.GradientTransformationExtraArgs``.
    overwrite: replace an existing entry instead of raising.
    learned: the factory takes ``weights=`` (learned and generative optimizers);
      see :func:`is_learned`.
    pretrained: the directory under ``lopt/weights`` holding the shipped weights,
      if they are not ``lopt/weights/<name>`` (see :func:`pretrained_path`).
  """
  if name in _REGISTRY and not overwrite:
    raise ValueError(f"optimizer {name!r} is already registered")
  _REGISTRY[name] = factory
  _IS_LEARNED.discard(name)
  _PRETRAINED.pop(name, None)
  if learned:
    _IS_LEARNED.add(name)
  if pretrained is not None:
    _PRETRAINED[name] = pretrained


def is_learned(name: str) -> bool:
  """Whether optimizer ``name`` has weights (``weights=``): learned and generative ones.

  True for every :func:`available_learned` name and for G.pt (``"gpt"``); False for
  hand-designed optimizers.
  """
  return name in _IS_LEARNED


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
  """The directory holding the shipped weights of optimizer ``name``.

  ``lopt/weights/<name>`` for learned optimizers; G.pt's shipped model is
  ``lopt/weights/gpt_digits_mlp``.
  """
  return _weights_dir() / _PRETRAINED.get(name, name)


def specialized_path(model: str) -> "Any":
  """The shipped weights of a ``layerwise_combo_lopt`` specialized to ``model``.

  ``lopt/weights/specialized/<model>``; pass it as ``weights=`` (the manifest
  names the model's parameter tree, its targets and the command that made it)::

    opt = lopt.get("layerwise_combo_lopt", weights=lopt.specialized_path("digits_cnn"),
                   num_steps=100)

  Raises:
    KeyError: no weights are shipped for ``model``; the message lists those that are.
  """
  root = _weights_dir() / "specialized"
  shipped = sorted(p.name for p in root.iterdir() if (p / "manifest.json").is_file()) \
      if root.is_dir() else []
  if model not in shipped:
    raise KeyError(f"no specialized optimizer is shipped for {model!r}; shipped: "
                   f"{', '.join(shipped) or 'none'}")
  return root / model


def has_pretrained(name: str) -> bool:
  """Whether shipped ("pretrained") weights exist for optimizer ``name`` (G.pt included)."""
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


WEIGHT_WORDS = ("pretrained", "fresh")


def weights_word_hint(weights: str) -> str:
  """`` (did you mean 'pretrained'?)`` for a string close to a weights word, else ``""``."""
  close = difflib.get_close_matches(weights, WEIGHT_WORDS, n=1, cutoff=0.6)
  return f" (did you mean {close[0]!r}?)" if close else ""


def load_meta_params(lo: Any, weights: Any, *, seed: int = 0) -> Any:
  """Resolves ``weights`` for learned optimizer ``lo`` to a meta-params pytree.

  ``None`` (or the string ``"fresh"``, for ``"name:fresh"`` specs) initializes
  fresh meta-params from ``seed``; ``"pretrained"`` loads the shipped weights; a
  string or path loads saved weights (orbax + manifest); a pytree is taken as
  meta-params and must have the structure and shapes of ``lo.init``'s.

  Raises:
    FileNotFoundError: no weights at the path (a near-miss of ``"pretrained"`` or
      ``"fresh"`` is pointed out), or none shipped.
    TypeError: ``weights`` is none of the above (a number, say).
    ValueError: a pytree or saved weights that do not fit ``lo``.
  """
  import jax

  if weights is None or (isinstance(weights, str) and weights == "fresh"):
    return lo.init(jax.random.key(seed))
  asked = weights
  if isinstance(weights, str) and weights == "pretrained":
    if not has_pretrained(lo.name):
      raise FileNotFoundError(
          f"no pretrained weights are shipped for {lo.name!r}; shipped: "
          f"{[n for n in available_learned() if has_pretrained(n)] or 'none'}. "
          f"Pass weights=None for fresh weights or a path to saved ones.")
    weights = pretrained_path(lo.name)
  if isinstance(weights, (str, os.PathLike)):
    if not os.path.exists(weights):
      hint = weights_word_hint(weights) if isinstance(weights, str) else ""
      raise FileNotFoundError(f"weights for {lo.name!r}: no such directory {str(weights)!r}"
                              f"{hint}; weights are None, 'fresh', 'pretrained', a "
                              f"directory written by lopt.save_weights, or a meta-params "
                              f"pytree")
    from lopt._weights import load_weights
    try:
      return load_weights(weights, lo)
    except ValueError as e:
      if "config mismatch" not in str(e):
        raise
      raise ValueError(f"{e}. Build the optimizer the weights were saved for with "
                       f"lopt.learned({lo.name!r}, **lopt.saved_config({lo.name!r}, "
                       f"{str(asked)!r})), or load them with lopt.get") from None
  leaves = jax.tree.leaves(weights)
  if not leaves or not all(hasattr(x, "shape") and hasattr(x, "dtype") for x in leaves):
    raise TypeError(f"weights for {lo.name!r} must be None, 'fresh', 'pretrained', a path or "
                    f"a meta-params pytree of arrays; got {type(weights).__name__} "
                    f"{weights!r:.60}")
  from lopt._base import check_trees
  check_trees(weights, jax.eval_shape(lo.init, jax.random.key(0)), "weights",
              f"{lo.name}.init(key)")
  return weights


def saved_config(name: str, weights: Any) -> dict[str, Any]:
  """The architecture saved with ``weights`` for learned optimizer ``name``, or ``{}``.

  ``{}`` unless ``weights`` is a directory whose manifest is one of ``name``'s, or
  ``"pretrained"`` / ``"default"`` with shipped weights (their manifest is read, so
  shipped weights of a non-default architecture load by name alone); any other case
  is reported by :func:`load_meta_params`. Keys of older versions are renamed and
  fields the class no longer has are left out.
  """
  import dataclasses

  if isinstance(weights, str) and weights in ("pretrained", "default"):
    if not has_pretrained(name):
      return {}
    weights = pretrained_path(name)
  if not isinstance(weights, (str, os.PathLike)) or weights in WEIGHT_WORDS:
    return {}
  from lopt._weights import read_manifest
  try:
    manifest = read_manifest(weights)
  except (FileNotFoundError, ValueError):
    return {}
  cls = _LEARNED.get(name)
  if manifest["name"] != name or cls is None or not dataclasses.is_dataclass(cls):
    return {}
  fields = {f.name for f in dataclasses.fields(cls)}
  return {k: v for k, v in cls.renamed_config(manifest["config"]).items() if k in fields}


def register_learned(name: str, cls: Callable[..., Any], *, overwrite: bool = False) -> None:
  """Registers a learned optimizer class and its optax factory under ``name``.

  ``lopt.get(name, weights=..., num_steps=..., seed=0, **config)`` then builds
  ``cls(**config)`` (with ``weights`` a saved directory, the fields ``config``
  leaves out take the values saved in its manifest, so weights of a non-default
  architecture load by path alone), resolves ``weights`` with :func:`load_meta_params` (the
  default is ``"pretrained"`` when shipped weights exist, else fresh weights
  from ``seed``) and returns ``lo.transform(meta_params, num_steps)``. The
  per-parameter learned optimizers need ``num_steps`` (an int or ``"unknown"``,
  :data:`lopt.UNKNOWN_HORIZON`); without it, ``transform`` raises.
  """
  if name in _LEARNED and not overwrite:
    raise ValueError(f"learned optimizer {name!r} is already registered")
  _LEARNED[name] = cls

  def factory(*, weights: Any = "default", num_steps: int | str | None = None, seed: int = 0,
              **config: Any):
    lo = learned(name, **{**saved_config(name, weights), **config})
    if isinstance(weights, str) and weights == "default":
      weights = "pretrained" if has_pretrained(name) else None
    return lo.transform(load_meta_params(lo, weights, seed=seed), num_steps)

  factory.__name__ = name
  factory.__doc__ = f"Builds learned optimizer {name!r}; see :func:`register_learned`."
  register(name, factory, overwrite=overwrite, learned=True)
