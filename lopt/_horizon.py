"""The training horizon ``num_steps`` that a learned optimizer is built for.

The per-parameter learned optimizers (``mlp_lopt``, ``adafac_mlp_lopt``,
``celo2_lopt``, ``hierarchical_lopt``, ``layerwise_combo_lopt``) read the
fraction of training done, ``step / num_steps``, and some learn a step-size
schedule over it (:func:`lopt.schedule_lr`). Their ``transform`` takes one of:

* a positive int: the number of updates training will take;
* :data:`UNKNOWN_HORIZON` (``"unknown"``): the horizon-free mode, for runs of
  unknown length: the training-fraction features are zero and a learned
  schedule is a function of the step count alone;
* a traced integer scalar: meta-training builds each task instance's optimizer
  for that instance's own horizon.

There is no default: ``num_steps=None`` raises a ``ValueError`` that says what to
pass, since guessing a horizon silently makes short runs train badly.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["UNKNOWN_HORIZON", "Horizon", "check_num_steps", "is_unknown"]

#: ``num_steps`` of the horizon-free mode: the run's length is not known in advance.
UNKNOWN_HORIZON = "unknown"

#: A validated horizon: a positive int, :data:`UNKNOWN_HORIZON` or a traced integer scalar.
Horizon = int | str | jax.Array

_DOCS = "docs/concepts.md, 'The training horizon'"


def check_num_steps(num_steps: Any, name: str) -> Horizon:
  """Returns ``num_steps`` as a :data:`Horizon` for learned optimizer ``name``.

  Args:
    num_steps: what the caller passed to ``transform`` (or ``lopt.get``).
    name: the optimizer's registry name, for the error messages.

  Returns:
    A Python int for an int (NumPy ints included), :data:`UNKNOWN_HORIZON`, or an
    integer scalar ``jax.Array`` unchanged (traced in meta-training).

  Raises:
    ValueError: ``num_steps`` is None (the message says what to pass), or not one
      of the forms above (a non-positive int, a float, another string...).
  """
  if num_steps is None:
    raise ValueError(
        f"{name}'s update depends on the training horizon (its training-fraction features"
        f" and any learned step-size schedule): pass num_steps=<the number of updates you"
        f" will take>, e.g. lopt.get({name!r}, num_steps=1000) or lo.transform(meta_params,"
        f" 1000), or num_steps={UNKNOWN_HORIZON!r} for its horizon-free mode (see {_DOCS})")
  if isinstance(num_steps, (int, np.integer)) and not isinstance(num_steps, (bool, np.bool_)):
    if num_steps >= 1:
      return int(num_steps)
  elif isinstance(num_steps, str):
    if num_steps == UNKNOWN_HORIZON:
      return UNKNOWN_HORIZON
  elif (isinstance(num_steps, jax.Array) and num_steps.ndim == 0
        and jnp.issubdtype(num_steps.dtype, jnp.integer)):
    return num_steps
  raise ValueError(
      f"{name}: num_steps must be a positive int (the number of updates you will take), "
      f"{UNKNOWN_HORIZON!r} (lopt.UNKNOWN_HORIZON, the horizon-free mode) or a traced "
      f"integer scalar (meta-training); got {num_steps!r}")


def is_unknown(num_steps: Horizon) -> bool:
  """Whether a validated horizon is the horizon-free mode (:data:`UNKNOWN_HORIZON`)."""
  return isinstance(num_steps, str) and num_steps == UNKNOWN_HORIZON
