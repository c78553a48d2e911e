"""Specialize a cheap learned optimizer to one pretrained model and its fine-tuning targets.

Kristiansen et al. 2024, "Narrowing the Focus: Learned Optimizers for Pretrained
Models" (arXiv 2408.09310): learn, for one training environment -- a pretrained
model fine-tuned on a family of related datasets -- per-layer step sizes and
per-layer mixtures of base optimizers' directions. Here that is
``layerwise_combo_lopt`` specialized to the model's parameter tree
(:meth:`lopt.LayerwiseComboLOpt.for_params`: a learned mixture bias and
step-size factor per tensor, a learned global step size and a small network
over loss, gradient, weight and training-time features), meta-trained by
:func:`meta_train.train` with antithetic ES over *whole* short fine-tuning runs.

Each target is one task group (compiled once); outer step ``t`` fine-tunes
``num_tasks`` instances of target ``t % len(targets)`` from the pretrained
parameters, twice (``theta +- eps``), for ``horizon`` steps. The meta-loss is
the late-weighted log of the normalized *test*-batch loss after each step
(:class:`meta_train.UnrollConfig`: ``meta_loss_split="test"`` by default,
``meta_loss_log``, ``meta_loss_weighting="late"``), which tracks how fast a run
reaches a low held-out loss.

A run lives in ``workdir`` like any :func:`meta_train.train` run (resumable,
locked, checkpointed); its ``config.json`` names the pretrained model and the
targets in ``task_family`` and the parameter tree in ``lopt_config``, so
rerunning the same call resumes and another model or target list is refused.
At the end ``<workdir>/weights`` holds the weights; their manifest's ``extra``
names the pretrained model, its parameter tree, the targets and the command.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax

import lopt
import tasks
from lopt._base import tree_spec
from meta_train._config import TrainConfig
from meta_train._estimators import EstimatorConfig
from meta_train._run import replace_dir
from meta_train._trainer import TrainResult, _barrier, train
from meta_train._unroll import UnrollConfig

__all__ = ["DIGITS_BACKBONES", "SPECIALIZE_ESTIMATORS", "SpecializeResult", "TargetFamily",
           "check_horizons", "resolve_pretrained", "specialize", "specialize_config"]

#: Backbones whose fine-tuning targets are built by name (``tasks.FINETUNE_TARGETS``).
DIGITS_BACKBONES = ("digits_cnn", "digits_mlp")
_SHIPPED_SOURCE, _SHIPPED_SEED = "digits_0to4", tasks.SPECIALIZATION_SEEDS[0]


class SpecializeResult(NamedTuple):
  """What :func:`specialize` returns.

  Attributes:
    weights: the exported weights directory (``<workdir>/weights``).
    lo: the specialized learned optimizer (load the weights with it).
    train: :func:`meta_train.train`'s result (meta-params, step, counters).
  """
  weights: pathlib.Path
  lo: lopt.LayerwiseComboLOpt
  train: TrainResult


class TargetFamily(tasks.TaskFamily):
  """Fine-tuning targets of one model, by name; meta-training gives each its own group.

  Configs are ``{"target": name}``. :meth:`group_configs` lists the targets in
  order (cycling), so ``num_configs = len(targets)`` trains on every target once
  per cycle; :meth:`sample` draws one uniformly.
  """

  def __init__(self, name: str, targets: Mapping[str, tasks.Task]):
    if not targets:
      raise ValueError("no targets to specialize on")
    self.name = name
    self._tasks = dict(targets)
    self._names = list(targets)

  def sample(self, key: jax.Array) -> dict[str, Any]:
    return {"target": self._names[int(jax.random.randint(key, (), 0, len(self._names)))]}

  def group_configs(self, key: jax.Array, num: int) -> list[dict[str, Any]]:
    del key
    return [{"target": self._names[g % len(self._names)]} for g in range(num)]

  def task(self, cfg: Mapping[str, Any]) -> tasks.Task:
    return self._tasks[cfg["target"]]

  def contains(self, task: tasks.Task) -> bool:
    return any(t is task or (type(t) is type(task) and t.config() == task.config())
               for t in self._tasks.values())

  def __repr__(self) -> str:
    return f"TargetFamily({self.name!r}, targets={self._names})"


def _shipped_names() -> list[str]:
  from tasks._pretrain import SHIPPED
  return list(DIGITS_BACKBONES) + [f"{m}_{s}_seed{k}" for m, s, k in SHIPPED
                                   if m in DIGITS_BACKBONES]


def resolve_pretrained(pretrained: str | os.PathLike) -> tuple[pathlib.Path, dict[str, Any], str]:
  """The checkpoint a ``pretrained`` argument names: ``(directory, manifest, identity)``.

  ``pretrained`` is a shipped digits backbone (``"digits_cnn"``, ``"digits_mlp"``:
  its seed-0 checkpoint pretrained on digits 0-4; or a shipped checkpoint's name,
  ``"digits_cnn_digits_0to4_seed1"``) or a checkpoint directory written by
  :func:`tasks.save_pretrained` / ``python -m tasks.pretrain``, named
  ``<model>_<source>_seed<k>`` as :func:`tasks.pretrained_path` names it. The
  identity is the shipped name, or the absolute path.

  Raises:
    ValueError: an unknown name, a checkpoint of another kind of model, or a
      directory named otherwise; the message says what is valid.
    FileNotFoundError: no checkpoint at the path.
  """
  from tasks._pretrain import SHIPPED_DIR, read_pretrained_manifest

  text = os.fspath(pretrained)
  shipped = _shipped_names()
  if text in DIGITS_BACKBONES:
    path = tasks.pretrained_path(text, _SHIPPED_SOURCE, _SHIPPED_SEED)
  elif text in shipped:
    path = SHIPPED_DIR / text
  elif os.sep in text or os.path.exists(text):
    path = pathlib.Path(text).expanduser().resolve()
  else:
    raise ValueError(f"unknown pretrained model {text!r}: give a checkpoint directory "
                     f"(tasks.save_pretrained, python -m tasks.pretrain) or a shipped "
                     f"backbone: {', '.join(shipped)}")
  manifest = read_pretrained_manifest(path)
  model, source, seed = manifest["model"], manifest["source"], manifest["seed"]
  if model not in DIGITS_BACKBONES:
    raise ValueError(f"{path} holds a {model!r} model; targets by name exist for the digits "
                     f"backbones ({', '.join(DIGITS_BACKBONES)}); for other models pass "
                     f"targets={{name: task}} (see docs/specialize.md)")
  expected = tasks.pretrained_path(model, source, seed, path.parent).name
  if path.name != expected:
    raise ValueError(f"{path} holds ({model}, {source}, seed {seed}) and must be named "
                     f"{expected!r} for the fine-tuning tasks to find it (tasks.pretrained_path)")
  ident = path.name if path.parent == SHIPPED_DIR.resolve() else str(path)
  return path, manifest, ident


def _digits_targets(path: pathlib.Path, manifest: Mapping[str, Any], names: Sequence[str]
                    ) -> dict[str, tasks.Task]:
  """The :class:`tasks.FineTuneDigits` tasks of ``names`` on the checkpoint at ``path``."""
  from tasks._pretrain import SHIPPED_DIR

  unknown = [n for n in names if n not in tasks.FINETUNE_TARGETS]
  if unknown:
    raise ValueError(f"unknown target {unknown[0]!r}; valid: "
                     f"{', '.join(tasks.FINETUNE_TARGETS)}")
  pretrained_dir = None if path.parent == SHIPPED_DIR.resolve() else str(path.parent)
  out = {}
  for name in names:
    out[name] = tasks.FineTuneDigits(manifest["model"], manifest["source"], manifest["seed"],
                                     pretrained_dir=pretrained_dir,
                                     **tasks.finetune_target(name))
  return out


def _param_tree(targets: Mapping[str, tasks.Task]) -> tuple:
  """The parameter tree all targets share (``tree_spec``); ValueError naming a misfit."""
  trees = {n: jax.eval_shape(t.init, jax.random.key(0)) for n, t in targets.items()}
  first = next(iter(trees))
  for name, tree in trees.items():
    try:
      lopt.check_trees(trees[first], tree, f"target {first!r}", f"target {name!r}")
    except ValueError as e:
      raise ValueError(f"the targets must share one parameter tree: {e}") from None
  return tree_spec(trees[first])


#: Valid ``estimator`` values of :func:`specialize`.
SPECIALIZE_ESTIMATORS = ("es", "pes")


def check_horizons(horizon: int, max_horizon: int | None, estimator: str) -> int:
  """``max_horizon`` resolved (default ``horizon``); ValueError naming a bad combination."""
  if estimator not in SPECIALIZE_ESTIMATORS:
    raise ValueError(f"unknown estimator {estimator!r}; valid: {', '.join(SPECIALIZE_ESTIMATORS)}")
  if horizon < 1:
    raise ValueError(f"horizon must be >= 1, got {horizon}")
  max_horizon = horizon if max_horizon is None else max_horizon
  if max_horizon < horizon or max_horizon % horizon:
    raise ValueError(f"max_horizon must be a multiple of horizon={horizon} and at least it "
                     f"(runs are unrolled in truncations of horizon steps), got {max_horizon}")
  if max_horizon > horizon and estimator == "es":
    raise ValueError(f"runs longer than one truncation (max_horizon={max_horizon} > "
                     f"horizon={horizon}) need estimator='pes': ES would ignore each "
                     f"truncation's effect on the next")
  return max_horizon


def specialize_config(*, family_name: str, param_tree: tuple, num_targets: int, horizon: int,
                      outer_steps: int, num_tasks: int, seed: int, sigma: float,
                      learning_rate: float, init_lr: float, hidden_size: int,
                      checkpoint_every: int, max_horizon: int | None = None,
                      estimator: str = "es", directions: Sequence[str] | None = None,
                      schedule: str = "constant", meta_loss_split: str = "test"
                      ) -> TrainConfig:
  """The :class:`meta_train.TrainConfig` of a specialization run.

  Arguments as :func:`specialize`'s; ``family_name`` names the pretrained model and the
  targets, ``param_tree`` is the model's :func:`lopt._base.tree_spec`. With
  ``max_horizon`` None (or ``horizon``), ES/PES over whole runs of ``horizon`` steps;
  otherwise each run's length is drawn from ``horizon, 2 horizon, ..., max_horizon`` and
  unrolled in truncations of ``horizon`` steps (PES).
  """
  max_horizon = check_horizons(horizon, max_horizon, estimator)
  lopt_config = {"hidden_size": hidden_size, "num_layers": len(param_tree),
                 "param_tree": param_tree, "init_lr": init_lr}
  if directions is not None and tuple(directions) != lopt.LayerwiseComboLOpt.directions:
    lopt_config["directions"] = tuple(directions)   # only when not the default (resuming)
    lopt.LayerwiseComboLOpt(directions=tuple(directions))  # ValueError naming bad ones
  if schedule != "constant":                        # likewise only when not the default
    lopt_config["schedule"] = schedule
    lopt.LayerwiseComboLOpt(schedule=schedule)       # ValueError listing the valid ones
  return TrainConfig(
      lopt=lopt.LayerwiseComboLOpt.name,
      lopt_config=lopt_config,
      task_family=family_name,
      unroll=UnrollConfig(trunc_length=horizon, min_horizon=horizon, max_horizon=max_horizon,
                          stagger=False, meta_loss_split=meta_loss_split, meta_loss_log=True,
                          meta_loss_weighting="late"),
      estimator=EstimatorConfig(estimator, sigma=sigma), num_tasks=num_tasks,
      num_configs=num_targets, outer_steps=outer_steps, learning_rate=learning_rate,
      seed=seed, checkpoint_every=min(checkpoint_every, outer_steps))


def _jsonable(x: Any) -> Any:
  if isinstance(x, (str, int, float, bool)) or x is None:
    return x
  if isinstance(x, Mapping):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  return repr(x)


def specialize(*, pretrained: str | os.PathLike, workdir: str | os.PathLike,
               targets: Sequence[str] | Mapping[str, tasks.Task] | None = None,
               horizon: int = 100, max_horizon: int | None = None, estimator: str = "es",
               directions: Sequence[str] | None = None, schedule: str = "constant",
               meta_loss_split: str = "test", outer_steps: int = 320,
               num_tasks: int = 8, seed: int = 0,
               sigma: float = 0.05, learning_rate: float = 0.01, init_lr: float = 1e-2,
               hidden_size: int = 16, checkpoint_every: int = 20, command: str | None = None,
               callback: Callable[[int, dict[str, float]], None] | None = None,
               devices: Sequence[jax.Device] | None = None,
               log: Callable[[str], None] = print) -> SpecializeResult:
  """Meta-trains ``layerwise_combo_lopt`` specialized to one pretrained model (resumable).

  Example::

    result = meta_train.specialize(pretrained="digits_cnn", workdir="runs/spec",
                                   targets=["rotate90", "invert"], outer_steps=100)
    opt = lopt.get("layerwise_combo_lopt", weights=result.weights, num_steps=50)

  Args:
    pretrained: a shipped digits backbone or checkpoint directory
      (:func:`resolve_pretrained`), or, with ``targets`` given as tasks, any string
      naming the model (recorded in the manifest).
    workdir: the run's directory; rerunning with the same arguments resumes.
    targets: names of ``tasks.FINETUNE_TARGETS`` (default
      ``tasks.SPECIALIZATION_TARGETS``), or ``{name: task}`` of fine-tuning tasks of
      one model (all with the same parameter tree; e.g. :func:`tasks.from_flax`).
    horizon: steps of each fine-tuning run (the truncation is the whole run); with
      ``max_horizon``, the shortest run and the truncation length.
    max_horizon: if given (a multiple of ``horizon``), each run's length is drawn from
      ``horizon, 2 horizon, ..., max_horizon``, so the optimizer sees several horizons
      (its step-fraction features the true one); needs ``estimator="pes"``.
    estimator: ``"es"`` (antithetic ES over whole runs) or ``"pes"`` (persistent ES,
      unbiased over runs of several truncations).
    directions: the base directions mixed (default ``lopt.BASE_DIRECTIONS``: sgd,
      momentum, adam, sign); e.g. add ``"orth"`` for Muon-style orthogonalized momentum.
    schedule: the optimizer's fixed step-size factor (``lopt.COMBO_SCHEDULES``):
      ``"constant"`` or ``"cosine"`` (decay to zero over each run's length, so the
      schedule stretches to longer fine-tuning runs).
    meta_loss_split: the batch the meta-loss is measured on: ``"test"`` (the
      targets' held-out split: how fast a run reaches a low held-out loss) or
      ``"train"`` (how low it drives the training loss).
    outer_steps: ES steps; each fine-tunes ``2 * num_tasks`` runs of one target.
    num_tasks: instances per outer step (divisible by the number of devices).
    seed: the root of all randomness.
    sigma: ES perturbation scale.
    learning_rate: Adam's rate on the meta-parameters.
    init_lr: the starting point is Adam with this learning rate.
    hidden_size: width of the optimizer's per-tensor network.
    checkpoint_every: outer steps between checkpoints.
    command: the command recorded in the manifest (default: this call).
    callback: ``callback(step, metrics)`` after every outer step.
    devices: the devices of the mesh (default: all).
    log: printer of occasional notices.

  Returns:
    A :class:`SpecializeResult`.

  Raises:
    ValueError: an unknown target or model, targets of different parameter trees,
      bad sizes; meta_train._run.RunError: the workdir holds another run or is in use.
  """
  if isinstance(targets, Mapping):
    built, ident = dict(targets), os.fspath(pretrained)
    record: dict[str, Any] = {"name": ident}
  else:
    path, manifest, ident = resolve_pretrained(pretrained)
    names = list(tasks.SPECIALIZATION_TARGETS if targets is None else targets)
    if len(set(names)) != len(names) or not names:
      raise ValueError(f"targets must be distinct and non-empty, got {names}")
    built = _digits_targets(path, manifest, names)
    record = {"name": ident, "checkpoint": str(path), "backbone": manifest["model"],
              "source": manifest["source"], "seed": manifest["seed"],
              "backbone_config": manifest["config"]}
  spec = _param_tree(built)
  family = TargetFamily(f"specialize[{ident}: {','.join(built)}]", built)
  config = specialize_config(
      family_name=family.name, param_tree=spec, num_targets=len(built), horizon=horizon,
      outer_steps=outer_steps, num_tasks=num_tasks, seed=seed, sigma=sigma,
      learning_rate=learning_rate, init_lr=init_lr, hidden_size=hidden_size,
      checkpoint_every=checkpoint_every, max_horizon=max_horizon, estimator=estimator,
      directions=directions, schedule=schedule, meta_loss_split=meta_loss_split)
  lo = lopt.learned(config.lopt, **dict(config.lopt_config))
  result = train(config, workdir, family=family, callback=callback, devices=devices, log=log)
  if command is None:
    command = (f"meta_train.specialize(pretrained={ident!r}, targets={list(built)!r}, "
               f"workdir={os.fspath(workdir)!r}, horizon={horizon}, "
               f"max_horizon={config.unroll.max_horizon}, estimator={estimator!r}, "
               f"directions={list(lo.directions)!r}, schedule={lo.schedule!r}, "
               f"meta_loss_split={meta_loss_split!r}, "
               f"outer_steps={outer_steps}, "
               f"num_tasks={num_tasks}, seed={seed}, sigma={sigma}, "
               f"learning_rate={learning_rate}, init_lr={init_lr})")
  record.update(num_tensors=len(spec), param_tree=_jsonable(spec))
  extra = {"specialized_to": record,
           "targets": {n: _jsonable(t.config()) for n, t in built.items()},
           "command": command,
           "meta_training": {"outer_step": result.step, "counters": result.counters,
                             "config": config.to_json()}}
  weights = pathlib.Path(workdir).expanduser().resolve() / "weights"
  replace_dir(weights, lambda tmp: lopt.save_weights(tmp, lo, result.meta_params, extra=extra),
              is_main=jax.process_index() == 0, barrier=_barrier("meta_train_specialize"))
  return SpecializeResult(weights, lo, result)
