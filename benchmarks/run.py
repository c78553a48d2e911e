r"""Benchmark optimizers against a learning-rate-tuned Adam on a task suite.

Usage::

  python -m benchmarks.run --optimizers=sgd,momentum,lion,mlp_lopt:pretrained \
      --tasks=heldout --seeds=3 --out=bench_out

For each task Adam is tuned over a log grid of learning rates (15 points,
1e-5..1 by default, every seed, vmapped in one compiled function); every
requested optimizer runs untuned over the same seeds. Writes
``<out>/results.json``, ``<out>/results.md`` and PNG plots, and prints the
markdown table. Optimizers whose pretrained weights are missing are skipped
with a note. See docs/results.md for a full run.
"""

from __future__ import annotations

import json
import pathlib

from absl import app, flags

from benchmarks._benchmark import run_benchmark
from benchmarks._report import markdown, save_results
from benchmarks._runs import lr_grid
from benchmarks._suites import parse_tasks

_OPTIMIZERS = flags.DEFINE_list(
    "optimizers", ["sgd", "momentum", "adam", "lion"],
    "Optimizers to compare with tuned Adam: lopt.get specs, 'name' or 'name:weights'.")
_TASKS = flags.DEFINE_string(
    "tasks", "heldout", "A suite (heldout, embedded, smoke) or a comma list of suite "
    "labels or registry task names.")
_OUT = flags.DEFINE_string("out", "bench_out", "Output directory.")
_SEEDS = flags.DEFINE_integer("seeds", 3, "Seeds per optimizer and learning rate.", lower_bound=1)
_STEPS = flags.DEFINE_integer("steps", None, "Override every task's horizon.", lower_bound=2)
_NUM_LRS = flags.DEFINE_integer("num_lrs", 15, "Points of Adam's learning-rate grid.",
                                lower_bound=1)
_LR_MIN = flags.DEFINE_float("lr_min", 1e-5, "Smallest Adam learning rate.")
_LR_MAX = flags.DEFINE_float("lr_max", 1.0, "Largest Adam learning rate.")
_EMA = flags.DEFINE_float("ema", None, "EMA decay used to smooth loss curves (default: "
                          "a window of 2 % of each task's horizon, at most 0.95).")
_SEED = flags.DEFINE_integer("seed", 0, "Base seed.")
_REUSE = flags.DEFINE_string(
    "reuse", None, "results.json of an earlier run with the same seeds and grid: its tuned "
    "Adam and hand-designed optimizers are reused, the requested optimizers are added.")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  entries = parse_tasks(_TASKS.value, steps=_STEPS.value)
  reuse = None
  if _REUSE.value:
    reuse = json.loads(pathlib.Path(_REUSE.value).read_text())
  results = run_benchmark(
      _OPTIMIZERS.value, entries, num_seeds=_SEEDS.value,
      learning_rates=lr_grid(_NUM_LRS.value, _LR_MIN.value, _LR_MAX.value),
      ema_decay=_EMA.value, seed=_SEED.value, reuse=reuse)
  results["config"]["command"] = "python -m benchmarks.run " + " ".join(
      f"--{f}={flags.FLAGS[f].serialize().split('=', 1)[1]}"
      for f in ("optimizers", "tasks", "seeds", "steps", "num_lrs", "ema", "reuse", "out")
      if flags.FLAGS[f].present)
  paths = save_results(results, _OUT.value)
  print()
  print(markdown(results))
  print(f"wrote {paths['json']}, {paths['markdown']} and {len(paths['plots'])} plots "
        f"in {_OUT.value}/")


if __name__ == "__main__":
  app.run(main)
