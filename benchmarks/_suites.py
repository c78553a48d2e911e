"""Named benchmark suites: which tasks, configured how, trained for how long."""

from __future__ import annotations

from typing import Any, NamedTuple

import tasks

__all__ = ["SUITES", "SuiteTask", "parse_tasks", "suite"]


class SuiteTask(NamedTuple):
  """One benchmark entry: a task, its configuration and its horizon.

  Attributes:
    label: a short unique name for tables and plots.
    task: the name in the ``tasks`` registry, or a :class:`tasks.Task` object
      (e.g. from :func:`tasks.from_functions`, to benchmark your own model).
    cfg: keyword arguments of ``tasks.get(task, **cfg)`` (empty for a Task object).
    steps: the horizon every optimizer under test runs (tuned baselines run a
      multiple of it).
  """
  label: str
  task: str | tasks.Task
  cfg: dict[str, Any]
  steps: int

  def build(self) -> tasks.Task:
    """Returns ``tasks.get(self.task, **self.cfg)`` (or the Task object itself)."""
    if isinstance(self.task, tasks.Task):
      return self.task
    return tasks.get(self.task, **self.cfg)

  @property
  def task_name(self) -> str:
    """The registry name, or the Task object's ``name``."""
    return self.task.name if isinstance(self.task, tasks.Task) else self.task

  @property
  def config(self) -> dict[str, Any]:
    """``cfg``, or the Task object's ``config()``."""
    return self.task.config() if isinstance(self.task, tasks.Task) else dict(self.cfg)


# Held-out suite v2: tasks outside every shipped learned optimizer's meta-training
# family (celo2_lopt: "mlp_quad", mlp_lopt: "mixed", both digits MLPs of width
# <= 128 and depth <= 3 with relu/tanh/gelu/elu/swish, and quadratics of
# dimension 10-1000 with condition <= 1000, axis-aligned; G.pt: the (32,) digits MLP).
# The quadratic here is rotated: Adam's per-coordinate scaling cannot undo its
# conditioning. The second RL task is bsuite's Catch (Acrobot's sparse reward gives
# an exactly zero policy gradient on some seeds, which ties every optimizer).
# tests/benchmarks/test_suites.py checks this by configuration. More than half
# of the tasks run 1,000 steps.
_HELDOUT = (   # cheapest first, so a long run saves (and can resume from) the quick tasks early
    SuiteTask("quadratic_illcond", "quadratic",
              {"dim": 256, "condition": 1e4, "noise": 0.1, "rotate": True}, 1000),
    SuiteTask("digits_autoencoder", "digits_autoencoder", {"hidden": (32, 8)}, 1000),
    SuiteTask("digits_mlp_layernorm", "digits_mlp",
              {"hidden": (128, 64), "activation": "selu", "layer_norm": True}, 500),
    SuiteTask("cartpole", "cartpole", {}, 300),
    SuiteTask("digits_mlp_deep", "digits_mlp", {"hidden": (64,) * 6, "activation": "tanh"},
              1000),
    SuiteTask("catch", "catch", {}, 300),
    SuiteTask("digits_mlp_wide", "digits_mlp", {"hidden": (256, 256, 128)}, 500),
    SuiteTask("digits_cnn_3layer", "digits_cnn",
              {"channels": (8, 16, 32), "activation": "gelu", "batch_size": 64}, 1000),
    SuiteTask("digits_cnn", "digits_cnn", {"channels": (16, 32)}, 1000),
    SuiteTask("char_lm_python", "char_lm",
              {"corpus": "python_stdlib", "dim": 32, "layers": 2, "seq_len": 32,
               "batch_size": 16}, 1000),
    SuiteTask("char_lm", "char_lm", {"dim": 32, "layers": 2, "seq_len": 32, "batch_size": 16},
              1000),
)

# A few minutes: three of the held-out tasks at shorter horizons, for quick checks.
_HELDOUT_QUICK = (
    SuiteTask("quick_digits_mlp_layernorm", "digits_mlp",
              {"hidden": (128, 64), "activation": "selu", "layer_norm": True}, 300),
    SuiteTask("quick_quadratic_illcond", "quadratic",
              {"dim": 256, "condition": 1e4, "noise": 0.1, "rotate": True}, 300),
    SuiteTask("quick_char_lm", "char_lm",
              {"dim": 32, "layers": 2, "seq_len": 32, "batch_size": 16}, 300),
)

# Validation: used to choose between meta-training checkpoints without looking at
# the held-out suite. The first three are from the space of meta_train's
# "mlp_quad" family (not among the configurations the celo2_lopt run drew); the
# others cover the kinds of the "broad" family (CNN, LM, autoencoder, normalized
# MLP) at configurations that its seed-8 draw (meta_train/configs/*_broad.flags)
# does not use. None is a held-out task (tests/benchmarks/test_suites.py).
_VALIDATION = (
    SuiteTask("val_mlp_128_relu", "digits_mlp", {"hidden": (128,), "activation": "relu"}, 500),
    SuiteTask("val_mlp_32x3_gelu", "digits_mlp",
              {"hidden": (32, 32, 32), "activation": "gelu", "batch_size": 64}, 500),
    SuiteTask("val_quadratic", "quadratic", {"dim": 100, "condition": 100.0, "noise": 0.1}, 500),
    SuiteTask("val_cnn_8x16_gelu", "digits_cnn",
              {"channels": (8, 16), "activation": "gelu", "batch_size": 32}, 500),
    SuiteTask("val_char_lm_small", "char_lm",
              {"dim": 24, "layers": 1, "seq_len": 24, "batch_size": 8,
               "corpus": "python_stdlib"}, 500),
    SuiteTask("val_autoencoder", "digits_autoencoder", {"hidden": (32, 16, 8)}, 500),
    SuiteTask("val_mlp_layernorm_tanh", "digits_mlp",
              {"hidden": (64, 64), "activation": "tanh", "layer_norm": True,
               "batch_size": 64}, 500),
)


