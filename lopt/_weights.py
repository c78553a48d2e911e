"""Saving and loading learned-optimizer weights: orbax arrays plus a JSON manifest.

A weights directory holds::

  <path>/manifest.json   architecture name, config, feature list, lopt version, tree
  <path>/params/         the meta-params, written by orbax (no pickle)

Loading checks the manifest against the requested learned optimizer *before*
reading arrays, and raises ``ValueError`` naming the first mismatch (architecture,
a config field, the feature list, or a tree path / shape) with saved vs requested
values. Example::

  lo = lopt.learned("mlp_lopt")
  save_weights("/tmp/w", lo, meta_params, extra={"meta_steps": 1000})
  meta_params = load_weights("/tmp/w", lo)
  opt = lopt.get("mlp_lopt", weights="/tmp/w", num_steps=1000)
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

__all__ = ["load_weights", "read_json_manifest", "read_manifest", "save_weights"]

FORMAT = "lopt-weights/1"
MANIFEST = "manifest.json"
ARRAYS = "params"


def _version() -> str:
  import lopt
  return lopt.__version__


def _jsonable(x: Any) -> Any:
  return json.loads(json.dumps(x))


def _tree_spec(tree: Any) -> list[dict[str, Any]]:
  return [{"path": jax.tree_util.keystr(p), "shape": list(np.shape(x)),
           "dtype": np.dtype(x.dtype).name}
          for p, x in jax.tree_util.tree_leaves_with_path(tree)]


def _features(lo: Any) -> list[str] | None:
  feats = getattr(lo, "feature_names", None)
  return None if feats is None else [str(f) for f in feats]


def save_weights(path: str | pathlib.Path, lo: Any, meta_params: Any, *,
                 extra: dict[str, Any] | None = None, overwrite: bool = True) -> pathlib.Path:
  """Saves ``meta_params`` of learned optimizer ``lo`` to the directory ``path``.

  Args:
    path: a directory (created; made absolute).
    lo: the :class:`~lopt.LearnedOptimizer` the weights belong to.
    meta_params: its weights, a pytree of arrays matching ``lo.init``.
    extra: JSON-serializable metadata stored in the manifest (training run, ...).
    overwrite: replace an existing directory's contents.

  Returns:
    The absolute path written.
  """
  path = pathlib.Path(path).expanduser().resolve()
  expected = jax.eval_shape(lo.init, jax.random.key(0))
  _check_tree(_tree_spec(expected), _tree_spec(meta_params), "lo.init", "meta_params")
  path.mkdir(parents=True, exist_ok=True)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(path / ARRAYS, jax.tree.map(np.asarray, meta_params), force=overwrite)
    ckptr.wait_until_finished()
  manifest = {
      "format": FORMAT,
      "name": lo.name,
      "config": _jsonable(lo.config()),
      "features": _features(lo),
      "lopt_version": _version(),
      "tree": _tree_spec(meta_params),
      "extra": _jsonable(extra or {}),
  }
  (path / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
  return path


def read_json_manifest(file: str | pathlib.Path, required: dict[str, type]) -> dict[str, Any]:
  """Reads a manifest file: a JSON object with the ``required`` fields of the given types.

  Args:
    file: the ``manifest.json`` path.
    required: field name -> expected type (``dict``, ``list``, ``str``).

  Raises:
    FileNotFoundError: no such file.
    ValueError: the file is not valid JSON, not a JSON object, or lacks a field (or
      has one of the wrong type); the message names the file and what is wrong.
  """
  f = pathlib.Path(file).expanduser()
  if not f.is_file():
    raise FileNotFoundError(f"{f} not found")
  try:
    manifest = json.loads(f.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{f}: not valid JSON ({e})") from None
  if not isinstance(manifest, dict):
    raise ValueError(f"{f}: a manifest must be a JSON object, got a JSON "
                     f"{type(manifest).__name__}")
  for key, kind in required.items():
    if key not in manifest:
      raise ValueError(f"{f}: the manifest has no {key!r} field "
                       f"(fields: {', '.join(sorted(manifest)) or 'none'})")
    if not isinstance(manifest[key], kind):
      raise ValueError(f"{f}: the manifest's {key!r} must be a JSON "
                       f"{'object' if kind is dict else 'array' if kind is list else 'string'}"
                       f", got {type(manifest[key]).__name__}")
  return manifest


def read_manifest(path: str | pathlib.Path) -> dict[str, Any]:
  """Returns the manifest of the weights directory ``path``.

  Raises:
    FileNotFoundError: ``path`` holds no manifest.
    ValueError: the manifest is malformed (the message names the file and the fault).
  """
  f = pathlib.Path(path).expanduser() / MANIFEST
  if not f.exists():
    raise FileNotFoundError(f"{f} not found: {path} is not a lopt weights directory")
  return read_json_manifest(f, {"format": str, "name": str, "config": dict, "tree": list})


def _check_tree(saved: list[dict], requested: list[dict], saved_name: str,
                requested_name: str) -> None:
  sp, rp = [e["path"] for e in saved], [e["path"] for e in requested]
  if sp != rp:
    only_s = sorted(set(sp) - set(rp))[:5]
    only_r = sorted(set(rp) - set(sp))[:5]
    raise ValueError(f"weights tree mismatch: only in {saved_name}: {only_s or '-'}; "
                     f"only in {requested_name}: {only_r or '-'} "
                     f"({len(sp)} vs {len(rp)} leaves)")
  for s, r in zip(saved, requested):
    if list(s["shape"]) != list(r["shape"]):
      raise ValueError(f"weights tree mismatch at {s['path']}: {saved_name} shape "
                       f"{tuple(s['shape'])} vs {requested_name} shape {tuple(r['shape'])}")


def check_manifest(manifest: dict[str, Any], lo: Any, where: str = "weights") -> None:
  """Raises ``ValueError`` naming the first way ``manifest`` does not fit ``lo``."""
  if manifest.get("format") != FORMAT:
    raise ValueError(f"{where}: unknown weights format {manifest.get('format')!r}, "
                     f"expected {FORMAT!r}")
  if manifest["name"] != lo.name:
    raise ValueError(f"{where}: architecture mismatch: saved {manifest['name']!r}, "
                     f"requested {lo.name!r}")
  renamed = getattr(type(lo), "renamed_config", None)  # keys of older versions
  saved_cfg = manifest.get("config", {})
  saved_cfg = renamed(saved_cfg) if renamed is not None else saved_cfg
  req_cfg = _jsonable(lo.config())
  for key in sorted(set(saved_cfg) | set(req_cfg)):
    s, r = saved_cfg.get(key, "<absent>"), req_cfg.get(key, "<absent>")
    if s != r:
      raise ValueError(f"{where}: config mismatch for {lo.name!r} in field {key!r}: "
                       f"saved {s!r}, requested {r!r}")
  if manifest.get("features") != _features(lo):
    raise ValueError(f"{where}: feature list mismatch: saved {manifest.get('features')}, "
                     f"requested {_features(lo)}")
  expected = jax.eval_shape(lo.init, jax.random.key(0))
  _check_tree(manifest["tree"], _tree_spec(expected), "saved", "requested")


def load_weights(path: str | pathlib.Path, lo: Any) -> Any:
  """Loads the meta-params saved at ``path`` for learned optimizer ``lo``.

  Args:
    path: a directory written by :func:`save_weights` (may sit inside the
      installed package; read-only is fine, no network needed).
    lo: the :class:`~lopt.LearnedOptimizer` to load into.

  Returns:
    The meta-params pytree (structure of ``lo.init``, float arrays).

  Raises:
    FileNotFoundError: ``path`` holds no manifest.
    ValueError: the weights belong to another architecture, config, feature list
      or tree; the message names the field with saved vs requested values.
  """
  path = pathlib.Path(path).expanduser().resolve()
  manifest = read_manifest(path)
  check_manifest(manifest, lo, where=str(path))
  expected = jax.eval_shape(lo.init, jax.random.key(0))
  target = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), expected)
  with ocp.StandardCheckpointer() as ckptr:
    restored = ckptr.restore(path / ARRAYS, target)
  return jax.tree.map(jax.numpy.asarray, restored)
