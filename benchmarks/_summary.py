"""Summaries of benchmark results over tasks: IQMs with bootstrap intervals, and
learned optimizers against their own untrained inits."""

from __future__ import annotations

from typing import Any

import numpy as np

from benchmarks import _protocol as protocol

__all__ = ["KINDS", "beats_tuned_adam", "head_to_head", "meta_training_gain", "summarize",
           "untrained_init_spec"]

#: The speedup kinds reported for every row.
KINDS = ("steps", "test", "wallclock")


def beats_tuned_adam(row: dict[str, Any], kind: str = "steps") -> bool:
  """Whether one task's result is faster than tuned Adam (speedup above 1).

  A lower-bound speedup (tuned Adam never got there within its longer run)
  counts when the bound is at least 1.
  """
  s, lower = row[f"speedup_{kind}"], row[f"speedup_{kind}_is_lower_bound"]
  return bool(s > 1.0 or (lower and s >= 1.0))


def _ci(scores: np.ndarray, num_bootstrap: int) -> dict[str, Any]:
  point, lo, hi = protocol.bootstrap_ci(scores, num_samples=num_bootstrap)
  return {"iqm": point, "ci95": [lo, hi]}


def summarize(results: dict[str, Any], *, num_bootstrap: int = 2000) -> dict[str, Any]:
  """Per row: IQM of each speedup over (task, seed) with a stratified bootstrap 95 % CI."""
  summary = {}
  labels = list(results["tasks"])
  names = list(dict.fromkeys(n for t in labels for n in results["tasks"][t]["optimizers"]))
  for name in names:
    rows = [results["tasks"][t]["optimizers"][name] for t in labels
            if name in results["tasks"][t]["optimizers"]]
    s: dict[str, Any] = {"tuned": bool(rows[0]["tuned"]), "num_tasks": len(rows)}
    for kind in KINDS:
      scores = np.array([r[f"speedup_{kind}_per_seed"] for r in rows])
      s[kind] = {**_ci(scores, num_bootstrap),
                 "median_task": float(np.median([r[f"speedup_{kind}"] for r in rows])),
                 "tasks_faster": int(sum(beats_tuned_adam(r, kind) for r in rows))}
    s["diverged_runs"] = int(sum(r["diverged_seeds"] for r in rows))
    summary[name] = s
  return summary


def _start_config(name: str, weights: str) -> dict[str, Any] | None:
  """The ``lopt_config`` a manifest records for the run the weights came from, if any."""
  import lopt
  from lopt._weights import read_manifest

  path = lopt.pretrained_path(name) if weights in ("pretrained", "default") else weights
  try:
    extra = read_manifest(path).get("extra") or {}
  except (FileNotFoundError, ValueError, KeyError):
    return None
  config = (extra.get("meta_training") or {}).get("config") or {}
  return config.get("lopt_config") if config.get("lopt") == name else None


def untrained_init_spec(name: str, weights: str = "pretrained") -> str:
  """The spec of the untrained init that learned optimizer ``name``'s ``weights`` started
  from: ``name:fresh(...)`` with the ``lopt_config`` their manifest records (e.g.
  ``"mlp_lopt:fresh(init_kind='adam',init_lr=0.003,learned_schedule=True)"``), or plain
  ``name:fresh`` when it records none. Run it next to the weights to see what
  meta-training added (:func:`meta_training_gain` pairs the two)."""
  start = _start_config(name, weights)
  if not start:
    return f"{name}:fresh"
  return f"{name}:fresh({','.join(f'{k}={v!r}' for k, v in start.items())})"


def _untrained_init(trained: str, names: Any) -> str | None:
  """The row of ``trained``'s untrained init among ``names`` (see meta_training_gain)."""
  from benchmarks._specs import parse_spec

  spec = parse_spec(trained)
  fresh = [n for n in names if n.startswith(f"{spec.name}:fresh")]
  if spec.kwargs:   # weights run with settings (a snapshot): ':fresh' with the same settings
    return next((n for n in fresh if parse_spec(n).kwargs == spec.kwargs), None)
  start = _start_config(spec.name, spec.weights) if fresh else None
  if start:   # the run started elsewhere than the default init: only that row will do
    return next((n for n in fresh if parse_spec(n).kwargs == start), None)
  return f"{spec.name}:fresh" if f"{spec.name}:fresh" in fresh else None


