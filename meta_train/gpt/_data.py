"""Reading G.pt checkpoint datasets: ``index.json`` plus ``.npz`` shards, never pickle.

The on-disk format is written by :mod:`meta_train.gpt.dataset` and documented
there and in ``docs/gpt.md``.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any, NamedTuple

import numpy as np

__all__ = ["FORMAT_VERSION", "RUN_ID_STRIDE", "CheckpointDataset", "load_dataset", "read_index",
           "shard_name"]

#: Version of the on-disk layout; bumped on incompatible changes.
FORMAT_VERSION = 1


def shard_name(i: int) -> str:
  """The file name of shard ``i``."""
  return f"shard_{i:05d}.npz"


class CheckpointDataset(NamedTuple):
  """A loaded checkpoint dataset.

  Attributes:
    params: ``(runs, checkpoints, num_params)`` float32 flattened parameters, in
      the leaf order of ``index["param_spec"]``.
    metrics: name -> ``(runs, checkpoints)`` float32 (``train_loss``,
      ``test_loss``, ``test_error`` or ``test_return``, ...).
    steps: ``(checkpoints,)`` int32 training step of each checkpoint.
    run_ids: ``(runs,)`` int32 global run index.
    index: the parsed ``index.json``.
  """
  params: np.ndarray
  metrics: dict[str, np.ndarray]
  steps: np.ndarray
  run_ids: np.ndarray
  index: dict[str, Any]

  @property
  def num_runs(self) -> int:
    return int(self.params.shape[0])

  @property
  def start_from(self) -> dict[str, Any] | None:
    """``index["start_from"]``: the G.pt model whose samples the runs start from.

    None for runs that start from the raw scaled inits (older datasets lack the
    field). For several datasets it is the first one's; ``index["datasets"]``
    holds each.
    """
    return self.index.get("start_from")


def read_index(path: str | pathlib.Path) -> dict[str, Any]:
  """Reads and validates ``index.json`` of the dataset directory ``path``.

  Raises:
    FileNotFoundError: ``path`` is not a directory holding an ``index.json``.
    ValueError: the index has an unknown format version.
  """
  path = pathlib.Path(path)
  index_file = path / "index.json"
  if not index_file.is_file():
    raise FileNotFoundError(
        f"no G.pt checkpoint dataset at {str(path)!r}: {str(index_file)!r} does not exist. "
        f"Create one with `python -m meta_train.gpt.dataset --out={path}`.")
  index = json.loads(index_file.read_text())
  if index.get("format_version") != FORMAT_VERSION:
    raise ValueError(f"{index_file}: format_version {index.get('format_version')!r}, "
                     f"expected {FORMAT_VERSION}")
  return index


#: Run ids of the ``k``-th dataset of a comma-separated list are offset by ``k * RUN_ID_STRIDE``.
RUN_ID_STRIDE = 1_000_000


def load_dataset(path: str | pathlib.Path, *, drop_nonfinite: bool = True,
                 allow_partial: bool = False) -> CheckpointDataset:
  """Loads a checkpoint dataset written by :mod:`meta_train.gpt.dataset`.

  ``path`` may list several datasets separated by commas (e.g. long runs and
  densely checkpointed short runs of the same task); their runs are concatenated.
  They must share the task, parameter spec, metrics and number of checkpoints;
  the run ids of the ``k``-th are offset by ``k * RUN_ID_STRIDE`` to stay unique,
  and ``steps`` and ``index`` are the first one's (``index["datasets"]`` lists
  all indices).

  Example::

    data = load_dataset("runs/gpt_digits_data")
    data.params.shape          # (runs, checkpoints, num_params)
    data.metrics["test_loss"]  # (runs, checkpoints)

  Args:
    path: the dataset directory, or several separated by commas.
    drop_nonfinite: drop runs with any non-finite parameter or metric (diverged).
    allow_partial: load the finished shards of an unfinished dataset instead of
      raising.

  Returns:
    A :class:`CheckpointDataset`.

  Raises:
    FileNotFoundError: no dataset at ``path``, or (unless ``allow_partial``) a
      shard is missing.
    ValueError: listed datasets that do not match.
  """
  parts = [p for p in str(path).split(",") if p] if "," in str(path) else [path]
  if len(parts) > 1:
    loaded = [load_dataset(p, drop_nonfinite=drop_nonfinite, allow_partial=allow_partial)
              for p in parts]
    first = loaded[0]
    for p, d in zip(parts[1:], loaded[1:]):
      for key in ("task", "task_config", "param_spec"):
        if d.index[key] != first.index[key]:
          raise ValueError(f"dataset {p!r} has another {key} than {parts[0]!r}")
      if sorted(d.metrics) != sorted(first.metrics) or d.params.shape[1] != first.params.shape[1]:
        raise ValueError(f"dataset {p!r} has other metrics or another number of checkpoints "
                         f"than {parts[0]!r}")
    return CheckpointDataset(
        np.concatenate([d.params for d in loaded]),
        {m: np.concatenate([d.metrics[m] for d in loaded]) for m in first.metrics},
        first.steps,
        np.concatenate([d.run_ids + k * RUN_ID_STRIDE for k, d in enumerate(loaded)]),
        {**first.index, "datasets": [d.index for d in loaded]})
  path = pathlib.Path(path)
  index = read_index(path)
  params, metrics, run_ids = [], {m: [] for m in index["metrics"]}, []
  missing = []
  for shard in index["shards"]:
    f = path / shard["file"]
    if not f.is_file():
      missing.append(shard["file"])
      continue
    with np.load(f, allow_pickle=False) as z:
      params.append(z["params"])
      run_ids.append(z["run_ids"])
      for m in metrics:
        metrics[m].append(z[m])
  if missing and not allow_partial:
    raise FileNotFoundError(f"dataset {str(path)!r} is incomplete: {len(missing)} of "
                            f"{len(index['shards'])} shards missing (first {missing[0]}); "
                            f"rerun gpt_dataset with the same flags to finish it")
  if not params:
    raise FileNotFoundError(f"dataset {str(path)!r} has no finished shards")
  p = np.concatenate(params).astype(np.float32)
  ms = {m: np.concatenate(v).astype(np.float32) for m, v in metrics.items()}
  ids = np.concatenate(run_ids).astype(np.int32)
  if drop_nonfinite:
    ok = np.isfinite(p).all(axis=(1, 2))
    for v in ms.values():
      ok &= np.isfinite(v).all(axis=1)
    p, ids = p[ok], ids[ok]
    ms = {m: v[ok] for m, v in ms.items()}
  return CheckpointDataset(p, ms, np.asarray(index["steps"], np.int32), ids, index)
