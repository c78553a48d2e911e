"""Hand-designed optimizers: thin wrappers over optax that accept ``loss=``."""

from __future__ import annotations

from typing import Any, Callable

import optax

from lopt._base import with_checks

__all__ = ["HAND_DESIGNED"]


def _wrap(name: str, factory: Callable[..., optax.GradientTransformation], default_lr: float,
          **defaults: Any) -> Callable[..., optax.GradientTransformationExtraArgs]:
  def make(learning_rate: float | optax.Schedule = default_lr, **kwargs: Any):
    return with_checks(factory(learning_rate, **{**defaults, **kwargs}), name)
  make.__name__ = name
  module = "optax.contrib" if factory.__module__.startswith("optax.contrib") else "optax"
  make.__doc__ = (f"``{module}.{factory.__name__}`` (default learning rate {default_lr}) "
                  f"as an ``optax.GradientTransformationExtraArgs`` accepting ``loss=``.\n\n"
                  f"Keyword arguments are forwarded to ``{module}.{factory.__name__}``.")
  return make


HAND_DESIGNED: dict[str, Callable[..., optax.GradientTransformationExtraArgs]] = {
    "sgd": _wrap("sgd", optax.sgd, 0.1),
    "momentum": _wrap("momentum", optax.sgd, 0.05, momentum=0.9),
    "nesterov": _wrap("nesterov", optax.sgd, 0.05, momentum=0.9, nesterov=True),
    "adam": _wrap("adam", optax.adam, 1e-3),
    "adamw": _wrap("adamw", optax.adamw, 1e-3, weight_decay=1e-4),
    "rmsprop": _wrap("rmsprop", optax.rmsprop, 1e-3),
    "adafactor": _wrap("adafactor", optax.adafactor, 1e-2),
    "lion": _wrap("lion", optax.lion, 1e-4),
    # Muon (Jordan et al. 2024): Newton-Schulz-orthogonalized Nesterov momentum on
    # 2-D weights, Adam (same learning rate) on everything else, conv kernels included.
    "muon": _wrap("muon", optax.contrib.muon, 0.02),
}
