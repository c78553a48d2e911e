"""Benchmark optimizers against Adam tuned per task: the library behind ``benchmarks.run``."""

from __future__ import annotations

import datetime
import platform
import sys
import time
from typing import Any, Callable, Sequence

import jax
import numpy as np

import lopt
from benchmarks import _protocol as protocol
from benchmarks._runs import Runs, adam_grid, evaluate_runs, lr_grid, train_runs
from benchmarks._suites import SuiteTask

__all__ = ["build_optimizer", "has_pretrained_gpt", "not_applicable_reason", "run_benchmark",
           "summarize", "unavailable_reason"]

#: Curves stored in the results are subsampled to at most this many points.
MAX_CURVE_POINTS = 400


def unavailable_reason(spec: str) -> str | None:
  """Why optimizer ``spec`` (``name`` or ``name:weights``) cannot run here, or None.

  Only missing pretrained weights make an optimizer unavailable; an unknown
  name raises instead.

  Raises:
    KeyError: the name is not in ``lopt.available()``.
  """
  name, _, weights = spec.partition(":")
  if name not in lopt.available():
    raise KeyError(f"unknown optimizer {name!r}; valid names: {', '.join(lopt.available())}")
  if name == "gpt" and weights in ("", "pretrained"):
    if not has_pretrained_gpt():
      return "no pretrained G.pt weights shipped yet (lopt.gpt.pretrained_gpt_path())"
  elif weights == "pretrained" and not lopt.has_pretrained(name):
    return f"no pretrained weights shipped for {name!r} (lopt.has_pretrained({name!r}) is False)"
  return None


def has_pretrained_gpt() -> bool:
  """Whether the shipped G.pt model exists (it lives apart from ``lopt.has_pretrained``)."""
  return (lopt.gpt.pretrained_gpt_path() / "manifest.json").exists()


def not_applicable_reason(tx, task, key: jax.Array) -> str | None:
  """Why ``tx`` cannot train ``task``, or None.

  Optimizers tied to one architecture (G.pt) reject other parameter trees in
  ``init`` with a ``ValueError``; that marks the pair not applicable.
  """
  try:
    jax.eval_shape(tx.init, task.init(key))
  except ValueError as e:
    return str(e).splitlines()[0][:300]
  return None


def build_optimizer(spec: str, num_steps: int):
  """``lopt.get(spec)``, passing the horizon ``num_steps`` to learned optimizers.

  G.pt is run as the paper uses it: one sampled update at the first step
  (``max_updates=1``), after which the parameters stay where the sample put them;
  its curve is flat from step 2 and its speedup is that of a one-update optimizer.
  """
  name = spec.partition(":")[0]
  if name in lopt.available_learned():
    return lopt.get(spec, num_steps=int(num_steps))
  if name == "gpt":
    return lopt.get(spec, max_updates=1)
  return lopt.get(spec)


def _subsample(curve: np.ndarray) -> tuple[list[int], list[float]]:
  n = curve.shape[-1]
  idx = np.unique(np.linspace(0, n - 1, min(n, MAX_CURVE_POINTS)).round().astype(int))
  vals = np.where(np.isfinite(curve[..., idx]), curve[..., idx], np.nan)
  return (idx + 1).tolist(), np.round(vals, 6).tolist()


def _finite_or_none(x: float) -> float | None:
  x = float(x)
  return x if np.isfinite(x) else None


def _take(tree: Any, index: Any) -> Any:
  return jax.tree.map(lambda a: a[index], tree)


def _loss_ratio(final_loss: float | None, envelope_final: float) -> float | None:
  """The optimizer's final loss over tuned Adam's (None where not a positive ratio)."""
  if final_loss is None or not envelope_final > 0:
    return None
  return _finite_or_none(final_loss / envelope_final)


