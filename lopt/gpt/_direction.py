"""Which way a G.pt model's metric improves: losses and errors down, returns up.

A model is conditioned on one metric of its task (``test_loss``, ``test_error``,
``test_return``, ...). Everything that picks "the best" value or embeds the metric
asks here, so a return (higher is better, possibly negative) is never treated
like a loss.
"""

from __future__ import annotations

import numpy as np

__all__ = ["best_value", "higher_is_better", "use_log_metric"]


def higher_is_better(metric: str) -> bool:
  """True for return metrics (``"test_return"``, ``"return"``), False for losses and errors.

  Example::

    higher_is_better("test_return"), higher_is_better("test_loss")   # (True, False)
  """
  return str(metric).split("_")[-1] == "return"


def best_value(metric: str, values: np.ndarray) -> float:
  """The best finite value of ``values``: the max for a return, else the min."""
  v = np.asarray(values, np.float64)
  v = v[np.isfinite(v)]
  if v.size == 0:
    raise ValueError(f"no finite {metric} values")
  return float(v.max() if higher_is_better(metric) else v.min())


def use_log_metric(metric: str, values: np.ndarray) -> bool:
  """Whether the model should embed ``log(metric)``: a loss whose values are all > 0.

  A return, an error rate, or a loss that can be zero or negative (a policy's
  ``-return``) is embedded as it is.
  """
  v = np.asarray(values, np.float64)
  v = v[np.isfinite(v)]
  return str(metric).endswith("loss") and v.size > 0 and bool(v.min() > 0)
