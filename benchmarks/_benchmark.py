"""Benchmark optimizers against tuned baselines that run longer: the library behind
``benchmarks.run``.

Per task, each tuned baseline (Adam, momentum, ...) runs every learning rate of
its grid for ``baseline_horizon_mult`` times the horizon, so an optimizer that
is faster than tuned Adam shows a speedup above 1 (up to that factor). Every
optimizer under test runs the horizon at its given settings. Speedups are
measured in steps (training loss), in test loss (on a fixed step grid) and in
wall-clock time (per-step times measured one run at a time, interleaved); see
:mod:`benchmarks._protocol`.
"""

from __future__ import annotations

import datetime
import os
import platform
import sys
import time
import warnings
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np

import lopt
from benchmarks import _protocol as protocol
from benchmarks._rows import (
  Reference,
  add_wallclock,
  finite_or_none,
  nulls,
  sig_round,
  subsample,
  task_row,
)
from benchmarks._runs import eval_every, grid_runs, time_per_step, train_runs
from benchmarks._specs import (
  OptimizerSpec,
  build_optimizer,
  parse_spec,
  tunable,
  tune_grid,
  unavailable_reason,
  weights_digest,
)
from benchmarks._suites import SuiteTask
from benchmarks._summary import meta_training_gain, summarize

__all__ = ["PROTOCOL_VERSION", "REFERENCE", "not_applicable_reason", "run_benchmark", "tuned_label"]

#: The tuned baseline every speedup is measured against.
REFERENCE = "adam"
#: Version of the results format and protocol; ``reuse`` refuses other versions.
PROTOCOL_VERSION = 2


def tuned_label(name: str) -> str:
  """The row label of a tuned baseline, e.g. ``"adam (tuned)"``."""
  return f"{name} (tuned)"


def not_applicable_reason(tx, task, key: jax.Array) -> str | None:
  """Why ``tx`` cannot train ``task``, or None.

  Optimizers tied to one architecture (G.pt) reject other parameter trees in
  ``init`` with a ``ValueError``; that marks the pair not applicable. (G.pt also
  refuses another task of the same shapes when built for it:
  :class:`lopt.gpt.TaskMismatchError` from ``build_optimizer(..., task=task)``.)
  """
  try:
    jax.eval_shape(tx.init, task.init(key))
  except ValueError as e:
    return str(e).splitlines()[0][:300]
  return None


def _cfg_json(cfg: Mapping[str, Any]) -> dict[str, Any]:
  return {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()}


def _tune(task, name: str, lrs: np.ndarray, entry: SuiteTask, mult: int, every: int,
          keys: jax.Array, eval_key: jax.Array, ema_decay: float
          ) -> tuple[dict[str, Any], tuple[np.ndarray, dict[str, np.ndarray]]]:
  """Runs ``name``'s learning-rate grid for ``mult`` times the horizon.

  Returns:
    ``(record, (losses, test))``: the baseline record, and the training losses
    up to the horizon and test metrics of the learning rate best at the horizon.
  """
  runs = grid_runs(task, lambda lr: lopt.get(name, learning_rate=lr), lrs, mult * entry.steps,
                   keys, every=every, eval_key=eval_key)
  sm = protocol.ema(runs.losses, ema_decay)                      # (lrs, seeds, steps)
  by_lr = sm.mean(axis=1)
  at_t = by_lr[:, entry.steps - 1]
  best = int(np.argmin(np.where(np.isfinite(at_t), at_t, np.inf)))
  test_by_lr = runs.test["loss"].mean(axis=1)                    # (lrs, evals)
  envelope = protocol.lower_envelope(sm)
  env_steps, env_curve = subsample(envelope)
  record = {
      "learning_rates": [float(x) for x in lrs],
      "best_learning_rate": float(lrs[best]),
      "final_loss_by_lr": [finite_or_none(x) for x in at_t],
      "diverged_by_lr": protocol.diverged(runs.losses[:, :, :entry.steps]).sum(axis=1).tolist(),
      "curves_by_lr": subsample(by_lr)[1],
      "envelope": env_curve,
      "envelope_steps": env_steps,
      "envelope_full": nulls(sig_round(envelope, 9)),   # speedups use it
      "test_steps": runs.test_steps.tolist(),
      "test_envelope": nulls(sig_round(np.min(np.where(np.isnan(test_by_lr), np.inf, test_by_lr),
                                          axis=0), 9)),
      "test_curves_by_lr": nulls(sig_round(test_by_lr)),
      "seconds": runs.seconds,
      "compile_seconds": runs.compile_seconds,
  }
  return record, (runs.losses[best, :, :entry.steps], {k: v[best] for k, v in runs.test.items()})