def _summarize_runs(runs: Runs, smoothed: np.ndarray, envelope: np.ndarray,
                    test: dict[str, np.ndarray]) -> dict[str, Any]:
  """Per-optimizer numbers from ``(num_seeds, steps)`` runs."""
  mean = smoothed.mean(axis=0)
  speed, lower = protocol.speedup_curve(mean, envelope)
  per_seed = [protocol.speedup_curve(s, envelope)[0][-1] for s in smoothed]
  div = protocol.diverged(runs.losses)
  steps, curve = _subsample(mean)
  return {
      "final_loss": _finite_or_none(mean[-1]),
      "best_loss": _finite_or_none(np.min(mean)),
      "test": {k: _finite_or_none(np.mean(v)) for k, v in test.items()},
      "speedup": float(speed[-1]),
      "speedup_is_lower_bound": bool(lower[-1]),
      "loss_ratio": _loss_ratio(mean[-1], envelope[-1]),
      "speedup_per_seed": [float(s) for s in per_seed],
      "diverged_seeds": int(div.sum()),
      "ms_per_step": runs.ms_per_step,
      "compile_seconds": runs.compile_seconds,
      "curve_steps": steps,
      "curve": curve,
  }


def _cfg_json(cfg: dict[str, Any]) -> dict[str, Any]:
  return {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()}


def _tune_adam(entry: SuiteTask, task, keys: jax.Array, lrs: np.ndarray,
               ema_decay: float | None, eval_key: jax.Array,
               progress: Callable[[str, float], None]) -> dict[str, Any]:
  """Runs Adam's grid on one task; returns the task record without optimizers."""
  adam = adam_grid(task, lrs, entry.steps, keys)
  progress(f"{entry.label}: adam x {len(lrs)} lrs", adam.num_runs)
  if ema_decay is None:
    ema_decay = protocol.auto_ema_decay(entry.steps)
  sm = protocol.ema(adam.losses, ema_decay)                  # (lrs, seeds, steps)
  by_lr = sm.mean(axis=1)
  envelope = protocol.lower_envelope(sm)
  best = int(np.argmin(np.where(np.isfinite(by_lr[:, -1]), by_lr[:, -1], np.inf)))
  best_runs = Runs(adam.losses[best], _take(adam.params, best), adam.seconds,
                   adam.compile_seconds, adam.num_runs)
  adam_test = evaluate_runs(task, best_runs.params, eval_key)
  env_steps, env_curve = _subsample(envelope)
  return {
      "task": entry.task, "cfg": _cfg_json(entry.cfg), "steps": entry.steps,
      "ema_decay": ema_decay,
      "adam": {
          **_summarize_runs(best_runs, sm[best], envelope, adam_test),
          "learning_rates": [float(x) for x in lrs],
          "best_learning_rate": float(lrs[best]),
          "final_loss_by_lr": [_finite_or_none(x) for x in by_lr[:, -1]],
          "diverged_by_lr": protocol.diverged(adam.losses).sum(axis=1).tolist(),
          "curves_by_lr": _subsample(by_lr)[1],
          "envelope": env_curve,
          "envelope_steps": env_steps,
          "envelope_full": [_finite_or_none(x) for x in np.round(envelope, 7)],
      },
      "optimizers": {},
      "not_applicable": {},
  }


def _reusable(entry: SuiteTask, previous: dict[str, Any] | None) -> dict[str, Any] | None:
  """The previous record of this task if it was run with the same task and horizon."""
  if not previous or entry.label not in previous.get("tasks", {}):
    return None
  t = previous["tasks"][entry.label]
  if (t["task"], t["cfg"], t["steps"]) != (entry.task, _cfg_json(entry.cfg), entry.steps):
    return None
  if "envelope_full" not in t["adam"]:
    return None
  return t


def _check_reusable(previous: dict[str, Any], **settings: Any) -> None:
  """Raises ValueError unless ``previous`` was run with the same ``settings``."""
  diff = {k: (previous["config"].get(k), v) for k, v in settings.items()
          if previous["config"].get(k) != v}
  if diff:
    raise ValueError("cannot reuse results run with different settings: " + ", ".join(
        f"{k}: {old!r} there vs {new!r} here" for k, (old, new) in diff.items()))


