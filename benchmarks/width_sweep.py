r"""Does an optimizer's loss curve keep its shape from narrow to wide networks?

Usage::

  python -m benchmarks.width_sweep --widths=32,64,128,256,512,1024 --steps=300 \
      --seeds=2 --out=docs/results/width_sweep --optimizers="celo2_lopt:pretrained,\
  celo2_lopt:fresh,celo2_lopt:fresh(update_scaling='spectral'),adam(learning_rate=0.003)"

Trains the digits MLP with ``hidden=(w, w)`` at every width with every optimizer
(specs as ``benchmarks.run`` takes them; learned optimizers get the horizon
``--steps``) and reports per optimizer the final training loss at each width,
the widest / narrowest ratio and the spread of the log loss over widths
(:func:`benchmarks.width_spread`; small = the curve transfers across widths).
Writes ``<out>/width_sweep.json``, ``width_sweep.md`` and ``width_sweep.png`` (one
panel per optimizer, a line per width) and prints the table. See docs/width_sweep.md.
"""

from __future__ import annotations

from typing import Any

from absl import app, flags

from benchmarks._cli import check, make_main
from benchmarks._specs import parse_spec, split_specs, unavailable_reason
from benchmarks._width_sweep import save_width_sweep, sweep_widths, width_sweep_markdown

__all__ = ["define_flags", "parse_widths", "run_from_flags"]

_FLAG_ORDER = ("optimizers", "widths", "depth", "steps", "seeds", "batch_size", "seed", "out")


def parse_widths(text: str) -> list[int]:
  """``"32,64,128"`` -> ``[32, 64, 128]``.

  Raises:
    ValueError: an empty list, a value that is not a positive integer, or a repeat.
  """
  items = [s.strip() for s in text.split(",") if s.strip()]
  bad = [s for s in items if not (s.isdigit() and int(s) > 0)]
  if bad or not items:
    raise ValueError(f"--widths must be a comma list of positive integers, got {text!r}")
  widths = [int(s) for s in items]
  if len(set(widths)) != len(widths):
    raise ValueError(f"--widths repeats a width: {text!r}")
  return widths


def _check_specs(text: str) -> None:
  specs = split_specs(text)
  if not specs:
    raise ValueError("--optimizers is empty; give a comma list of optimizer specs")
  for s in specs:   # an unknown name (the error lists the valid ones), a bad spec or path
    reason = unavailable_reason(parse_spec(s))
    if reason:
      raise ValueError(f"cannot run {s!r}: {reason}")


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
  """Defines this command's flags (with validators) on ``fv``.

  Called when the module runs as a script (not on import), so a test can define
  them on a fresh ``flags.FlagValues``.
  """
  flags.DEFINE_string(
      "optimizers", "celo2_lopt:pretrained,celo2_lopt:fresh,"
      "celo2_lopt:fresh(update_scaling='spectral'),adam(learning_rate=0.003)",
      "Comma list of optimizer specs: 'name', 'name:weights' (pretrained, fresh or a path) "
      "or 'name(key=value, ...)'.", flag_values=fv)
  flags.DEFINE_string("widths", "32,64,128,256,512,1024",
                      "Comma list of hidden widths (positive integers).", flag_values=fv)
  flags.DEFINE_integer("depth", 2, "Hidden layers of the MLP, all of the same width.",
                       lower_bound=1, flag_values=fv)
  flags.DEFINE_integer("steps", 300, "Training steps per run (the learned optimizers' horizon).",
                       lower_bound=2, flag_values=fv)
  flags.DEFINE_integer("seeds", 2, "Seeds per optimizer and width (vmapped).", lower_bound=1,
                       flag_values=fv)
  flags.DEFINE_integer("batch_size", 128, "Training batch size.", lower_bound=1,
                       flag_values=fv)
  flags.DEFINE_integer("seed", 0, "Base seed.", lower_bound=0, flag_values=fv)
  flags.DEFINE_string("out", "bench_out/width_sweep", "Output directory.", flag_values=fv)
  flags.register_validator("optimizers", lambda v: check(_check_specs, v),
                           message="bad --optimizers", flag_values=fv)
  flags.register_validator("widths", lambda v: check(parse_widths, v),
                           message="bad --widths", flag_values=fv)
  flags.register_validator("out", lambda v: bool(v and v.strip()), "--out must not be empty",
                           flag_values=fv)


def run_from_flags(fv: flags.FlagValues = flags.FLAGS) -> dict[str, Any]:
  """Runs the sweep configured by the parsed flags ``fv``; writes and prints the results."""
  results = sweep_widths(split_specs(fv.optimizers), parse_widths(fv.widths),
                         num_steps=fv.steps, num_seeds=fv.seeds, depth=fv.depth,
                         task_kwargs={"batch_size": fv.batch_size}, seed=fv.seed)
  results["config"]["command"] = "python -m benchmarks.width_sweep " + " ".join(
      fv[f].serialize() for f in _FLAG_ORDER if fv[f].present)
  paths = save_width_sweep(results, fv.out)
  print()
  print(width_sweep_markdown(results))
  print(f"wrote {paths['json']}, {paths['markdown']} and {paths['plot']}")
  return results


main = make_main(run_from_flags, (KeyError, ValueError, OSError))


if __name__ == "__main__":
  define_flags()
  app.run(main)