def _saved_tasks(previous: dict[str, Any] | None) -> dict[str, Any]:
  """Every task record of a results file: its tasks, and the ``"pending_tasks"`` a run cut
  off part-way had not reached yet (see :func:`run_benchmark`)."""
  if not previous:
    return {}
  return {**previous.get("pending_tasks", {}), **previous.get("tasks", {})}


def _reusable(entry: SuiteTask, previous: dict[str, Any] | None) -> dict[str, Any] | None:
  """The previous record of this task if it was run with the same task and horizon."""
  t = _saved_tasks(previous).get(entry.label)
  if t is None:
    return None
  if (t["task"], t["cfg"], t["steps"]) != (entry.task_name, _cfg_json(entry.config),
                                           entry.steps):
    return None
  return t


def _check_reusable(previous: dict[str, Any], **settings: Any) -> None:
  """Raises ValueError unless ``previous`` was run with the same protocol and ``settings``."""
  version = previous.get("config", {}).get("protocol_version", 1)
  if version != PROTOCOL_VERSION:
    raise ValueError(f"cannot reuse results of protocol version {version} (this is version "
                     f"{PROTOCOL_VERSION}, with longer baselines and test/wall-clock "
                     f"speedups): rerun the baselines without --reuse")
  diff = {k: (previous["config"].get(k), v) for k, v in settings.items()
          if previous["config"].get(k) != v}
  if diff:
    raise ValueError("cannot reuse results run with different settings: " + ", ".join(
        f"{k}: {old!r} there vs {new!r} here" for k, (old, new) in diff.items()))