def _benchmark_task(entry: SuiteTask, optimizers: Sequence[str], keys: jax.Array,
                    lrs: np.ndarray, ema_decay: float | None, eval_key: jax.Array,
                    progress: Callable[[str, float], None],
                    previous: dict[str, Any] | None = None) -> dict[str, Any]:
  task = entry.build()
  if previous is None:
    out = _tune_adam(entry, task, keys, lrs, ema_decay, eval_key, progress)
  else:
    out = {**previous, "optimizers": {}, "not_applicable": {}}
    progress(f"{entry.label}: adam (reused)", len(lrs) * keys.shape[0])
  ema_decay = out["ema_decay"]
  envelope = np.array([np.inf if x is None else x for x in out["adam"]["envelope_full"]])
  if previous is not None:  # results saved before "loss_ratio" existed
    for r in [out["adam"], *previous["optimizers"].values()]:
      if "loss_ratio" not in r:
        r["loss_ratio"] = _loss_ratio(r.get("final_loss"), envelope[-1])
  for spec in optimizers:
    name = spec.partition(":")[0]
    if previous is not None and spec in previous["optimizers"] and ":" not in spec \
        and name not in lopt.available_learned():
      out["optimizers"][spec] = previous["optimizers"][spec]   # deterministic: same seeds
      progress(f"{entry.label}: {spec} (reused)", keys.shape[0])
      continue
    tx = build_optimizer(spec, entry.steps)
    why = not_applicable_reason(tx, task, keys[0])
    if why is not None:
      out["not_applicable"][spec] = why
      print(f"note: {spec} does not apply to {entry.label}: {why}", flush=True)
      progress(f"{entry.label}: {spec} (n/a)", keys.shape[0])
      continue
    runs = train_runs(task, tx, entry.steps, keys)
    test = evaluate_runs(task, runs.params, eval_key)
    out["optimizers"][spec] = _summarize_runs(runs, protocol.ema(runs.losses, ema_decay),
                                              envelope, test)
    progress(f"{entry.label}: {spec}", runs.num_runs)
  return out


def _cost(steps: int, runs: int) -> float:
  """A rough cost of one compiled job, for the ETA: compilation plus run steps."""
  return 1.0 + runs * steps / 5000.0


def _print_progress(done: float, total: float, start: float, what: str) -> None:
  elapsed = time.perf_counter() - start
  eta = max(0.0, elapsed / done * (total - done)) if done else float("nan")
  print(f"[{100 * done / total:5.1f}%] {what:<40s} elapsed {elapsed:6.0f}s  ETA {eta:6.0f}s",
        flush=True)