def _finetune(prefix: str, targets: tuple[str, ...], seeds: tuple[int, ...],
              steps: int) -> tuple[SuiteTask, ...]:
  """Fine-tuning entries of the shipped digits CNN (pretrained on digits 0-4)."""
  out = []
  for seed in seeds:
    for target in targets:
      t = tasks.finetune_target(target)
      classes = None if t["classes"] is None else list(t["classes"])   # None: the source's
      out.append(SuiteTask(f"{prefix}_{target}_s{seed}", "finetune_digits",
                           {"pretrain_seed": seed, "classes": classes,
                            "transform": t["transform"], "shots": t["shots"]}, steps))
  return tuple(out)


# Fine-tuning ("Narrowing the Focus", docs/specialize.md): the digits CNN
# specialized on tasks.SPECIALIZATION_TARGETS with the seed-0 backbone over
# 100-step runs (meta_train/configs/specialize_digits_cnn.flags). Its evaluation
# has three held-out suites, each reported on its own: targets never specialized
# on; the same targets on backbones pretrained with other seeds; and 3x the
# specialization horizon. "finetune_specialization" is the in-distribution check.
_FT_STEPS = 100
_FINETUNE = {
    "finetune_specialization": _finetune("ft", tasks.SPECIALIZATION_TARGETS,
                                         tasks.SPECIALIZATION_SEEDS, _FT_STEPS),
    "finetune_heldout_targets": _finetune("ft", tasks.HELD_OUT_TARGETS,
                                          tasks.SPECIALIZATION_SEEDS, _FT_STEPS),
    "finetune_heldout_seeds": _finetune("ft", tasks.SPECIALIZATION_TARGETS,
                                        tasks.HELD_OUT_SEEDS, _FT_STEPS),
    "finetune_long": _finetune("ft300", tasks.SPECIALIZATION_TARGETS,
                               tasks.SPECIALIZATION_SEEDS, 3 * _FT_STEPS),
    # 2x and 4x the horizon, the ends of the "2-4x" range (docs/specialize.md).
    "finetune_long200": _finetune("ft200", tasks.SPECIALIZATION_TARGETS,
                                  tasks.SPECIALIZATION_SEEDS, 2 * _FT_STEPS),
    "finetune_long400": _finetune("ft400", tasks.SPECIALIZATION_TARGETS,
                                  tasks.SPECIALIZATION_SEEDS, 4 * _FT_STEPS),
    # 3x the horizon of a specialization over runs of up to 300 steps
    # (meta_train/configs/specialize_digits_cnn_long.flags).
    "finetune_long900": _finetune("ft900", tasks.SPECIALIZATION_TARGETS,
                                  tasks.SPECIALIZATION_SEEDS, 9 * _FT_STEPS),
}

# A quick suite of embedded tasks for `make demo` (a few minutes on 2 CPU cores).
_EMBEDDED = (
    SuiteTask("digits_mlp", "digits_mlp", {"hidden": (32,)}, 300),  # G.pt's architecture
    SuiteTask("digits_cnn_small", "digits_cnn", {"channels": (8, 16)}, 300),
    SuiteTask("quadratic", "quadratic", {"dim": 32, "condition": 100.0}, 300),
)

# One tiny task for smoke tests.
_SMOKE = (
    SuiteTask("quadratic_tiny", "quadratic", {"dim": 8, "condition": 10.0}, 50),
)

SUITES: dict[str, tuple[SuiteTask, ...]] = {
    "heldout": _HELDOUT,
    "heldout_quick": _HELDOUT_QUICK,
    "validation": _VALIDATION,
    "embedded": _EMBEDDED,
    "smoke": _SMOKE,
    **_FINETUNE,
}


def suite(name: str) -> tuple[SuiteTask, ...]:
  """Returns the named suite.

  Raises:
    KeyError: unknown name; the message lists the valid suites.
  """
  if name not in SUITES:
    raise KeyError(f"unknown suite {name!r}; valid suites: {', '.join(sorted(SUITES))}")
  return SUITES[name]


def parse_tasks(spec: str, *, steps: int | None = None) -> tuple[SuiteTask, ...]:
  """Resolves a ``--tasks`` value: a suite name or a comma list of suite labels/tasks.

  Example::

    parse_tasks("heldout")                     # the held-out suite
    parse_tasks("digits_cnn,char_lm", steps=200)

  Args:
    spec: a suite name, or comma-separated entries each being a label from any
      suite (its configuration is used) or a registry task name (defaults).
    steps: override every entry's horizon.

  Returns:
    The suite entries, in order.

  Raises:
    KeyError: an entry is neither a suite label nor a registered task.
  """
  if spec in SUITES:
    entries = list(SUITES[spec])
  else:
    known = {e.label: e for s in SUITES.values() for e in s}
    entries = []
    for name in (s.strip() for s in spec.split(",") if s.strip()):
      if name in known:
        entries.append(known[name])
      elif name in tasks.available():
        entries.append(SuiteTask(name, name, {}, 500 if steps is None else int(steps)))
      else:
        raise KeyError(f"unknown task or suite {name!r}; suites: {', '.join(sorted(SUITES))}; "
                       f"suite tasks: {', '.join(sorted(known))}; registry tasks: "
                       f"{', '.join(tasks.available())}")
  if steps is not None:
    if int(steps) < 2:
      raise ValueError(f"steps must be >= 2, got {steps}")
    entries = [e._replace(steps=int(steps)) for e in entries]
  return tuple(entries)
