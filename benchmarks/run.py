r"""Benchmark optimizers against tuned baselines that run longer, on a task suite.

Usage::

  python -m benchmarks.run --tasks=heldout --seeds=3 --out=bench_out \
      --optimizers="sgd(learning_rate=0.1),celo2_lopt:pretrained,celo2_lopt:fresh"

For each task, the optimizers in ``--tune`` (default adam and momentum) are
tuned over their own learning-rate grids (``benchmarks.TUNE_RANGES``, 3 rates
per decade; every seed; vmapped in one compiled function) and run
``--baseline_horizon_mult`` (4) times the horizon, so speedups above 1 are
measured. Every optimizer in ``--optimizers`` runs the horizon at the settings
its spec gives (``name``, ``name:weights``, ``name(key=value, ...)``). Each row
gets its speedup over tuned Adam in steps, test loss and wall-clock, and the
summary their IQMs with bootstrap 95 % intervals; ``name:pretrained`` next to
``name:fresh`` also gives "did meta-training help". Writes
``<out>/results.json``, ``<out>/results.md`` and PNG plots, and prints the
markdown. ``--reuse=<results.json>`` adds optimizers to an earlier run without
re-running its baselines; results.json is rewritten after every task, so a run
cut off part-way resumes with ``--reuse=<out>/results.json``. See docs/results.md for a full run.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

from absl import app, flags

from benchmarks._benchmark import run_benchmark
from benchmarks._cli import check, make_main
from benchmarks._report import markdown, save_results, write_json
from benchmarks._runs import lr_grid
from benchmarks._specs import parse_spec, split_specs, tune_grid, unavailable_reason
from benchmarks._suites import parse_tasks

_FLAG_ORDER = ("optimizers", "tune", "tasks", "seeds", "steps", "baseline_horizon_mult",
               "lrs_per_decade", "num_lrs", "lr_min", "lr_max", "ema", "eval_points", "reuse",
               "out")


def _check_reuse(path: str | None) -> bool:
  if path is None:
    return True
  p = pathlib.Path(path)
  if not p.is_file():
    raise flags.ValidationError(f"--reuse: no such file {path!r}")
  try:
    json.loads(p.read_text())
  except json.JSONDecodeError as e:
    raise flags.ValidationError(f"--reuse: {path} is not valid JSON ({e})") from None
  return True


def _check_grid(d: dict[str, Any]) -> bool:
  given = [v is not None for v in d.values()]
  if not any(given):
    return True
  return all(given) and check(lambda x: lr_grid(x["num_lrs"], x["lr_min"], x["lr_max"]), d)


def _check_specs(text: str) -> None:
  for s in split_specs(text):
    unavailable_reason(parse_spec(s))   # raises for an unknown name or a missing weights path


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
  """Defines this command's flags (with validators) on ``fv``.

  Called when the module runs as a script (not on import), so other modules'
  flags of the same names can coexist in one process (tests, notebooks).
  """
  flags.DEFINE_string(
      "optimizers", "sgd,lion,muon",
      "Comma list of optimizer specs run at the settings given: 'name', 'name:weights' "
      "(pretrained, fresh or a path) or 'name(key=value, ...)'.", flag_values=fv)
  flags.DEFINE_list("tune", ["adam", "momentum"],
                    "Hand-designed optimizers tuned over their own learning-rate grids (adam "
                    "is always tuned: it is the reference).", flag_values=fv)
  flags.DEFINE_string(
      "tasks", "heldout", "A suite (heldout, heldout_quick, validation, embedded, smoke) or a "
      "comma list of suite labels or registry task names.", flag_values=fv)
  flags.DEFINE_string("out", "bench_out", "Output directory.", flag_values=fv)
  flags.DEFINE_integer("seeds", 3, "Seeds per optimizer and learning rate.", lower_bound=1,
                       flag_values=fv)
  flags.DEFINE_integer("steps", None, "Override every task's horizon.", lower_bound=2,
                       flag_values=fv)
  flags.DEFINE_integer("baseline_horizon_mult", 4, "Tuned baselines run this many times the "
                       "horizon: the largest measurable step speedup.", lower_bound=1,
                       flag_values=fv)
  flags.DEFINE_integer("lrs_per_decade", 3, "Density of the default learning-rate grids.",
                       lower_bound=1, flag_values=fv)
  flags.DEFINE_integer("num_lrs", None, "With --lr_min/--lr_max: one explicit grid for every "
                       "tuned optimizer instead of their own ranges.", lower_bound=1,
                       flag_values=fv)
  flags.DEFINE_float("lr_min", None, "Smallest learning rate of the explicit grid.",
                     lower_bound=0.0, flag_values=fv)
  flags.DEFINE_float("lr_max", None, "Largest learning rate of the explicit grid.",
                     lower_bound=0.0, flag_values=fv)
  flags.DEFINE_float("ema", None, "EMA decay in [0, 1) smoothing training-loss curves (default: "
                     "a window of 2 % of each task's horizon, at most 0.95).", lower_bound=0.0,
                     upper_bound=0.999999, flag_values=fv)
  flags.DEFINE_integer("eval_points", 25, "Test metrics are measured at about this many steps "
                       "per horizon.", lower_bound=1, flag_values=fv)
  flags.DEFINE_integer("time_rounds", 7, "Interleaved timing rounds per optimizer.",
                       lower_bound=1, flag_values=fv)
  flags.DEFINE_integer("seed", 0, "Base seed.", lower_bound=0, flag_values=fv)
  flags.DEFINE_string(
      "reuse", None, "results.json of an earlier run with the same settings: its tuned "
      "baselines and hand-designed rows are reused, the requested optimizers are added.",
      flag_values=fv)
  flags.register_validator(
      "optimizers", lambda v: check(_check_specs, v),
      message="bad --optimizers", flag_values=fv)
  flags.register_validator("tune", lambda v: check(lambda x: [tune_grid(n) for n in x], v),
                           message="bad --tune", flag_values=fv)
  flags.register_validator("tasks", lambda v: check(parse_tasks, v), message="bad --tasks",
                           flag_values=fv)
  flags.register_validator("reuse", _check_reuse, message="bad --reuse", flag_values=fv)
  flags.register_multi_flags_validator(
      ["num_lrs", "lr_min", "lr_max"], _check_grid,
      message="give all of --num_lrs, --lr_min and --lr_max (0 < lr_min <= lr_max), or none",
      flag_values=fv)


def run_from_flags(fv: flags.FlagValues = flags.FLAGS) -> dict[str, Any]:
  """Runs the benchmark configured by the parsed flags ``fv``; writes and prints results."""
  entries = parse_tasks(fv.tasks, steps=fv.steps)
  reuse = json.loads(pathlib.Path(fv.reuse).read_text()) if fv.reuse else None
  grid = lr_grid(fv.num_lrs, fv.lr_min, fv.lr_max) if fv.num_lrs is not None else None
  results = run_benchmark(
      split_specs(fv.optimizers), entries, tune=fv.tune, num_seeds=fv.seeds,
      baseline_horizon_mult=fv.baseline_horizon_mult, learning_rates=grid,
      lrs_per_decade=fv.lrs_per_decade, ema_decay=fv.ema, eval_points=fv.eval_points,
      time_rounds=fv.time_rounds, seed=fv.seed, reuse=reuse,
      on_task_done=lambda r: write_json(r, pathlib.Path(fv.out) / "results.json"))
  results["config"]["command"] = "python -m benchmarks.run " + " ".join(
      fv[f].serialize() for f in _FLAG_ORDER if fv[f].present)
  paths = save_results(results, fv.out)
  print()
  print(markdown(results))
  print(f"wrote {paths['json']}, {paths['markdown']} and {len(paths['plots'])} plots "
        f"in {fv.out}/")
  return results


main = make_main(run_from_flags, (KeyError, ValueError, FileNotFoundError))


if __name__ == "__main__":
  define_flags()
  app.run(main)
