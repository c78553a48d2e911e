"""``make demo``: hand-designed and shipped learned optimizers vs tuned Adam, in minutes.

Runs :func:`benchmarks.run_benchmark` on the ``embedded`` suite (three tasks whose
data ships with the installed packages, so it works offline on a fresh clone):
Adam and momentum tuned over their learning-rate grids (2 rates per decade here,
3 in ``benchmarks.run``) for 4x the horizon, a few hand-designed optimizers at
their default settings, and every learned optimizer with shipped weights next to
its untrained init (``:fresh``). Prints the table and writes PNG plots to
``demo_out/``.

Usage::

  python -m benchmarks.demo [--out=demo_out] [--seeds=2] [--steps=300]
"""

from __future__ import annotations

import time
import warnings

from absl import app, flags, logging

import lopt
from benchmarks._benchmark import run_benchmark
from benchmarks._report import TUNED_NOTE, markdown, save_results
from benchmarks._specs import build_optimizer
from benchmarks._suites import parse_tasks
from benchmarks._summary import untrained_init_spec

HAND_DESIGNED = ("muon",)   # untuned hand-designed reference rows (the tuned ones are TUNED)
TUNED = ("adam", "momentum")


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
  """Defines the demo's flags on ``fv`` (when run as a script, not on import)."""
  flags.DEFINE_string("out", "demo_out", "Where to write the table and plots.", flag_values=fv)
  flags.DEFINE_integer("seeds", 2, "Seeds per optimizer and learning rate.", lower_bound=1,
                       flag_values=fv)
  flags.DEFINE_integer("steps", None, "Override the suite's horizons.", lower_bound=2,
                       flag_values=fv)


def demo_optimizers() -> tuple[list[str], dict[str, str]]:
  """The demo's optimizer specs: hand-designed ones plus every shipped learned one.

  Returns:
    ``(specs, notes)``: the specs to run and, for learned optimizers left out,
    why (no shipped weights, or they fail to load).
  """
  specs, notes = list(HAND_DESIGNED), {}
  for name in [n for n in lopt.available() if lopt.is_learned(n)]:
    if not lopt.has_pretrained(name):
      notes[name] = "no pretrained weights shipped yet"
      continue
    spec = f"{name}:pretrained"
    try:
      with warnings.catch_warnings():  # no task here: run_benchmark passes each one to G.pt
        warnings.simplefilter("ignore", lopt.gpt.GPTWarning)
        build_optimizer(spec, 100)
    except Exception as e:  # noqa: BLE001 - a broken optional optimizer must not stop the demo
      notes[name] = f"could not be built ({type(e).__name__}: {e})"
      continue
    specs.append(spec)
    if name != "gpt":   # next to its untrained init: did meta-training help?
      specs.append(untrained_init_spec(name))   # the init its weights' run started from
  return specs, notes


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:  # keep orbax's and jax's INFO lines out of the table
    logging.set_verbosity(logging.WARNING)
  start = time.perf_counter()
  specs, notes = demo_optimizers()
  for name, why in sorted(notes.items()):
    print(f"note: learned optimizer {name!r} left out: {why}", flush=True)
  fv = flags.FLAGS
  entries = parse_tasks("embedded", steps=fv.steps)
  print(f"lopt demo: {', '.join(specs)} against {' and '.join(TUNED)} tuned over their "
        f"learning-rate grids (4x the horizon) on {', '.join(e.label for e in entries)} "
        f"({fv.seeds} seeds)", flush=True)
  results = run_benchmark(specs, entries, tune=TUNED, num_seeds=fv.seeds, lrs_per_decade=2)
  results["config"]["command"] = "make demo"
  results["skipped"].update({n: w for n, w in notes.items()})
  paths = save_results(results, fv.out)
  print()
  print(markdown(results))
  print(f"Which rows are tuned: {', '.join(t + ' (tuned)' for t in TUNED)}; every other row "
        f"runs at the settings shown. {TUNED_NOTE}")
  print(f"Plots: {', '.join(str(p) for p in paths['plots'])}")
  print(f"Table: {paths['markdown']}; all numbers: {paths['json']}")
  print(f"Demo finished in {time.perf_counter() - start:.0f} s.")


if __name__ == "__main__":
  define_flags()
  app.run(main)
