r"""Pretrain a backbone for the fine-tuning tasks and save it (orbax + manifest.json).

One checkpoint, written to ``<out>/<model>_<source>_seed<seed>/``::

  python -m tasks.pretrain --model=digits_cnn --source=digits_0to4 --seed=0 --out=/tmp/pre

Every shipped checkpoint (``tasks._pretrain.SHIPPED``), rebuilt in ``tasks/pretrained/``::

  python -m tasks.pretrain --all

``--out`` defaults to the shipped directory. Models and their sources are
``tasks.PRETRAIN_MODELS``; ``--steps`` and ``--learning_rate`` default to the
model's. A bad flag stops with one line naming the valid values.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging

from tasks._pretrain import (
    PRETRAIN_MODELS,
    build_shipped,
    check_pretrain_args,
    pretrain_model,
    pretrained_path,
    save_pretrained,
    summary,
)

__all__ = ["define_flags", "main", "run_from_flags"]


def _check_model(model: str) -> bool:
  if model not in PRETRAIN_MODELS:
    raise flags.ValidationError(f"unknown model {model!r}; valid: {', '.join(PRETRAIN_MODELS)}")
  return True


def _check_model_source(values) -> bool:
  if values["all"]:
    return True
  try:
    check_pretrain_args(values["model"], values["source"])
  except ValueError as e:
    raise flags.ValidationError(str(e)) from None
  return True


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
  """Defines the command's flags (and their validators) on ``fv``."""
  flags.DEFINE_string("model", "digits_cnn", f"Backbone: {', '.join(PRETRAIN_MODELS)}.",
                      flag_values=fv)
  flags.DEFINE_string("source", "digits_0to4", "Source task of the backbone (digits models: "
                      "digits_0to4, digits_5to9, digits; char_lm: a corpus).", flag_values=fv)
  flags.DEFINE_integer("seed", 0, "Initialization and batch seed.", lower_bound=0,
                       flag_values=fv)
  flags.DEFINE_integer("steps", None, "Adam steps (default: the model's).", lower_bound=1,
                       flag_values=fv)
  flags.DEFINE_float("learning_rate", None, "Adam's rate (default: the model's).",
                     lower_bound=0.0, flag_values=fv)
  flags.DEFINE_string("out", None, "Directory the checkpoint directory is written into "
                      "(default: the shipped tasks/pretrained).", flag_values=fv)
  flags.DEFINE_bool("all", False, "Rebuild every shipped checkpoint (ignores --model, "
                    "--source, --seed, --steps, --learning_rate).", flag_values=fv)
  flags.register_validator("model", _check_model, flag_values=fv)
  flags.register_multi_flags_validator(["model", "source", "all"], _check_model_source,
                                       message="bad --source", flag_values=fv)
  flags.register_validator("learning_rate", lambda v: v is None or v > 0,
                           message="--learning_rate must be > 0", flag_values=fv)
  flags.register_validator("out", lambda v: v is None or bool(v.strip()),
                           message="--out must name a directory (omit it for the shipped "
                           "tasks/pretrained)", flag_values=fv)


def run_from_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
  """Pretrains and saves what the parsed flags ``fv`` ask for; prints one line per checkpoint."""
  if fv.all:
    build_shipped(fv.out)
    return
  pre = pretrain_model(fv.model, fv.source, seed=fv.seed, steps=fv.steps,
                       learning_rate=fv.learning_rate)
  path = save_pretrained(pretrained_path(fv.model, fv.source, fv.seed, fv.out), pre)
  print(summary(pre, path))


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:  # keep orbax's INFO lines out of the summary
    logging.set_verbosity(logging.WARNING)
  try:
    run_from_flags(flags.FLAGS)
  except (OSError, ValueError) as e:  # not a flag problem: one line, no usage text
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  define_flags()
  app.run(main)
