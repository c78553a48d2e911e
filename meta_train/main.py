r"""Meta-train a learned optimizer from the command line.

Example::

  python -m meta_train.main --lopt=mlp_lopt --task_family=digits_mlp --estimator=pes \
      --num_tasks=8 --trunc_length=20 --outer_steps=500 --workdir=runs/mlp_digits
  python -m meta_train.main --flagfile=meta_train/configs/mlp_lopt_pretrained.flags

Rerunning the same command resumes from the newest checkpoint in ``--workdir``.
Multi-process (one process per host, or several on one host for testing)::

  python -m meta_train.main ... --coordinator_address=127.0.0.1:12345 \
      --num_processes=2 --process_id=0   # and --process_id=1 in the other process

Writes into ``--workdir``: ``config.json``, ``checkpoints/``, ``metrics.jsonl``,
``meta_training_curve.png`` and ``weights/`` (load with
``lopt.get(name, weights="<workdir>/weights", num_steps=...)``).

The flags are derived from the fields of :class:`meta_train.TrainConfig` and the
configs it nests (:class:`meta_train.UnrollConfig`, :class:`meta_train.EstimatorConfig`):
``--help`` lists them with their docs. Bad values stop at parsing with one line
(``FATAL Flags parsing error: ...``); problems of the workdir (another config,
another live run) stop with one line and exit status 1.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import pathlib
import re
import sys
import typing
from typing import Any, Mapping

import jax
from absl import app, flags, logging

import lopt
import meta_train
from meta_train._run import Eta, MetricsLog, RunError

__all__ = ["Progress", "config_from_flags", "config_flag_names", "define_flags", "plot_curve"]

FLAGS = flags.FLAGS

#: Choices of the string settings that name something (the flag is an enum).
_CHOICES = {
    "lopt": lopt.available_learned,
    "task_family": meta_train.available_families,
    "estimator": lambda: sorted(meta_train.ESTIMATORS),
    "meta_loss_split": lambda: ["train", "test"],
    "meta_loss_weighting": lambda: list(meta_train.META_LOSS_WEIGHTINGS),
}
#: Config fields that are not command-line settings (fault injection for tests).
_NOT_FLAGS = ("inject_nan_steps",)


def _field_docs(cls: type) -> dict[str, str]:
  """``{field: help}`` from the ``Attributes:`` section of a dataclass's docstring."""
  text = inspect.getdoc(cls) or ""
  section = text.split("Attributes:", 1)[-1] if "Attributes:" in text else ""
  docs, name = {}, None
  for line in section.splitlines():
    m = re.match(r"^  (\w+): (.*)$", line)
    if m:
      name, docs[m.group(1)] = m.group(1), m.group(2).strip()
    elif name and line.startswith("    "):
      docs[name] += " " + line.strip()
    elif line.strip():
      break
  return docs


def _config_fields(cls: type = meta_train.TrainConfig, path: tuple[str, ...] = ()):
  """Yields ``(flag name, field path, type, default, help)`` for every command-line setting.

  A nested config's fields become flags of their own name (``--trunc_length``); a
  nested ``name`` field takes its parent's name (``--estimator``).
  """
  hints, docs, default = typing.get_type_hints(cls), _field_docs(cls), cls()
  for f in dataclasses.fields(cls):
    value = getattr(default, f.name)
    if f.name in _NOT_FLAGS:
      continue
    if dataclasses.is_dataclass(value):
      yield from _config_fields(type(value), path + (f.name,))
      continue
    name = path[-1] if f.name == "name" and path else f.name
    yield name, path + (f.name,), hints[f.name], value, docs.get(f.name, f.name)


def config_flag_names() -> list[str]:
  """The flags derived from :class:`meta_train.TrainConfig`'s fields."""
  return [name for name, *_ in _config_fields()]


