"""Guards against silent misuse of a G.pt model: its task and its starting metrics.

A G.pt model maps the parameters of one task (dataset, architecture, activation)
to better parameters of that task. Any tree with the right leaf shapes tokenizes,
so the shapes alone cannot tell a digits MLP from the same MLP with ``tanh``
units or on pixel-permuted images, where the samples are garbage. Two checks
close that gap:

* the **task**: the manifest names the task the model was trained for
  (``{"name", "config"}``, the arguments of ``tasks.get``); the optimizer compares
  it with the ``task=`` it is given and refuses another (:class:`TaskMismatchError`)
  unless ``allow_other_task=True``, and warns when it cannot check;
* the **starting metric**: the manifest records the range of metric values the model
  was conditioned on in training (``metric_range``); a first update whose ``loss=``
  lies outside it (with a margin) warns (:class:`GPTWarning`).
"""

from __future__ import annotations

import json
import math
import warnings
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["GPTWarning", "TaskMismatchError"]

#: Task settings of how a task is trained or evaluated, not of the function from
#: parameters to metric the model learned: they may differ from the manifest's.
RUN_SETTINGS = frozenset({"batch_size", "eval_batch_size"})
#: Without a recorded ``metric_range``, the range is the training data's (log-)metric
#: mean +- this many standard deviations (from the model's normalization stats).
STATS_RANGE_STDS = 3.0
#: A start metric warns when it lies outside the range widened on each side by this
#: fraction of its width (in log space for losses).
START_MARGIN = 0.1


class GPTWarning(UserWarning):
  """A G.pt model is used where it was not checked or not trained (task, start metric)."""


class TaskMismatchError(ValueError):
  """A G.pt model was applied to a task other than the one it was trained for."""


def _canonical(value: Any) -> Any:
  """JSON round trip: tuples become lists, so configs compare like manifests."""
  return json.loads(json.dumps(value, default=str))


def task_info(task: Any) -> dict[str, Any]:
  """``{"name", "config"}`` of a task object (``name``, ``config()``) or such a mapping."""
  if isinstance(task, Mapping):
    if "name" not in task:
      raise TypeError(f"task= as a mapping needs 'name' (and 'config'), got keys {sorted(task)}")
    name, config = task["name"], task.get("config") or {}
  elif isinstance(getattr(task, "name", None), str) and callable(getattr(task, "config", None)):
    name, config = task.name, task.config()
  else:
    raise TypeError(f"task= must be a task (e.g. tasks.get('digits_mlp', hidden=(32,))) or "
                    f"{{'name': ..., 'config': {{...}}}}, got {type(task).__name__}")
  return {"name": str(name), "config": _canonical(dict(config))}


def describe_task(info: Mapping[str, Any] | None) -> str:
  """``digits_mlp(dataset='digits', hidden=[32], ...)``, or ``an unrecorded task``."""
  if not info:
    return "an unrecorded task"
  args = ", ".join(f"{k}={v!r}" for k, v in (info.get("config") or {}).items())
  return f"{info['name']}({args})"


def task_difference(trained: Mapping[str, Any], given: Mapping[str, Any]) -> str | None:
  """The first setting where ``given`` differs from ``trained``, or None.

  Every setting the manifest records must be given and equal, except
  :data:`RUN_SETTINGS`; settings the manifest does not record are not compared.
  """
  if trained["name"] != given["name"]:
    return f"name {trained['name']!r} vs {given['name']!r}"
  got = given.get("config") or {}
  for k, v in _canonical(trained.get("config") or {}).items():
    if k in RUN_SETTINGS:
      continue
    if k not in got:
      return f"{k}: {v!r} vs not given"
    if got[k] != v:
      return f"{k}: {v!r} vs {got[k]!r}"
  return None


