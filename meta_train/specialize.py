r"""Specialize ``layerwise_combo_lopt`` to one pretrained model from the command line.

Example::

  python -m meta_train.specialize --pretrained=digits_cnn --workdir=runs/specialize_digits_cnn
  python -m meta_train.specialize --flagfile=meta_train/configs/specialize_digits_cnn.flags

``--pretrained`` is a shipped digits backbone (``digits_cnn``, ``digits_mlp``, or a
shipped checkpoint's name such as ``digits_cnn_digits_0to4_seed1``) or a
checkpoint directory written by ``python -m tasks.pretrain``; ``--targets`` a
comma list of ``tasks.FINETUNE_TARGETS`` names (default: the specialization
targets). Rerunning the same command resumes from the newest checkpoint in
``--workdir``; a second process on the same workdir is refused. Writes
``config.json``, ``checkpoints/``, ``metrics.jsonl``, ``meta_training_curve.png``
and ``weights/``, whose manifest names the pretrained model, its parameter tree,
the targets and this command; use them with
``lopt.get("layerwise_combo_lopt", weights="<workdir>/weights", num_steps=...)``.
See :func:`meta_train.specialize` and docs/specialize.md.

Bad values stop at parsing with one line (``FATAL Flags parsing error: ...``);
problems of the workdir stop with one line and exit status 1.
"""

from __future__ import annotations

import inspect
import pathlib
import shlex
import sys
import types
from typing import Any, Callable

from absl import app, flags, logging

import lopt
import tasks
from meta_train._run import RunError
from meta_train._specialize import (
  SPECIALIZE_ESTIMATORS,
  SpecializeResult,
  check_horizons,
  resolve_pretrained,
  specialize,
)

__all__ = ["define_flags", "run_from_flags", "specialize"]

FLAGS = flags.FLAGS
_DEFAULTS = {k: p.default for k, p in inspect.signature(specialize).parameters.items()}
#: Settings passed on to :func:`meta_train.specialize`, with their help.
_SIZES = {
    "horizon": "Steps of each fine-tuning run (the ES truncation is the whole run); with "
               "--max_horizon, the shortest run and the truncation length.",
    "outer_steps": "ES steps; each fine-tunes 2 * num_tasks runs of one target.",
    "num_tasks": "Fine-tuning runs (antithetic pairs) per outer step.",
    "hidden_size": "Width of the optimizer's per-tensor network.",
    "checkpoint_every": "Outer steps between checkpoints.",
}
_RATES = {
    "sigma": "ES perturbation scale of the meta-parameters.",
    "learning_rate": "Adam's learning rate on the meta-parameters.",
    "init_lr": "The starting optimizer is Adam with this learning rate.",
}


def _check(fn: Callable[[Any], Any]) -> Callable[[Any], bool]:
  """A flag validator: ``fn(value)`` raises ValueError/FileNotFoundError with the message."""

  def check(value) -> bool:
    try:
      fn(value)
    except (ValueError, FileNotFoundError) as e:
      raise flags.ValidationError(str(e)) from None
    return True

  return check


def _check_targets(names: list[str]) -> None:
  unknown = [n for n in names if n not in tasks.FINETUNE_TARGETS]
  if unknown:
    raise ValueError(f"unknown target {unknown[0]!r}; valid: "
                     f"{', '.join(tasks.FINETUNE_TARGETS)}")
  if not names or len(set(names)) != len(names):
    raise ValueError(f"give distinct target names, got {names}")


def _check_positive(name: str) -> Callable[[float], None]:
  def check(value: float) -> None:
    if not value > 0:
      raise ValueError(f"{name} must be > 0, got {value}")
  return check


def _num_classes(pretrained: str, names: list[str]) -> dict[str, int]:
  from tasks._digit_variants import DIGIT_SOURCES
  source = resolve_pretrained(pretrained)[1]["source"]
  return {n: len(tasks.FINETUNE_TARGETS[n].get("classes") or DIGIT_SOURCES[source])
          for n in names}


def _check_one_tree(values: dict[str, Any]) -> bool:
  """Targets with another number of classes have another head, so another parameter tree."""
  try:
    _check_targets(values["targets"])
    counts = _num_classes(values["pretrained"], values["targets"])
  except (ValueError, FileNotFoundError):
    return True  # the single-flag validators report these
  if len(set(counts.values())) > 1:
    raise flags.ValidationError(
        f"the targets must share one parameter tree, but their heads have "
        f"{', '.join(f'{n}: {c}' for n, c in counts.items())} classes; specialize them "
        f"separately")
  return True