def define_flags(fv: flags.FlagValues = FLAGS) -> None:
  """Defines the command-line flags in ``fv``: one per config field, plus the run's own.

  Every config flag is checked at parse time by building the
  :class:`meta_train.TrainConfig` the flags describe (validation lives in the
  dataclasses), so a bad value, an unknown ``--lopt_config`` key or a missing
  ``--init_weights`` is a one-line usage error naming the flag.
  """
  for name, _, hint, default, help_ in _config_fields():
    origin = typing.get_origin(hint)
    if name in _CHOICES:
      flags.DEFINE_enum(name, default, _CHOICES[name](), help_, flag_values=fv)
    elif hint is bool:
      flags.DEFINE_bool(name, default, help_, flag_values=fv)
    elif hint is int:
      flags.DEFINE_integer(name, default, help_, flag_values=fv)
    elif hint is float:
      flags.DEFINE_float(name, default, help_, flag_values=fv)
    elif origin is tuple:
      flags.DEFINE_list(name, [f"{v:g}" for v in default], help_ + " (comma-separated)",
                        flag_values=fv)
    elif name == "lopt_config":
      flags.DEFINE_string(name, json.dumps(dict(default)), help_ + " (a JSON object, e.g. "
                          "'{\"hidden_size\": 16}')", flag_values=fv)
    else:
      flags.DEFINE_string(name, default, help_, flag_values=fv)
  for name in config_flag_names():
    flags.register_validator(name, _validator(fv, name), flag_values=fv)
  flags.DEFINE_string("workdir", None, "Run directory (resumed when it holds a run).",
                      flag_values=fv, required=True)
  flags.DEFINE_integer("log_every", 10, "Outer steps between progress lines.", lower_bound=1,
                       flag_values=fv)
  flags.DEFINE_bool("plot", True, "Write meta_training_curve.png at the end.", flag_values=fv)
  flags.DEFINE_bool("compilation_cache", True, "Keep compiled steps in <workdir>/jax_cache so "
                    "a resumed run skips compilation (one compile per task configuration).",
                    flag_values=fv)
  flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process).",
                      flag_values=fv)
  flags.DEFINE_integer("num_processes", 1, "Number of processes (multi-process).",
                       lower_bound=1, flag_values=fv)
  flags.DEFINE_integer("process_id", 0, "This process's id (multi-process).", lower_bound=0,
                       flag_values=fv)


def _config(values: Mapping[str, Any]) -> meta_train.TrainConfig:
  """The config from flag values ``{flag name: value}``; ``ValueError`` if invalid."""

  def build(cls, path):
    kwargs = {}
    for f in dataclasses.fields(cls):
      if f.name in _NOT_FLAGS:
        continue
      sub = getattr(cls(), f.name)
      if dataclasses.is_dataclass(sub):
        kwargs[f.name] = build(type(sub), path + (f.name,))
        continue
      flag = path[-1] if f.name == "name" and path else f.name
      value = values[flag]
      if isinstance(sub, tuple):
        try:
          value = tuple(float(v) for v in value)
        except ValueError:
          raise ValueError(f"--{flag} must be numbers 'lo,hi', got {','.join(value)!r}") from None
        if len(value) != len(sub):
          raise ValueError(f"--{flag} needs {len(sub)} comma-separated numbers, got {value}")
      elif f.name == "lopt_config":
        try:
          value = json.loads(value)
        except json.JSONDecodeError as e:
          raise ValueError(f"--lopt_config is not JSON ({e}): {value!r}") from None
      kwargs[f.name] = value
    return cls(**kwargs)

  return build(meta_train.TrainConfig, ())


def _check_learned(config: meta_train.TrainConfig) -> None:
  """``--lopt_config`` keys are arguments of ``--lopt``; ``--init_weights`` exists;
  ``--trainable`` matches some meta-parameter."""
  cls = type(lopt.learned(config.lopt))
  valid = [p for p in inspect.signature(cls).parameters if p not in ("self", "args", "kwargs")]
  unknown = sorted(set(config.lopt_config) - set(valid))
  if unknown:
    raise ValueError(f"unknown keys {unknown} for {config.lopt}; valid keys: "
                     f"{', '.join(valid)}")
  try:
    lo = lopt.learned(config.lopt, **dict(config.lopt_config))
  except (TypeError, ValueError) as e:
    raise ValueError(f"{config.lopt}{dict(config.lopt_config)}: {e}") from None
  if config.trainable is not None:
    meta_train.trainable_mask(jax.eval_shape(lo.init, jax.random.key(0)), config.trainable)
  w = config.init_weights
  if w and w not in ("pretrained", "fresh") and not os.path.isdir(w):
    raise ValueError(f"no weights directory at {w!r}")