def _benchmark_task(entry: SuiteTask, specs: Sequence[OptimizerSpec], tune: Sequence[str],
                    grids: Mapping[str, np.ndarray], cfg: dict[str, Any], keys: jax.Array,
                    eval_key: jax.Array, progress: Callable[[str, float], None],
                    previous: dict[str, Any] | None) -> dict[str, Any]:
  task = entry.build()
  horizon, mult = entry.steps, cfg["baseline_horizon_mult"]
  every = eval_every(horizon, cfg["eval_points"])
  ema_decay = (protocol.auto_ema_decay(horizon) if cfg["ema_decay"] is None
               else cfg["ema_decay"])
  out: dict[str, Any] = {
      "task": entry.task_name, "cfg": _cfg_json(entry.config), "steps": horizon,
      "baseline_steps": mult * horizon, "eval_every": every, "ema_decay": ema_decay,
      "baselines": {}, "optimizers": {}, "not_applicable": {}}
  prev_base = previous["baselines"] if previous else {}
  best_runs: dict[str, tuple[np.ndarray, dict]] = {}
  for name in tune:
    if name in prev_base:
      out["baselines"][name] = prev_base[name]
      progress(f"{entry.label}: {name} grid (reused)", len(grids[name]) * keys.shape[0] * mult)
      continue
    out["baselines"][name], best_runs[name] = _tune(task, name, grids[name], entry, mult, every,
                                                    keys, eval_key, ema_decay)
    progress(f"{entry.label}: {name} x {len(grids[name])} lrs, {mult}x steps",
             len(grids[name]) * keys.shape[0] * mult)
  ref = Reference(out["baselines"][REFERENCE])

  rows: dict[str, dict[str, Any]] = {}
  to_time: dict[str, Any] = {}
  for name in tune:
    label = tuned_label(name)
    b = out["baselines"][name]
    if name not in best_runs:                        # reused: its row too
      rows[label] = previous["optimizers"][label]
    else:
      losses, test = best_runs[name]
      rows[label] = {**task_row(losses, test, np.asarray(b["test_steps"]), horizon, ema_decay, ref),
                     "tuned": True, "settings": _tuned_settings(b)}
      if name != REFERENCE:   # the reference's own row uses the reference's time
        to_time[label] = lopt.get(name, learning_rate=b["best_learning_rate"])
  for spec in specs:
    old = (previous or {}).get("optimizers", {}).get(spec.text)
    if old is not None and old.get("weights_digest") == weights_digest(spec):
      rows[spec.text] = old      # deterministic given the seeds and (unchanged) weights
      progress(f"{entry.label}: {spec.text} (reused)", keys.shape[0])
      continue
    try:
      tx = build_optimizer(spec, horizon, task=task)
      why = not_applicable_reason(tx, task, keys[0])
    except lopt.gpt.TaskMismatchError as e:   # G.pt trained for another task
      why = str(e).splitlines()[0][:300]
    if why is not None:
      out["not_applicable"][spec.text] = why
      print(f"note: {spec.text} does not apply to {entry.label}: {why}", flush=True)
      progress(f"{entry.label}: {spec.text} (n/a)", keys.shape[0])
      continue
    runs = train_runs(task, tx, horizon, keys, every=every, eval_key=eval_key)
    rows[spec.text] = {**task_row(runs.losses, runs.test, runs.test_steps, horizon, ema_decay, ref),
                       "tuned": False, "settings": _settings(spec),
                       "weights_digest": weights_digest(spec),
                       "compile_seconds": runs.compile_seconds}
    to_time[spec.text] = tx
    progress(f"{entry.label}: {spec.text}", keys.shape[0])

  if to_time or REFERENCE in best_runs:   # the reference is timed in the same rounds
    ref_tx = lopt.get(REFERENCE, learning_rate=out["baselines"][REFERENCE]["best_learning_rate"])
    secs = time_per_step(task, {"__reference__": ref_tx, **to_time}, keys[0],
                         rounds=cfg["time_rounds"])
    for label in to_time:
      add_wallclock(rows[label], secs[label], secs["__reference__"])
    if REFERENCE in best_runs:
      add_wallclock(rows[tuned_label(REFERENCE)], secs["__reference__"], secs["__reference__"])
    progress(f"{entry.label}: per-step times", len(to_time))
  out["optimizers"] = rows
  return out


def _tuned_settings(b: dict[str, Any]) -> str:
  lrs = b["learning_rates"]
  return (f"tuned: learning rate {b['best_learning_rate']:.3g} of {len(lrs)} "
          f"({lrs[0]:.0e}..{lrs[-1]:.0e})")


def _settings(spec: OptimizerSpec) -> str:
  parts = [f"weights {spec.weights}"] if spec.weights else []
  parts += [f"{k}={v!r}" for k, v in spec.kwargs.items()]
  return ", ".join(parts) if parts else "defaults"


def _cost(steps: int, runs: int) -> float:
  """A rough cost of one compiled job, for the ETA: compilation plus run steps."""
  return 1.0 + runs * steps / 5000.0


def _print_progress(done: float, total: float, start: float, what: str) -> None:
  elapsed = time.perf_counter() - start
  eta = max(0.0, elapsed / done * (total - done)) if done else float("nan")
  print(f"[{100 * min(done, total) / total:5.1f}%] {what:<46s} elapsed {elapsed:6.0f}s  "
        f"ETA {eta:6.0f}s", flush=True)


def _grids(tune: Sequence[str], learning_rates: Any, lrs_per_decade: int
           ) -> dict[str, np.ndarray]:
  if learning_rates is None:
    return {n: tune_grid(n, lrs_per_decade) for n in tune}
  if isinstance(learning_rates, Mapping):
    return {n: (np.asarray(learning_rates[n], np.float64) if n in learning_rates
                else tune_grid(n, lrs_per_decade)) for n in tune}
  return {n: np.asarray(learning_rates, np.float64) for n in tune}


