"""The outer loop: optax on meta-params, data-parallel over devices, orbax checkpoints.

``train(config, workdir)`` meta-trains a learned optimizer. Task configurations
and instances:

* ``num_configs`` task configurations are drawn from the family once, from the
  seed (``family.group_configs``: independent draws, or a fixed list's members in
  order); each is one *group* of ``num_tasks`` instances (same architecture, so the
  group's states stack and vmap) compiled once. Outer step ``t`` advances group
  ``t % num_configs`` by one truncation and applies its meta-gradient. Diversity
  within a group comes from initializations, data, horizons and augmentation.
* A group's instances are split across every device of a 1-D mesh
  (``jax.shard_map``); each device averages the estimates of its instances and
  ``lax.psum`` combines them, so 1 CPU, fake CPU devices, a GPU, a TPU slice or
  several ``jax.distributed`` processes run the same program.

Safety: an instance whose meta-gradient estimate is non-finite is dropped from
the average (counted in ``dropped_instances``); a step whose averaged
meta-gradient is non-finite is skipped (``skipped_steps``) -- meta-params and
the outer optimizer state stay as they were. Inner losses enter the objective
through ``task.normalize`` (clipped), and a diverged instance restarts.

Reproducibility: every step's randomness is ``fold_in(key(seed), step)``;
orbax checkpoints (meta-params, outer optimizer state, every group's instance
states, step, counters) are written every ``checkpoint_every`` steps; calling
``train`` again with the same ``workdir`` resumes from the newest checkpoint that
restores, and a run killed and resumed ends with meta-params bit-identical to an
uninterrupted one. The workdir's lock, config check, ``metrics.jsonl``
truncation and checkpoint fallback live in :mod:`meta_train._run`.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import lopt
import tasks
from meta_train._config import TrainConfig, trainable_mask
from meta_train._families import get_family
from meta_train._run import RunDir, atomic_write_text, replace_dir, restore_newest

__all__ = ["TrainConfig", "TrainResult", "export_weights", "make_outer_step", "train"]

_AXIS = "tasks"
#: config fields that may differ when resuming (extending a run, checkpoint cadence).
_RESUMABLE_CHANGES = ("outer_steps", "checkpoint_every", "max_to_keep", "snapshot_every")
_COUNTERS = ("skipped_steps", "dropped_instances", "resets", "nonfinite_inner")


class TrainResult(NamedTuple):
  """What :func:`train` returns (host arrays)."""
  meta_params: Any
  step: int
  counters: dict[str, int]


def make_outer_step(estimator, opt: optax.GradientTransformation, mesh: Mesh, num_tasks: int
                    ) -> Callable:
  """Builds the jitted outer step of one group.

  ``step(meta_params, opt_state, est_state, step, seed_key, inject_nan) ->
  (meta_params, opt_state, est_state, metrics)``: per-instance keys are derived
  from ``(seed_key, step)``, instances are sharded over the mesh axis, non-finite
  per-instance estimates are dropped, the average is combined with ``psum`` and
  a non-finite average is never applied.
  """
  spec = P(_AXIS)

  def local(meta_params, est_state, keys):
    grads, est_state, metrics = estimator.per_instance(meta_params, est_state, keys)
    leaves = jax.tree.leaves(grads)
    ok = jnp.ones(keys.shape[:1], bool)
    for g in leaves:
      ok &= jnp.all(jnp.isfinite(g.reshape(g.shape[0], -1)), axis=1)

    def masked_sum(g):
      mask = ok.reshape(ok.shape + (1,) * (g.ndim - 1))
      return jnp.sum(jnp.where(mask, g, 0.0), axis=0)

    gsum = jax.lax.psum(jax.tree.map(masked_sum, grads), _AXIS)
    n_ok = jax.lax.psum(jnp.sum(ok.astype(jnp.int32)), _AXIS)
    msum = {k: jax.lax.psum(jnp.sum(v.astype(jnp.float32)), _AXIS) for k, v in metrics.items()}
    return gsum, n_ok, est_state, msum

  sharded = jax.shard_map(local, mesh=mesh, in_specs=(P(), spec, spec),
                          out_specs=(P(), P(), spec, P()))

  def step_fn(meta_params, opt_state, est_state, step, seed_key, inject_nan):
    step_key = jax.random.fold_in(jax.random.wrap_key_data(seed_key), step)
    keys = jax.random.key_data(jax.random.split(step_key, num_tasks))
    keys = jax.lax.with_sharding_constraint(keys, NamedSharding(mesh, spec))
    gsum, n_ok, est_state, msum = sharded(meta_params, est_state, keys)
    grad = jax.tree.map(lambda g: g / jnp.maximum(n_ok, 1).astype(g.dtype), gsum)
    grad = jax.tree.map(lambda g: jnp.where(inject_nan, jnp.nan, g), grad)
    finite = (n_ok > 0) & jnp.all(jnp.asarray([jnp.all(jnp.isfinite(g))
                                               for g in jax.tree.leaves(grad)]))
    updates, new_opt_state = opt.update(grad, opt_state, meta_params)
    new_params = optax.apply_updates(meta_params, updates)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
    metrics = {k: v / num_tasks for k, v in msum.items()}
    metrics.update(resets=msum["resets"], nonfinite_inner=msum["nonfinite_inner"],
                   grad_norm=optax.global_norm(grad), skipped=(~finite).astype(jnp.int32),
                   valid_instances=n_ok,
                   dropped_instances=num_tasks - n_ok)
    return (keep(new_params, meta_params), keep(new_opt_state, opt_state), est_state, metrics)

  return jax.jit(step_fn, donate_argnums=(2,))


def _replicate(tree: Any, sharding: NamedSharding) -> Any:
  def put(x):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])
  return jax.tree.map(put, tree)


def _abstract(tree: Any) -> Any:
  def spec(x):
    if isinstance(x, jax.Array):
      return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
    return x
  return jax.tree.map(spec, tree)


class _Run:
  """The objects of one run, built from a config (no state)."""

  def __init__(self, config: TrainConfig, lo: lopt.LearnedOptimizer | None,
               family: tasks.TaskFamily | None, devices: Sequence[jax.Device] | None = None):
    self.config = config
    self.lo = lo if lo is not None else lopt.learned(config.lopt, **dict(config.lopt_config))
    self.family = family if family is not None else get_family(config.task_family)
    devices = np.asarray(jax.devices() if devices is None else list(devices))
    if config.num_tasks % devices.size:
      raise ValueError(f"num_tasks={config.num_tasks} must be divisible by the number of "
                       f"devices ({devices.size})")
    self.mesh = Mesh(devices, (_AXIS,))
    self.replicated = NamedSharding(self.mesh, P())
    self.sharded = NamedSharding(self.mesh, P(_AXIS))
    root = jax.random.key(config.seed)
    self.seed_key = _replicate(jax.random.key_data(jax.random.fold_in(root, 3)), self.replicated)
    k_cfg = jax.random.fold_in(root, 0)
    self.task_configs = self.family.group_configs(k_cfg, config.num_configs)
    self.estimators = [config.estimator.build(self.family.task(c), self.lo, config.unroll)
                       for c in self.task_configs]
    self.opt = optax.chain(optax.clip_by_global_norm(config.clip_norm),
                           optax.adam(config.learning_rate))
    if config.trainable is not None:   # frozen meta-params: zero gradient, hence no update
      mask = trainable_mask(jax.eval_shape(self.lo.init, jax.random.key(0)), config.trainable)
      self.opt = optax.chain(
          optax.masked(optax.set_to_zero(), jax.tree.map(lambda k: not k, mask)), self.opt)
    self.steps = [make_outer_step(e, self.opt, self.mesh, config.num_tasks)
                  for e in self.estimators]

  def initial_state(self) -> dict[str, Any]:
    config, root = self.config, jax.random.key(self.config.seed)
    if config.init_weights:
      theta = lopt.load_meta_params(self.lo, config.init_weights)
    else:
      theta = self.lo.init(jax.random.fold_in(root, 2))
    theta = _replicate(jax.device_get(theta), self.replicated)
    opt_state = jax.jit(self.opt.init, out_shardings=self.replicated)(theta)
    groups = []
    for g, est in enumerate(self.estimators):
      keys = jax.random.key_data(jax.random.split(
          jax.random.fold_in(jax.random.fold_in(root, 1), g), config.num_tasks))
      groups.append(jax.jit(est.init, out_shardings=self.sharded)(theta, keys))
    return {"meta_params": theta, "opt_state": opt_state, "groups": groups,
            "step": np.asarray(0, np.int64),
            "counters": {k: np.asarray(0, np.int64) for k in _COUNTERS}}


def _normalize_saved(saved: dict[str, Any]) -> dict[str, Any]:
  return TrainConfig.from_json(saved).to_json()


def _barrier(name: str) -> Callable[[], None] | None:
  if jax.process_count() == 1:
    return None
  from jax.experimental import multihost_utils
  return lambda: multihost_utils.sync_global_devices(name)


def train(config: TrainConfig, workdir: str | os.PathLike, *,
          lo: lopt.LearnedOptimizer | None = None, family: tasks.TaskFamily | None = None,
          callback: Callable[[int, dict[str, float]], None] | None = None,
          devices: Sequence[jax.Device] | None = None,
          log: Callable[[str], None] = print) -> TrainResult:
  """Meta-trains ``config.lopt`` on ``config.task_family``, resuming from ``workdir``.

  Example::

    cfg = meta_train.TrainConfig(lopt="mlp_lopt", task_family="digits_mlp",
                                 num_tasks=8, outer_steps=500)
    result = meta_train.train(cfg, "runs/mlp_lopt")
    opt = lopt.get("mlp_lopt", weights="runs/mlp_lopt/weights", num_steps=1000)

  Writes into ``workdir``: ``config.json`` (once), ``run.lock`` (while
  running), ``checkpoints/`` (orbax), ``metrics.jsonl`` (one JSON object per
  outer step) and, at the end, ``weights/`` (``lopt._weights.save_weights``:
  orbax + manifest, swapped in atomically). A second process on the same
  workdir is refused before any work; everything (config, optimizer, family,
  ``init_weights``) is validated before ``config.json`` is written; a damaged
  newest checkpoint is skipped (see :mod:`meta_train._run`).

  Args:
    config: the run's :class:`TrainConfig`.
    workdir: directory of the run; an existing run there is resumed.
    lo: use this learned optimizer object instead of ``lopt.learned(config.lopt)``
      (its ``name`` and ``config()`` go into the manifest).
    family: use this task family instead of ``config.task_family``.
    callback: called on process 0 after every outer step with ``(step, metrics)``
      (``step`` counts completed steps); progress printing lives there.
    devices: the devices of the mesh (default: all, across processes).
    log: printer of the occasional notice (a skipped damaged checkpoint).

  Returns:
    A :class:`TrainResult` with host meta-params, the final step and the counters.

  Raises:
    meta_train._run.RunError: the workdir holds another config, is locked by a
      live process, or none of its checkpoints restores.
  """
  is_main = jax.process_index() == 0
  run_dir = RunDir(workdir, config.to_json(), resumable=_RESUMABLE_CHANGES,
                   normalize=_normalize_saved, is_main=is_main)
  run_dir.check_config()  # read-only: a refused start writes nothing
  with run_dir:  # the lock: a second process stops here
    run = _Run(config, lo, family, devices)
    state = run.initial_state()  # validates the optimizer, family and init_weights
    run_dir.start()  # the first write: config.json
    mgr = run_dir.checkpoint_manager(config.max_to_keep)
    try:
      restored = restore_newest(mgr, _abstract(state), run_dir.path, log=log, is_main=is_main)
      if restored is not None:
        state = restored[1]
      start = int(state["step"])
      if is_main:
        run_dir.metrics.truncate(start)
      theta, counters = _loop(run, state, start, mgr, run_dir, callback)
      mgr.wait_until_finished()
    finally:
      mgr.close()
    host_theta = jax.device_get(theta)
    _save_weights(run_dir.path / "weights", run.lo, host_theta, config, is_main)
  return TrainResult(host_theta, max(start, config.outer_steps), counters)


def _loop(run: _Run, state: dict[str, Any], start: int, mgr, run_dir: RunDir,
          callback: Callable[[int, dict[str, float]], None] | None) -> tuple[Any, dict]:
  """Outer steps ``start .. outer_steps``: metrics rows, callback, checkpoints."""
  config, is_main = run.config, run_dir.is_main
  counters = {k: int(v) for k, v in state["counters"].items()}
  theta, opt_state, groups = state["meta_params"], state["opt_state"], list(state["groups"])
  nan_steps = set(config.inject_nan_steps)
  if config.snapshot_every and start == 0:
    _snapshot(run_dir, run.lo, theta, 0)
  for t in range(start, config.outer_steps):
    g = t % config.num_configs
    theta, opt_state, groups[g], metrics = run.steps[g](
        theta, opt_state, groups[g], t, run.seed_key, t in nan_steps)
    metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
    metrics["skipped_steps"] = metrics.pop("skipped")
    for k in _COUNTERS:
      counters[k] += int(round(metrics[k]))
    metrics.update(step=t + 1, group=g, **{f"total_{k}": v for k, v in counters.items()})
    if is_main:
      run_dir.metrics.append(metrics)
      if callback is not None:
        callback(t + 1, metrics)
    if config.snapshot_every and (t + 1) % config.snapshot_every == 0:
      _snapshot(run_dir, run.lo, theta, t + 1)
    if (t + 1) % config.checkpoint_every == 0 or t + 1 == config.outer_steps:
      mgr.save(t + 1, args=ocp.args.StandardSave(
          {"meta_params": theta, "opt_state": opt_state, "groups": groups,
           "step": np.asarray(t + 1, np.int64),
           "counters": {k: np.asarray(v, np.int64) for k, v in counters.items()}}))
  return theta, counters


def _snapshot(run_dir: RunDir, lo: lopt.LearnedOptimizer, theta: Any, step: int) -> None:
  """Saves ``theta`` as weights in ``snapshots/step_<step>`` (atomically replaced)."""
  from lopt._weights import save_weights

  path = run_dir.path / "snapshots" / f"step_{step:06d}"
  if run_dir.is_main:
    path.parent.mkdir(parents=True, exist_ok=True)
  replace_dir(path, lambda tmp: save_weights(tmp, lo, jax.device_get(theta),
                                             extra={"outer_step": step}),
              is_main=run_dir.is_main, barrier=_barrier("meta_train_snapshot"))


def _save_weights(path: pathlib.Path, lo: lopt.LearnedOptimizer, theta: Any,
                  config: TrainConfig, is_main: bool) -> None:
  from lopt._weights import save_weights

  replace_dir(path, lambda tmp: save_weights(tmp, lo, theta), is_main=is_main,
              barrier=_barrier("meta_train_weights"))
  if is_main:
    atomic_write_text(path.parent / "weights_info.json", json.dumps(
        {"lopt": lo.name, "lopt_config": lo.config(), "train_config": config.to_json()},
        indent=1))


def export_weights(workdir: str | os.PathLike, out: str | os.PathLike | None = None, *,
                   step: int | None = None) -> pathlib.Path:
  """Saves the meta-params of a run's checkpoint as loadable weights (orbax + manifest).

  Lets a run in progress be evaluated, e.g.
  ``lopt.get("mlp_lopt", weights=export_weights("runs/x"), num_steps=1000)``.

  Args:
    workdir: the run's directory (holds ``config.json`` and ``checkpoints/``).
    out: where to write; default ``<workdir>/weights_step<step>``.
    step: which checkpoint; default the newest.

  Returns:
    The weights directory.
  """
  workdir = pathlib.Path(workdir).resolve()
  cfg = TrainConfig.from_json(json.loads((workdir / "config.json").read_text()))
  lo = lopt.learned(cfg.lopt, **dict(cfg.lopt_config))
  with ocp.CheckpointManager(workdir / "checkpoints") as mgr:
    step = mgr.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {workdir / 'checkpoints'}")
    state = mgr.restore(step, args=ocp.args.StandardRestore())
  out = pathlib.Path(out) if out is not None else workdir / f"weights_step{step}"
  from lopt._weights import save_weights
  save_weights(out, lo, jax.device_get(state["meta_params"]),
               extra={"run": str(workdir), "outer_step": int(step)})
  return out
