r"""Benchmark optimizers against a learning-rate-tuned Adam on a task suite.

Usage::

  python -m benchmarks.run --optimizers=sgd,momentum,lion,mlp_lopt:pretrained \
      --tasks=heldout --seeds=3 --out=bench_out

For each task Adam is tuned over a log grid of learning rates (15 points,
1e-5..1 by default, every seed, vmapped in one compiled function); every
requested optimizer runs untuned over the same seeds. Writes
``<out>/results.json``, ``<out>/results.md`` and PNG plots, and prints the
markdown table. Optimizers whose pretrained weights are missing are skipped
with a note; ``--reuse=<results.json>`` adds optimizers to an earlier run
without re-tuning Adam. See docs/results.md for a full run.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

from absl import app, flags, logging

from benchmarks._benchmark import run_benchmark
from benchmarks._report import markdown, save_results
from benchmarks._runs import lr_grid
from benchmarks._suites import parse_tasks

_FLAG_ORDER = ("optimizers", "tasks", "seeds", "steps", "num_lrs", "ema", "reuse", "out")


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
  """Defines this command's flags on ``fv``.

  Called when the module runs as a script (not on import), so other modules'
  flags of the same names can coexist in one process (tests, notebooks).
  """
  flags.DEFINE_list(
      "optimizers", ["sgd", "momentum", "adam", "lion"],
      "Optimizers to compare with tuned Adam: lopt.get specs, 'name' or 'name:weights'.",
      flag_values=fv)
  flags.DEFINE_string(
      "tasks", "heldout", "A suite (heldout, validation, embedded, smoke) or a comma list of suite "
      "labels or registry task names.", flag_values=fv)
  flags.DEFINE_string("out", "bench_out", "Output directory.", flag_values=fv)
  flags.DEFINE_integer("seeds", 3, "Seeds per optimizer and learning rate.", lower_bound=1,
                       flag_values=fv)
  flags.DEFINE_integer("steps", None, "Override every task's horizon.", lower_bound=2,
                       flag_values=fv)
  flags.DEFINE_integer("num_lrs", 15, "Points of Adam's learning-rate grid.", lower_bound=1,
                       flag_values=fv)
  flags.DEFINE_float("lr_min", 1e-5, "Smallest Adam learning rate.", flag_values=fv)
  flags.DEFINE_float("lr_max", 1.0, "Largest Adam learning rate.", flag_values=fv)
  flags.DEFINE_float("ema", None, "EMA decay used to smooth loss curves (default: a window "
                     "of 2 % of each task's horizon, at most 0.95).", flag_values=fv)
  flags.DEFINE_integer("seed", 0, "Base seed.", flag_values=fv)
  flags.DEFINE_string(
      "reuse", None, "results.json of an earlier run with the same seeds and grid: its tuned "
      "Adam and hand-designed optimizers are reused, the requested optimizers are added.",
      flag_values=fv)


def run_from_flags(fv: flags.FlagValues = flags.FLAGS) -> dict[str, Any]:
  """Runs the benchmark configured by the parsed flags ``fv``; writes and prints results."""
  entries = parse_tasks(fv.tasks, steps=fv.steps)
  reuse = json.loads(pathlib.Path(fv.reuse).read_text()) if fv.reuse else None
  results = run_benchmark(
      fv.optimizers, entries, num_seeds=fv.seeds,
      learning_rates=lr_grid(fv.num_lrs, fv.lr_min, fv.lr_max),
      ema_decay=fv.ema, seed=fv.seed, reuse=reuse)
  results["config"]["command"] = "python -m benchmarks.run " + " ".join(
      fv[f].serialize() for f in _FLAG_ORDER if fv[f].present)
  paths = save_results(results, fv.out)
  print()
  print(markdown(results))
  print(f"wrote {paths['json']}, {paths['markdown']} and {len(paths['plots'])} plots "
        f"in {fv.out}/")
  return results


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:  # keep orbax's and jax's INFO lines out of the table
    logging.set_verbosity(logging.WARNING)
  run_from_flags(flags.FLAGS)


if __name__ == "__main__":
  define_flags()
  app.run(main)
