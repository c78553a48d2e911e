"""Saving and loading G.pt weights: orbax arrays plus a JSON manifest (no pickle).

A weights directory holds::

  <path>/manifest.json  {"format": "lopt-gpt/1", "name": "gpt", "config": GPT config
                         (the task's param spec included), "task": {"name", "config"},
                         "best_metric", "metric_range": [lo, hi], "extra": {...}}
  <path>/state/         orbax: {"params": EMA network weights, "stats": normalization}

``load_gpt`` rebuilds the model from the manifest alone, so the structure a
model was trained for travels with its weights.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any, NamedTuple

import jax
import numpy as np
import orbax.checkpoint as ocp

from lopt._weights import read_json_manifest
from lopt.gpt._model import GPT, stats_to_jax

__all__ = ["FORMAT", "LoadedGPT", "load_gpt", "read_gpt_manifest", "save_gpt"]

FORMAT = "lopt-gpt/1"
_STATE = "state"


class LoadedGPT(NamedTuple):
  """A loaded model: the :class:`GPT`, its network weights, stats and manifest."""
  model: GPT
  params: Any
  stats: dict[str, jax.Array]
  manifest: dict[str, Any]

  @property
  def trained_for(self) -> dict[str, Any] | None:
    """The task the model was trained for, ``{"name", "config"}`` (``tasks.get``'s arguments)."""
    return self.manifest.get("task")


def save_gpt(path: str | pathlib.Path, model: GPT, params: Any, stats: dict[str, Any], *,
             task: dict[str, Any] | None = None, best_metric: float | None = None,
             metric_range: tuple[float, float] | None = None,
             extra: dict[str, Any] | None = None) -> pathlib.Path:
  """Saves a G.pt model to the directory ``path`` (created; overwritten).

  Args:
    path: the weights directory.
    model: the :class:`GPT` whose config goes into the manifest.
    params: network weights (usually the EMA).
    stats: normalization statistics (:meth:`GPT.compute_stats`).
    task: ``{"name", "config"}`` of the task the model was trained on: its ``tasks.get``
      name and every setting of its ``config()`` (dataset, architecture, activation);
      the optimizer refuses other tasks (see :func:`lopt.gpt.gpt`).
    best_metric: best metric value seen in training data: the default prompt.
    metric_range: ``(lo, hi)``, the metric values the model was conditioned on in
      training; the optimizer warns about a first update outside it.
    extra: JSON-serializable metadata (training run, evaluation, ...).

  Returns:
    The absolute path.
  """
  if metric_range is not None:
    lo, hi = (float(x) for x in metric_range)
    if not (np.isfinite(lo) and np.isfinite(hi) and lo <= hi):
      raise ValueError(f"metric_range must be finite (lo, hi) with lo <= hi, got {metric_range}")
  path = pathlib.Path(path).expanduser().resolve()
  path.mkdir(parents=True, exist_ok=True)
  state = {"params": jax.tree.map(np.asarray, params),
           "stats": {k: np.asarray(v, np.float32) for k, v in stats.items()}}
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(path / _STATE, state, force=True)
    ckptr.wait_until_finished()
  manifest = {"format": FORMAT, "name": "gpt", "config": model.config(), "task": task,
              "best_metric": None if best_metric is None else float(best_metric),
              "metric_range": (None if metric_range is None
                               else [float(metric_range[0]), float(metric_range[1])]),
              "extra": extra or {}}
  (path / "manifest.json").write_text(json.dumps(manifest, indent=1))
  return path


def read_gpt_manifest(path: str | pathlib.Path) -> dict[str, Any]:
  """Reads and checks ``manifest.json`` of a G.pt weights directory.

  Raises:
    FileNotFoundError: no manifest at ``path``.
    ValueError: the manifest is malformed or not a G.pt manifest (the message names
      the file and the fault).
  """
  f = pathlib.Path(path).expanduser() / "manifest.json"
  if not f.is_file():
    raise FileNotFoundError(f"no G.pt weights at {str(path)!r}: {str(f)!r} does not exist")
  manifest = read_json_manifest(f, {"format": str, "name": str, "config": dict})
  if manifest.get("format") != FORMAT or manifest.get("name") != "gpt":
    raise ValueError(f"{f} is not a G.pt weights manifest (format "
                     f"{manifest.get('format')!r}, name {manifest.get('name')!r}; expected "
                     f"{FORMAT!r}, 'gpt')")
  return manifest


def load_gpt(path: str | pathlib.Path) -> LoadedGPT:
  """Loads G.pt weights saved by :func:`save_gpt`.

  Example::

    m = load_gpt("lopt/weights/gpt_digits_mlp")
    new = m.model.generate(m.params, m.stats, key, start, loss, target)
  """
  path = pathlib.Path(path).expanduser().resolve()
  manifest = read_gpt_manifest(path)
  cfg = dict(manifest["config"])
  if not isinstance(cfg.get("spec"), list):
    raise ValueError(f"{path / 'manifest.json'}: the G.pt config has no 'spec' list (the "
                     f"parameter structure the model was trained for)")
  model = GPT(cfg.pop("spec"), **cfg)
  shapes = jax.eval_shape(model.init, jax.random.key(0))
  n, c = model.tokenizer.num_tokens, model.tokenizer.chunk_size
  target = {"params": jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), shapes),
            "stats": {k: np.zeros((n, c) if k.endswith("_scale") else (), np.float32)
                      for k in model.stats_keys}}
  with ocp.StandardCheckpointer() as ckptr:
    state = ckptr.restore(path / _STATE, target)
  params = jax.tree.map(jax.numpy.asarray, state["params"])
  return LoadedGPT(model, params, stats_to_jax(state["stats"]), manifest)