def check_task(trained: Mapping[str, Any] | None, task: Any, allow_other_task: bool) -> None:
  """Refuses or warns about using a model trained for ``trained`` on ``task``.

  Raises:
    TaskMismatchError: ``task`` differs from ``trained`` and not ``allow_other_task``.
  """
  hint = ("pass task=tasks.get(...) (or {'name': ..., 'config': {...}}) to check it, or "
          "allow_other_task=True to skip the check")
  if not trained or not trained.get("name"):
    if not allow_other_task:
      warnings.warn("this G.pt model's manifest does not record the task it was trained for, "
                    "so lopt cannot check that your parameters belong to it", GPTWarning,
                    stacklevel=2)
    return
  if task is None:
    if not allow_other_task:
      warnings.warn(
          f"this G.pt model was trained for task {describe_task(trained)}; with no task= "
          f"lopt cannot check that your parameters belong to it (a network of the same "
          f"shapes on other data or with another activation passes the shape check and "
          f"gets garbage samples): {hint}", GPTWarning, stacklevel=2)
    return
  given = task_info(task)
  diff = task_difference(trained, given)
  if diff is None:
    return
  msg = (f"this G.pt model was trained for task {describe_task(trained)}, not "
         f"{describe_task(given)} (first difference: {diff}); on another task its samples "
         f"are garbage")
  if not allow_other_task:
    raise TaskMismatchError(f"{msg}. Pass allow_other_task=True to use it anyway.")
  warnings.warn(f"{msg} (allow_other_task=True)", GPTWarning, stacklevel=2)


def metric_range(manifest: Mapping[str, Any], stats: Mapping[str, Any],
                 log_metric: bool) -> tuple[float, float]:
  """The range of start metrics the model was trained on.

  ``manifest["metric_range"]`` when recorded, else the training data's metric mean
  +- :data:`STATS_RANGE_STDS` standard deviations (log space for a ``log_metric``).
  """
  rec = manifest.get("metric_range")
  if rec is not None:
    lo, hi = (float(x) for x in rec)
    return lo, hi
  mean, std = float(stats["metric_mean"]), float(stats["metric_std"])
  lo, hi = mean - STATS_RANGE_STDS * std, mean + STATS_RANGE_STDS * std
  return (math.exp(lo), math.exp(hi)) if log_metric else (lo, hi)


class StartCheck:
  """Warns when the first update's start metric is outside the training range.

  Under ``jit`` (a traced ``loss``) the test runs on device and only an
  out-of-range first update calls back to the host (``jax.debug.callback`` in a
  ``lax.cond``), which warns; an eager call warns directly.
  """

  def __init__(self, lo: float, hi: float, log_metric: bool, metric: str, task: str):
    self.lo, self.hi, self.log_metric = lo, hi, log_metric
    self.metric, self.task = metric, task
    t = (math.log(max(lo, 1e-8)), math.log(max(hi, 1e-8))) if log_metric else (lo, hi)
    pad = START_MARGIN * (t[1] - t[0])
    self.bounds = (t[0] - pad, t[1] + pad)   # in transformed space

  def _transform(self, x):
    xp = jnp if isinstance(x, jax.Array) else np
    return xp.log(xp.maximum(x, 1e-8)) if self.log_metric else x

  def _outside(self, x):
    t = self._transform(x)
    return (t < self.bounds[0]) | (t > self.bounds[1])

  def message(self, loss: float) -> str:
    back = (lambda t: math.exp(t)) if self.log_metric else (lambda t: t)
    return (f"G.pt: the starting {self.metric} loss={loss:.4g} is outside the range this "
            f"model was trained on ({self.metric} {self.lo:.3g} .. {self.hi:.3g}; warning "
            f"outside {back(self.bounds[0]):.3g} .. {back(self.bounds[1]):.3g}); its samples "
            f"there are unreliable. Is loss= the {self.metric} of params on task "
            f"{self.task}?")

  def _host(self, flag, loss) -> None:
    flag, loss = np.asarray(flag), np.asarray(loss)
    for x in np.atleast_1d(loss)[np.atleast_1d(flag)]:
      warnings.warn(self.message(float(x)), GPTWarning, stacklevel=2)

  def __call__(self, loss: jax.Array, count: jax.Array) -> None:
    """Warns if ``count == 0`` and the finite ``loss`` is out of range."""
    if not isinstance(loss, jax.core.Tracer) and not isinstance(count, jax.core.Tracer):
      x = float(loss)
      if int(count) == 0 and math.isfinite(x) and bool(self._outside(np.float32(x))):
        warnings.warn(self.message(x), GPTWarning, stacklevel=3)
      return
    flag = (count == 0) & jnp.isfinite(loss) & self._outside(loss)
    # Under vmap the cond runs both branches: the callback checks the flag itself.
    jax.lax.cond(flag, lambda: jax.debug.callback(self._host, flag, loss), lambda: None)