def run_benchmark(optimizers: Sequence[str], entries: Sequence[SuiteTask], *,
                  tune: Sequence[str] = ("adam", "momentum"), num_seeds: int = 3,
                  baseline_horizon_mult: int = 4,
                  learning_rates: np.ndarray | Mapping[str, np.ndarray] | None = None,
                  lrs_per_decade: int = 3, ema_decay: float | None = None,
                  eval_points: int = 25, time_rounds: int = 7, seed: int = 0,
                  verbose: bool = True, reuse: dict[str, Any] | None = None,
                  on_task_done: Callable[[dict[str, Any]], None] | None = None
                  ) -> dict[str, Any]:
  """Runs every optimizer and the tuned baselines on every task.

  Per task, each name in ``tune`` (Adam always among them: it is the
  reference) runs every learning rate of its grid and every seed, vmapped in one
  compiled function, for ``baseline_horizon_mult`` times the task's horizon;
  its row ("adam (tuned)") is the learning rate best at the horizon. Every spec
  in ``optimizers`` runs the horizon at its given settings, on the same seeds
  (same initializations and batches). All runs record the test metrics on the
  same step grid. Then each new row's per-step time is measured against Adam's,
  one run at a time and interleaved. Optimizers whose shipped weights are
  missing are skipped with a note; every spec is checked before any run.

  Example::

    from benchmarks import parse_tasks, run_benchmark
    results = run_benchmark(["sgd", "lion(learning_rate=3e-4)"], parse_tasks("smoke"),
                            num_seeds=2)
    results["summary"]["lion(learning_rate=3e-4)"]["steps"]   # IQM speedup, 95 % CI

  Args:
    optimizers: specs (``"name"``, ``"name:weights"``, ``"name(k=v, ...)"``).
    entries: the tasks (see :func:`benchmarks.parse_tasks`).
    tune: hand-designed optimizers tuned over their learning-rate grids.
    num_seeds: seeds per optimizer and learning rate.
    baseline_horizon_mult: how many times the horizon the tuned baselines run,
      the largest step speedup that can be measured.
    learning_rates: one grid for every tuned optimizer, or a dict per name;
      None uses :data:`benchmarks.TUNE_RANGES` at ``lrs_per_decade``.
    lrs_per_decade: grid density of the default grids.
    ema_decay: smoothing of training-loss curves; None picks
      :func:`benchmarks.auto_ema_decay` of each task's horizon.
    eval_points: test metrics are measured at about this many steps of the
      horizon (and on the same grid through the baselines' longer runs).
    time_rounds: interleaved timing rounds per optimizer.
    seed: the base seed; run ``i`` of every optimizer uses the same key.
    verbose: print a progress line with ETA after every job.
    reuse: results of an earlier run with the same settings: the baselines of
      tasks with the same configuration and horizon, and the rows of the same
      specs (learned ones only while their weights are unchanged), are taken
      from it, so adding an optimizer costs only its own runs, and a run cut
      off part-way resumes from the results it saved.
    on_task_done: called with the results so far (with their summary) after
      each task, e.g. to save them, so a long run can be resumed; with ``reuse``,
      its records of the tasks not reached yet ride along as ``"pending_tasks"``,
      so a run cut off part-way loses nothing the reused file held.

  Returns:
    A JSON-serializable dict: ``config``, ``tasks`` (per task: ``baselines``
    with each tuned optimizer's grid and envelopes, ``optimizers`` with one row
    per optimizer: speedups in steps, test loss and wall-clock, with per-seed
    values, final and test metrics, curves), ``summary`` (per row: IQM of each
    speedup over tasks and seeds with a stratified bootstrap 95 % interval),
    ``meta_training`` (pretrained over fresh ratios) and ``skipped``.

  Raises:
    KeyError, ValueError, FileNotFoundError: a bad spec, tuned name, weights
      path or setting, before anything runs.
  """
  if baseline_horizon_mult < 1:
    raise ValueError(f"baseline_horizon_mult must be >= 1, got {baseline_horizon_mult}")
  if num_seeds < 1 or eval_points < 1 or time_rounds < 1:
    raise ValueError("num_seeds, eval_points and time_rounds must be >= 1")
  tune = list(dict.fromkeys([REFERENCE, *tune]))
  for name in tune:
    if not tunable(name):
      tune_grid(name)  # raises with the valid names
  grids = _grids(tune, learning_rates, lrs_per_decade)
  for name, g in grids.items():
    if g.ndim != 1 or g.size < 1 or not np.all(np.isfinite(g) & (g > 0)):
      raise ValueError(f"learning rates of {name!r} must be positive and finite, got {g}")
  settings = {"num_seeds": num_seeds, "seed": seed, "ema_decay": ema_decay,
              "baseline_horizon_mult": baseline_horizon_mult, "eval_points": eval_points}
  if reuse is not None:
    _check_reusable(reuse, **settings)
    optimizers = list(dict.fromkeys([*reuse["config"]["optimizers"], *optimizers]))
  specs = [parse_spec(s) for s in optimizers]
  skipped = {s.text: r for s in specs if (r := unavailable_reason(s)) is not None}
  specs = [s for s in specs if s.text not in skipped]
  for s in specs:  # build every optimizer once, so bad arguments fail before any run
    try:
      with warnings.catch_warnings():  # no task here: G.pt's task is checked per task
        warnings.simplefilter("ignore", lopt.gpt.GPTWarning)
        build_optimizer(s, max(2, min(e.steps for e in entries) if entries else 2))
    except TypeError as e:
      raise ValueError(f"optimizer spec {s.text!r} cannot be built: {e}") from None
  for spec, why in skipped.items():
    print(f"note: skipping {spec}: {why}", flush=True)
  if reuse is not None:
    for name in tune:
      old = reuse["config"].get("learning_rates", {}).get(name)
      if old is not None and old != [float(x) for x in grids[name]]:
        raise ValueError(f"cannot reuse results with a different learning-rate grid for {name!r}")

  keys = jax.random.split(jax.random.key(seed), num_seeds)
  eval_key = jax.random.key(seed + 1)
  total = float(sum(
      sum(_cost(baseline_horizon_mult * e.steps, len(grids[n]) * num_seeds) for n in tune)
      + len(specs) * _cost(e.steps, num_seeds) + 1.0 for e in entries))
  done, start = [0.0], time.perf_counter()
  cfg = {**settings, "time_rounds": time_rounds}
  results: dict[str, Any] = {"config": {
      "protocol_version": PROTOCOL_VERSION, "optimizers": [s.text for s in specs] + list(skipped),
      "tune": tune, "reference": REFERENCE, "tasks": [e.label for e in entries],
      **cfg, "learning_rates": {n: [float(x) for x in g] for n, g in grids.items()},
      "jax": jax.__version__, "backend": jax.default_backend(),
      "device": str(jax.devices()[0].device_kind), "cpu_count": os.cpu_count(),
      "python": sys.version.split()[0], "platform": platform.platform(),
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
  }, "tasks": {}, "skipped": skipped}

  for entry in entries:
    def progress(what, runs, _e=entry):
      done[0] += _cost(_e.steps, runs)
      if verbose:
        _print_progress(done[0], total, start, what)
    results["tasks"][entry.label] = _benchmark_task(
        entry, specs, tune, grids, cfg, keys, eval_key, progress, _reusable(entry, reuse))
    results["summary"] = summarize(results)
    results["meta_training"] = meta_training_gain(results)
    results["config"]["wall_seconds"] = time.perf_counter() - start
    if on_task_done is not None:
      on_task_done(_with_pending(results, reuse))
  return results


def _with_pending(results: dict[str, Any], reuse: dict[str, Any] | None) -> dict[str, Any]:
  """``results`` plus ``reuse``'s records of the tasks ``results`` has not reached yet."""
  pending = {k: v for k, v in _saved_tasks(reuse).items() if k not in results["tasks"]}
  return {**results, "pending_tasks": pending} if pending else results