def run_benchmark(optimizers: Sequence[str], entries: Sequence[SuiteTask], *,
                  num_seeds: int = 3, learning_rates: np.ndarray | None = None,
                  ema_decay: float | None = None, seed: int = 0, verbose: bool = True,
                  reuse: dict[str, Any] | None = None) -> dict[str, Any]:
  """Runs every optimizer and a learning-rate-tuned Adam on every task.

  For each task, Adam runs at every learning rate of ``learning_rates`` (default
  15 points log-spaced over 1e-5..1) and every seed, all vmapped in one compiled
  function; each optimizer runs untuned (its registry defaults) over the same
  seeds. Curves are EMA-smoothed and compared with the lower envelope of Adam's
  seed-averaged curves (see :mod:`benchmarks._protocol`). Optimizers whose
  pretrained weights are missing are skipped with a note.

  Example::

    from benchmarks import parse_tasks, run_benchmark
    results = run_benchmark(["sgd", "lion"], parse_tasks("quadratic_tiny"), num_seeds=2)
    results["summary"]["lion"]["iqm_speedup"]

  Args:
    optimizers: specs for ``lopt.get`` (``"name"`` or ``"name:weights"``).
    entries: the tasks (see :func:`benchmarks.parse_tasks`).
    num_seeds: seeds per optimizer and learning rate.
    learning_rates: Adam's grid.
    ema_decay: smoothing of the loss curves; None picks
      :func:`benchmarks._protocol.auto_ema_decay` of each task's horizon.
    seed: the base seed; run ``i`` of every optimizer uses the same key.
    verbose: print a progress line with ETA after every optimizer.
    reuse: results of an earlier run with the same seeds, grid and smoothing:
      tuned Adam (and hand-designed optimizers) of tasks with the same
      configuration and horizon are taken from it instead of rerun, so adding
      an optimizer to a finished benchmark costs only that optimizer's runs.

  Returns:
    A JSON-serializable dict: ``config``, ``tasks`` (per task: ``adam`` with its
    grid and envelope, ``optimizers`` with final/best/test loss, speedup, ms per
    step, curves), ``summary`` (per optimizer: IQM speedup over tasks and seeds
    with a bootstrap 95 % interval) and ``skipped``.
  """
  lrs = lr_grid() if learning_rates is None else np.asarray(learning_rates, np.float64)
  if reuse is not None:
    _check_reusable(reuse, num_seeds=num_seeds, learning_rates=[float(x) for x in lrs],
                    ema_decay=ema_decay, seed=seed)
    optimizers = list(dict.fromkeys([*reuse["config"]["optimizers"], *optimizers]))
  skipped = {s: r for s in optimizers if (r := unavailable_reason(s)) is not None}
  for spec, why in skipped.items():
    print(f"note: skipping {spec}: {why}", flush=True)
  specs = [s for s in optimizers if s not in skipped]
  keys = jax.random.split(jax.random.key(seed), num_seeds)
  eval_key = jax.random.key(seed + 1)
  total = float(sum(_cost(e.steps, len(lrs) * num_seeds) + len(specs) * _cost(e.steps, num_seeds)
                    for e in entries))
  done, start = [0.0], time.perf_counter()

  results: dict[str, Any] = {"config": {
      "optimizers": list(optimizers), "tasks": [e.label for e in entries],
      "num_seeds": num_seeds, "learning_rates": [float(x) for x in lrs],
      "ema_decay": ema_decay, "seed": seed, "jax": jax.__version__,
      "backend": jax.default_backend(), "device": str(jax.devices()[0].device_kind),
      "cpu_count": __import__("os").cpu_count(), "python": sys.version.split()[0],
      "platform": platform.platform(),
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
  }, "tasks": {}, "skipped": skipped}

  for entry in entries:
    def progress(what, runs, _e=entry):
      done[0] += _cost(_e.steps, runs)
      if verbose:
        _print_progress(done[0], total, start, what)
    results["tasks"][entry.label] = _benchmark_task(entry, specs, keys, lrs, ema_decay,
                                                    eval_key, progress, _reusable(entry, reuse))
  results["summary"] = summarize(results)
  results["config"]["wall_seconds"] = time.perf_counter() - start
  return results


def beats_tuned_adam(row: dict[str, Any]) -> bool:
  """Whether one task's result is faster than tuned Adam.

  True when tuned Adam's envelope needs more steps than the optimizer took
  (speedup > 1), or never reaches the optimizer's final loss within the horizon
  (a lower-bound speedup of at least 1: the optimizer ends below every loss any
  Adam learning rate reached).
  """
  return bool(row["speedup"] > 1.0 or (row["speedup_is_lower_bound"] and row["speedup"] >= 1.0))


def summarize(results: dict[str, Any], *, num_bootstrap: int = 2000) -> dict[str, Any]:
  """IQM speedup over (task, seed) with a stratified bootstrap 95 % interval, per optimizer."""
  summary = {}
  labels = list(results["tasks"])
  names: list[str] = []
  if labels:
    names = ["adam (tuned)"] + sorted(
        {n for t in labels for n in results["tasks"][t]["optimizers"]},
        key=results["config"]["optimizers"].index)
  for name in names:
    if name == "adam (tuned)":
      rows = [results["tasks"][t]["adam"] for t in labels]
    else:
      rows = [results["tasks"][t]["optimizers"][name] for t in labels
              if name in results["tasks"][t]["optimizers"]]
    scores = np.array([r["speedup_per_seed"] for r in rows])
    point, lo, hi = protocol.bootstrap_ci(scores, num_samples=num_bootstrap)
    summary[name] = {
        "iqm_speedup": point, "ci95": [lo, hi], "num_tasks": len(rows),
        "median_task_speedup": float(np.median([r["speedup"] for r in rows])),
        "tasks_faster_than_adam": int(sum(beats_tuned_adam(r) for r in rows)),
        "diverged_runs": int(sum(r["diverged_seeds"] for r in rows)),
    }
  return summary
