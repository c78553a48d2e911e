"""Registries of tasks and task families, by name."""

from __future__ import annotations

from typing import Any, Callable

from tasks._autoencoder import ImageAutoencoder
from tasks._base import ChoiceFamily, Task, TaskFamily
from tasks._finetune import FineTuneDigits, FineTuneLM, finetune_family
from tasks._image import ImageCNN, ImageMLP
from tasks._lm import CharLM
from tasks._quadratic import Quadratic
from tasks._rl import GymnaxPolicy

__all__ = ["available", "available_families", "get", "get_family", "register"]


def _preset(cls, doc: str, **defaults):
  """A factory for ``cls`` with some arguments preset; ``cfg`` may override them."""
  def make(**cfg):
    return cls(**{**defaults, **cfg})
  make.__doc__ = doc
  return make


def _image(cls, dataset):
  return _preset(cls, f"{cls.__name__} on {dataset!r}.", dataset=dataset)


_TASKS: dict[str, Callable[..., Task]] = {
    "quadratic": Quadratic,
    "digits_mlp": _image(ImageMLP, "digits"),
    "digits_cnn": _image(ImageCNN, "digits"),
    "digits_autoencoder": _image(ImageAutoencoder, "digits"),
    "mnist_mlp": _image(ImageMLP, "mnist"),
    "mnist_cnn": _image(ImageCNN, "mnist"),
    "fashion_mnist_mlp": _image(ImageMLP, "fashion_mnist"),
    "fashion_mnist_cnn": _image(ImageCNN, "fashion_mnist"),
    "cifar10_mlp": _image(ImageMLP, "cifar10"),
    "cifar10_cnn": _image(ImageCNN, "cifar10"),
    "char_lm": CharLM,
    "char_lm_python": _preset(CharLM, "CharLM on Python standard-library source.",
                              corpus="python_stdlib"),
    "cartpole": GymnaxPolicy,
    "acrobot": _preset(GymnaxPolicy, "GymnaxPolicy on Acrobot-v1.", env_name="Acrobot-v1"),
    "catch": _preset(GymnaxPolicy, "GymnaxPolicy on bsuite's Catch (9-step episodes).",
                     env_name="Catch-bsuite", horizon=10, batch_size=16),
    "finetune_digits": FineTuneDigits,
    "finetune_char_lm": FineTuneLM,
}

#: Tasks that need data prepared outside the package (TFDS); the rest are embedded.
TFDS_TASKS = frozenset(n for n in _TASKS if n.split("_")[0] in ("mnist", "fashion", "cifar10"))

_FAMILIES: dict[str, Callable[..., TaskFamily]] = {
    "quadratic": lambda: ChoiceFamily(
        "quadratic", Quadratic,
        {"dim": [4, 10, 32, 100], "condition": [1.0, 10.0, 100.0, 1000.0],
         "noise": [0.0, 0.1, 1.0], "seed": list(range(8))}),
    "digits_mlp": lambda: ChoiceFamily(
        "digits_mlp", _TASKS["digits_mlp"],
        {"hidden": [(32,), (64,), (32, 32), (64, 32), (128, 64)],
         "activation": ["relu", "tanh", "gelu"], "batch_size": [32, 64, 128]}),
    "digits_cnn": lambda: ChoiceFamily(
        "digits_cnn", _TASKS["digits_cnn"],
        {"channels": [(8,), (16,), (8, 16), (16, 32)],
         "activation": ["relu", "tanh", "gelu"], "batch_size": [32, 64, 128]}),
    "finetune_digits": finetune_family,
    "finetune_digits_held_out": lambda **kw: finetune_family("held_out", **kw),
}


def register(name: str, factory: Callable[..., Task], *, overwrite: bool = False) -> None:
  """Adds a task factory (``**cfg -> Task``) to the registry."""
  if name in _TASKS and not overwrite:
    raise ValueError(f"task {name!r} is already registered")
  _TASKS[name] = factory


def available() -> list[str]:
  """Returns the sorted names of every registered task."""
  return sorted(_TASKS)


def available_families() -> list[str]:
  """Returns the sorted names of every registered task family."""
  return sorted(_FAMILIES)


def get(name: str, **cfg: Any) -> Task:
  """Builds the task registered under ``name`` with configuration ``cfg``.

  Raises:
    KeyError: unknown name; the message lists the valid names.
  """
  if name not in _TASKS:
    raise KeyError(f"unknown task {name!r}; valid names: {', '.join(available())}")
  return _TASKS[name](**cfg)


def get_family(name: str, **kwargs: Any) -> TaskFamily:
  """Returns the task family registered under ``name``.

  Raises:
    KeyError: unknown name; the message lists the valid names.
  """
  if name not in _FAMILIES:
    raise KeyError(f"unknown task family {name!r}; valid names: "
                   f"{', '.join(available_families())}")
  return _FAMILIES[name](**kwargs)