def meta_training_gain(results: dict[str, Any], *, num_bootstrap: int = 2000
                       ) -> dict[str, Any]:
  """For each learned optimizer run both trained and ``:fresh``: did meta-training help?

  Per task and seed, the trained optimizer's speedup over its untrained
  init's (same tasks, seeds and horizon); the IQM of these ratios with a
  stratified bootstrap 95 % interval, and the tasks where it is above 1.

  The untrained init of trained weights is the run they came from's starting
  point: the ``name:fresh(...)`` row whose arguments equal the ``lopt_config``
  their manifest records (e.g. ``mlp_lopt:fresh(init_kind='adam', ...)``), else
  plain ``name:fresh``. Weights run with settings of their own (a snapshot,
  ``name:<path>(k=v, ...)``) pair with ``name:fresh`` of the same settings.

  Returns:
    ``{"celo2_lopt:pretrained vs celo2_lopt:fresh": {"steps": {...}, "test": {...},
    "num_tasks": n}}``.
  """
  out = {}
  names = results["summary"]
  for trained in names:
    base, _, weights = trained.partition(":")
    if not weights or weights.startswith("fresh"):
      continue
    fresh = _untrained_init(trained, names)
    if fresh is None:
      continue
    labels = [t for t, r in results["tasks"].items()
              if trained in r["optimizers"] and fresh in r["optimizers"]]
    if not labels:
      continue
    entry: dict[str, Any] = {"num_tasks": len(labels)}
    for kind in ("steps", "test"):
      a = np.array([results["tasks"][t]["optimizers"][trained][f"speedup_{kind}_per_seed"]
                    for t in labels])
      b = np.array([results["tasks"][t]["optimizers"][fresh][f"speedup_{kind}_per_seed"]
                    for t in labels])
      ratio = protocol.ratio_scores(a, b)
      entry[kind] = {**_ci(ratio, num_bootstrap),
                     "tasks_better": int(np.sum(np.median(ratio, axis=1) > 1.0)),
                     "per_task": dict(zip(labels, np.median(ratio, axis=1).tolist()))}
    out[f"{trained} vs {fresh}"] = entry
  return out


#: Relative difference of final losses below which :func:`head_to_head` calls a tie.
TIE_TOLERANCE = 0.01


def _final(row: dict[str, Any], kind: str) -> float:
  return float(row["test"]["loss"] if kind == "test" else row["final_loss"])


def head_to_head(results: dict[str, Any], name: str, other: str, kind: str = "steps"
                 ) -> dict[str, Any]:
  """Per task, whether optimizer ``name`` is better than ``other`` (e.g. a general LO).

  The higher median speedup (``speedup_<kind>``) wins. Equal speedups (in
  practice both at the cap, both reaching tuned Adam's loss within a quarter of
  the steps) are decided by the loss at the horizon: the final training loss
  (``kind="steps"``/``"wallclock"``) or the final test loss (``kind="test"``),
  lower wins, a tie within :data:`TIE_TOLERANCE` relative difference.

  Returns:
    ``{"wins": int, "ties": int, "losses": int, "num_tasks": int, "per_task":
    {label: "win" | "tie" | "loss"}}`` over the tasks where both ran.

  Raises:
    KeyError: ``name`` or ``other`` ran on no task; the message lists the rows.
  """
  if kind not in KINDS:
    raise ValueError(f"unknown kind {kind!r}; valid: {', '.join(KINDS)}")
  rows = {n for r in results["tasks"].values() for n in r["optimizers"]}
  for n in (name, other):
    if n not in rows:
      raise KeyError(f"no row {n!r} in these results; rows: {', '.join(sorted(rows))}")
  per_task = {}
  for label, r in results["tasks"].items():
    if name not in r["optimizers"] or other not in r["optimizers"]:
      continue
    a, b = r["optimizers"][name], r["optimizers"][other]
    sa, sb = a[f"speedup_{kind}"], b[f"speedup_{kind}"]
    if sa != sb:
      per_task[label] = "win" if sa > sb else "loss"
      continue
    fa, fb = _final(a, kind), _final(b, kind)
    if abs(fa - fb) <= TIE_TOLERANCE * max(abs(fa), abs(fb)):
      per_task[label] = "tie"
    else:
      per_task[label] = "win" if fa < fb else "loss"
  outcomes = list(per_task.values())
  return {"wins": outcomes.count("win"), "ties": outcomes.count("tie"),
          "losses": outcomes.count("loss"), "num_tasks": len(per_task), "per_task": per_task}