def _validator(fv: flags.FlagValues, name: str):
  """Checks the whole config with ``--name=value`` and the other flags' values.

  An error is reported by the flag it is due to: the one whose default value
  would make the config valid (``--min_horizon=2000`` with the default
  ``--max_horizon``), so the message names one flag.
  """

  def config_with(value):
    values = {n: fv[n].value for n in config_flag_names()}
    _check_learned(_config({**values, name: value}))

  def check(value) -> bool:
    try:
      config_with(value)
    except (ValueError, TypeError) as e:
      try:
        config_with(fv[name].default)
      except (ValueError, TypeError):
        return True  # another flag is to blame and reports it
      raise flags.ValidationError(str(e)) from None
    return True

  return check


def config_from_flags(fv: flags.FlagValues = FLAGS) -> meta_train.TrainConfig:
  """The :class:`meta_train.TrainConfig` the parsed flags describe.

  Raises:
    app.UsageError: the flags together describe no valid config (a problem no
      single flag's validator could name).
  """
  try:
    return _config({name: fv[name].value for name in config_flag_names()})
  except (ValueError, TypeError) as e:
    raise app.UsageError(str(e)) from None


class Progress:
  """Prints step, windowed meta-loss, outer steps/s and ETA every ``every`` steps."""

  def __init__(self, total: int, every: int):
    self.total, self.every = total, every
    self.window: list[float] = []
    self.eta: Eta | None = None

  def __call__(self, step: int, metrics: dict[str, float]) -> None:
    if self.eta is None:  # the first step includes compilation: time from its end
      self.eta = Eta(self.total, step)
      print(f"step {step}/{self.total}: compiled, meta_loss {metrics['meta_loss']:.4f}",
            flush=True)
      return
    self.window.append(metrics["meta_loss"])
    if step % self.every and step != self.total:
      return
    print(f"step {step}/{self.total}  meta_loss {sum(self.window) / len(self.window):.4f}  "
          f"grad_norm {metrics['grad_norm']:.3g}  skipped {int(metrics['total_skipped_steps'])}"
          f"  {self.eta(step)}", flush=True)
    self.window = []


def plot_curve(metrics_path: pathlib.Path, png_path: pathlib.Path) -> None:
  """Plots meta-loss per outer step (and a moving average) from ``metrics.jsonl``."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import numpy as np

  rows = MetricsLog(metrics_path).rows()
  steps = np.asarray([r["step"] for r in rows])
  loss = np.asarray([r["meta_loss"] for r in rows])
  w = max(1, len(loss) // 50)
  smooth = np.convolve(loss, np.ones(w) / w, mode="valid")
  fig, ax = plt.subplots(figsize=(6, 4))
  ax.plot(steps, loss, alpha=0.3, label="per step")
  ax.plot(steps[w - 1:], smooth, label=f"moving average ({w})")
  ax.set_xlabel("outer step")
  ax.set_ylabel("meta-loss (mean normalized inner loss)")
  ax.set_title(metrics_path.parent.name)
  ax.legend()
  fig.tight_layout()
  fig.savefig(png_path, dpi=100)
  plt.close(fig)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint operation at INFO
  if FLAGS.coordinator_address:
    import jax
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes,
                               FLAGS.process_id)
  config = config_from_flags(FLAGS)
  import jax
  workdir = pathlib.Path(FLAGS.workdir)
  if FLAGS.compilation_cache:
    jax.config.update("jax_compilation_cache_dir", str((workdir / "jax_cache").resolve()))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  is_main = jax.process_index() == 0
  if is_main:
    print(f"meta-training {config.lopt} on {config.task_family} with {config.estimator.name}: "
          f"{config.num_tasks} instances x {config.num_configs} configs on "
          f"{jax.device_count()} devices ({jax.process_count()} processes); workdir {workdir}",
          flush=True)
  try:
    result = meta_train.train(config, workdir,
                              callback=Progress(config.outer_steps, FLAGS.log_every))
  except (RunError, FileNotFoundError, ValueError) as e:
    # not a flag problem (those stop at parsing): one line, no usage text
    sys.exit(f"meta_train: {e}")
  if is_main:
    if FLAGS.plot and (workdir / "metrics.jsonl").exists():
      plot_curve(workdir / "metrics.jsonl", workdir / "meta_training_curve.png")
    print(f"done: {result.step} outer steps, counters {result.counters}; weights in "
          f"{workdir / 'weights'}", flush=True)


if __name__ == "__main__":
  define_flags()
  app.run(main)