def define_flags(fv: flags.FlagValues = FLAGS) -> None:
  """Defines the command-line flags in ``fv``, each validated at parse time."""
  flags.DEFINE_string("pretrained", None, "A shipped digits backbone (digits_cnn, digits_mlp, "
                      "digits_cnn_digits_0to4_seed1, ...) or a checkpoint directory written by "
                      "python -m tasks.pretrain.", required=True, flag_values=fv)
  flags.DEFINE_list("targets", list(tasks.SPECIALIZATION_TARGETS),
                    "Fine-tuning targets (names of tasks.FINETUNE_TARGETS).", flag_values=fv)
  flags.DEFINE_string("workdir", None, "Run directory (resumed when it holds a run).",
                      required=True, flag_values=fv)
  for name, help_ in _SIZES.items():
    flags.DEFINE_integer(name, _DEFAULTS[name], help_, lower_bound=1, flag_values=fv)
  flags.DEFINE_integer("max_horizon", None, "Longest fine-tuning run, a multiple of --horizon "
                       "(default: --horizon). Runs then last horizon, 2 horizon, ..., max_horizon "
                       "steps, unrolled in truncations of --horizon steps (needs "
                       "--estimator=pes).", lower_bound=1, flag_values=fv)
  flags.DEFINE_enum("estimator", _DEFAULTS["estimator"], SPECIALIZE_ESTIMATORS,
                    "es: antithetic ES over whole runs; pes: persistent ES, unbiased over runs "
                    "of several truncations.", flag_values=fv)
  flags.DEFINE_list("directions", list(lopt.BASE_DIRECTIONS), "Base directions the optimizer "
                    f"mixes, in order: names of {', '.join(lopt.DIRECTIONS)}, including adam "
                    "(orth: Muon-style orthogonalized momentum).", flag_values=fv)
  flags.register_validator("directions", _check(lambda v: lopt.LayerwiseComboLOpt(
      directions=tuple(v))), flag_values=fv)
  flags.DEFINE_enum("schedule", "constant", lopt.COMBO_SCHEDULES, "Fixed step-size factor: "
                    "constant, or cosine (decay to zero over each run, stretching to longer "
                    "runs).", flag_values=fv)
  flags.DEFINE_enum("meta_loss_split", _DEFAULTS["meta_loss_split"], ("test", "train"),
                    "The batch the meta-loss is measured on: test (the targets' held-out "
                    "split) or train (the training loss).", flag_values=fv)
  flags.DEFINE_integer("seed", _DEFAULTS["seed"], "The root of all randomness.", lower_bound=0,
                       flag_values=fv)
  for name, help_ in _RATES.items():
    flags.DEFINE_float(name, _DEFAULTS[name], help_, flag_values=fv)
    flags.register_validator(name, _check(_check_positive(name)), flag_values=fv)
  flags.DEFINE_integer("log_every", 10, "Outer steps between progress lines.", lower_bound=1,
                       flag_values=fv)
  flags.DEFINE_bool("plot", True, "Write meta_training_curve.png at the end.", flag_values=fv)
  flags.DEFINE_bool("compilation_cache", True, "Keep compiled steps in <workdir>/jax_cache so "
                    "a resumed run skips compilation (one compile per target).", flag_values=fv)
  flags.register_validator("pretrained", _check(resolve_pretrained), flag_values=fv)
  flags.register_validator("targets", _check(_check_targets), flag_values=fv)
  flags.register_multi_flags_validator(["pretrained", "targets"], _check_one_tree,
                                       flag_values=fv)
  flags.register_multi_flags_validator(
      ["horizon", "max_horizon", "estimator"],
      _check(lambda v: check_horizons(v["horizon"], v["max_horizon"], v["estimator"])),
      flag_values=fv)


def run_from_flags(fv: flags.FlagValues = FLAGS, *, command: str | None = None,
                   callback: Callable[[int, dict[str, float]], None] | None = None
                   ) -> SpecializeResult:
  """Runs :func:`meta_train.specialize` with the parsed flags."""
  kwargs = {name: fv[name].value for name in (*_SIZES, *_RATES, "seed", "max_horizon",
                                              "estimator", "directions", "schedule",
                                              "meta_loss_split")}
  return specialize(pretrained=fv.pretrained, targets=list(fv.targets), workdir=fv.workdir,
                    command=command, callback=callback, **kwargs)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint operation at INFO
  import jax

  from meta_train.main import Progress, plot_curve

  workdir = pathlib.Path(FLAGS.workdir)
  if FLAGS.compilation_cache:
    jax.config.update("jax_compilation_cache_dir", str((workdir / "jax_cache").resolve()))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  command = " ".join(["python -m meta_train.specialize", *map(shlex.quote, sys.argv[1:])])
  runs = (f"{FLAGS.horizon}" if FLAGS.max_horizon in (None, FLAGS.horizon)
          else f"{FLAGS.horizon}-{FLAGS.max_horizon} (truncations of {FLAGS.horizon})")
  print(f"specializing layerwise_combo_lopt to {FLAGS.pretrained} on {len(FLAGS.targets)} "
        f"targets ({', '.join(FLAGS.targets)}): {FLAGS.outer_steps} {FLAGS.estimator.upper()} "
        f"steps of {FLAGS.num_tasks} x 2 runs of {runs} steps; workdir {workdir}", flush=True)
  try:
    result = run_from_flags(FLAGS, command=command,
                            callback=Progress(FLAGS.outer_steps, FLAGS.log_every))
  except (RunError, FileNotFoundError, ValueError) as e:
    sys.exit(f"meta_train.specialize: {e}")
  if FLAGS.plot and (workdir / "metrics.jsonl").exists():
    plot_curve(workdir / "metrics.jsonl", workdir / "meta_training_curve.png")
  print(f"done: {result.train.step} outer steps, counters {result.train.counters}; weights in "
        f"{result.weights}", flush=True)


class _CallableModule(types.ModuleType):
  """Importing this module replaces the function ``meta_train.specialize`` by the module
  (Python binds a submodule to its package's attribute); calling it still specializes."""

  def __call__(self, *args: Any, **kwargs: Any) -> SpecializeResult:
    return specialize(*args, **kwargs)


if __name__ == "__main__":
  define_flags()
  app.run(main)
else:
  # Once imported, the attribute meta_train.specialize is this module: make it look
  # like the function to callers and to introspection (help(), docs/gen_api.py).
  _self = sys.modules[__name__]
  _self.__class__ = _CallableModule
  _self.__signature__ = inspect.signature(specialize)
  _self.__doc__ = specialize.__doc__
