r"""Train a G.pt diffusion model on a checkpoint dataset.

Command line::

  python -m meta_train.gpt.train --dataset=runs/gpt_digits_data --workdir=runs/gpt_digits \
      --steps=20000

(``python -m meta_train.gpt_train`` is the same.) Bad flag values stop at parsing
with a one-line error.

The shipped model ``lopt/weights/gpt_digits_mlp`` was trained with
``--flagfile=meta_train/configs/gpt_digits_mlp.flags`` (see ``docs/gpt.md``).

The run is resumable: orbax checkpoints of the network, its EMA, the optimizer
state and the step go to ``<workdir>/checkpoints`` every ``--checkpoint_every``
steps; rerunning the same command continues from the latest one that restores
with the same batches (they are drawn from ``(seed, step)``); the workdir is
locked while a run uses it (:mod:`meta_train._run`). A non-finite loss or gradient is
skipped (the update is not applied) and counted. Progress lines with an ETA go
to stdout and metrics as JSON lines to ``<workdir>/metrics.jsonl``; the EMA
weights are exported with their manifest to ``<workdir>/weights`` (loadable with
``lopt.get("gpt", weights=...)``) and optionally copied to ``--export``.

Held-out runs (``--holdout_runs``, chosen by the seed) are never trained on;
their ids go to ``<workdir>/split.json`` for :mod:`meta_train.gpt.evaluate`.

Reference: Peebles et al. 2022, arXiv 2209.12892.
"""

from __future__ import annotations

import functools
import json
import pathlib
import shutil
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import app, flags

import tasks
from lopt.gpt import GPT, best_value, save_gpt, use_log_metric
from meta_train._run import Eta, RunDir, RunError, atomic_write_text, replace_dir, restore_newest
from meta_train.gpt._data import load_dataset
from meta_train.gpt._pairs import permutation_index, sample_pairs, task_grad_fn

__all__ = ["DEFAULT_TRAIN_CONFIG", "RESUMABLE_KEYS", "check_train_config", "define_flags", "run",
           "split_runs", "task_grad_fn", "train_gpt"]

DEFAULT_TRAIN_CONFIG: dict[str, Any] = {
    "steps": 20000, "batch_size": 64, "learning_rate": 4e-4, "warmup_steps": 500,
    "weight_decay": 0.01, "grad_clip": 1.0, "ema_decay": 0.999, "holdout_runs": 32,
    "permute_prob": 0.5, "p_from_init": 0.25, "seed": 0, "log_every": 100,
    "checkpoint_every": 1000, "eval_every": 1000, "time_limit_min": 0.0,
    # model
    "chunk_size": 128, "d_model": 128, "num_layers": 4, "num_heads": 4, "mlp_ratio": 4,
    "num_timesteps": 1000, "schedule": "linear", "predict_delta": True, "skip": False,
    "metric": "test_loss", "layout": "chunk", "fuse_start": False, "metric_max_freq": 1000.0,
    "condition_grad": False, "prompt_dropout": 0.0,
}

_MODEL_KEYS = ("chunk_size", "d_model", "num_layers", "num_heads", "mlp_ratio", "num_timesteps",
               "schedule", "predict_delta", "skip", "metric", "layout", "fuse_start",
               "metric_max_freq", "condition_grad", "prompt_dropout")


def split_runs(run_ids: np.ndarray, holdout: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Splits dataset run positions into (train, held-out) by a seeded permutation."""
  if not 0 <= holdout < len(run_ids):
    raise ValueError(f"holdout_runs={holdout} must be in [0, {len(run_ids)})")
  perm = np.random.default_rng([seed, 7]).permutation(len(run_ids))
  return np.sort(perm[holdout:]), np.sort(perm[:holdout])


class _Batcher:
  """Draws augmented (start, target) batches deterministically from ``(seed, step)``."""

  def __init__(self, params, metric, spec, cfg, runs):
    self.params, self.metric, self.spec, self.cfg, self.runs = params, metric, spec, cfg, runs

  def __call__(self, step: int, *, augment: bool = True):
    cfg = self.cfg
    rng = np.random.default_rng([cfg["seed"], step])
    r, i, j = sample_pairs(rng, len(self.runs), self.params.shape[1], cfg["batch_size"],
                           p_from_init=cfg["p_from_init"])
    r = self.runs[r]
    start, target = self.params[r, i], self.params[r, j]
    if augment and cfg["permute_prob"] > 0:
      for b in np.flatnonzero(rng.random(len(r)) < cfg["permute_prob"]):
        idx = permutation_index(self.spec, rng)
        start[b], target[b] = start[b, idx], target[b, idx]
    return (jnp.asarray(start), jnp.asarray(target), jnp.asarray(self.metric[r, i]),
            jnp.asarray(self.metric[r, j]))


def _make_step(model: GPT, tx: optax.GradientTransformation, ema_decay: float,
               grad_fn: Callable[[jax.Array, jax.Array], jax.Array] | None = None):
  @jax.jit
  def step(state, stats, key, batch):
    start, target, m_start, m_target = batch
    g = None
    if grad_fn is not None:
      key, gkey = jax.random.split(key)
      g = grad_fn(start, gkey)
    loss, grads = jax.value_and_grad(model.loss)(state["params"], stats, key, start, target,
                                                 m_start, m_target, g)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    ema = jax.tree.map(lambda e, p: ema_decay * e + (1 - ema_decay) * p, state["ema"], params)
    finite = jnp.isfinite(loss) & jnp.all(jnp.asarray(
        [jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
    new = {"params": params, "ema": ema, "opt_state": opt_state}
    new = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new,
                       {k: state[k] for k in new})
    new["step"] = state["step"] + 1
    new["nonfinite"] = state["nonfinite"] + (~finite).astype(jnp.int32)
    return new, {"loss": loss, "finite": finite}
  return step


#: ``DEFAULT_TRAIN_CONFIG`` keys that may change when a run is resumed.
RESUMABLE_KEYS = ("steps", "log_every", "checkpoint_every", "eval_every", "time_limit_min")

#: ``key: (check, requirement)`` of the numeric training settings.
_BOUNDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "steps": (lambda v: v >= 1, ">= 1"), "batch_size": (lambda v: v >= 1, ">= 1"),
    "learning_rate": (lambda v: v > 0, "> 0"), "warmup_steps": (lambda v: v >= 0, ">= 0"),
    "weight_decay": (lambda v: v >= 0, ">= 0"), "grad_clip": (lambda v: v > 0, "> 0"),
    "ema_decay": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "holdout_runs": (lambda v: v >= 0, ">= 0"),
    "permute_prob": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "p_from_init": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "log_every": (lambda v: v >= 1, ">= 1"), "checkpoint_every": (lambda v: v >= 1, ">= 1"),
    "eval_every": (lambda v: v >= 1, ">= 1"), "time_limit_min": (lambda v: v >= 0, ">= 0"),
    "prompt_dropout": (lambda v: 0 <= v < 1, "in [0, 1)"),
}


def check_train_config(config: dict[str, Any]) -> dict[str, Any]:
  """The full training config (defaults filled in) after checking it.

  Raises:
    ValueError: an unknown key (the message lists the valid ones) or a value out
      of range. The model's own settings are checked by :class:`lopt.gpt.GPT`.
  """
  cfg = {**DEFAULT_TRAIN_CONFIG, **config}
  unknown = set(cfg) - set(DEFAULT_TRAIN_CONFIG)
  if unknown:
    raise ValueError(f"unknown config keys {sorted(unknown)}; valid: "
                     f"{sorted(DEFAULT_TRAIN_CONFIG)}")
  for key, (ok, requirement) in _BOUNDS.items():
    if not ok(cfg[key]):
      raise ValueError(f"{key} must be {requirement}, got {cfg[key]}")
  return cfg


def _normalize_saved(saved: dict[str, Any]) -> dict[str, Any]:
  """An older run's ``config.json`` lacks keys added since: they had their defaults."""
  return {**DEFAULT_TRAIN_CONFIG, **saved}


def train_gpt(dataset: str, workdir: str, config: dict[str, Any] | None = None, *,
              export: str | None = None, log: Callable[[str], None] = print) -> pathlib.Path:
  """Trains (or resumes) a G.pt model; returns the exported weights directory.

  Example::

    path = train_gpt("runs/gpt_digits_data", "runs/gpt_digits", {"steps": 2000})
    opt = lopt.get("gpt", weights=str(path), task=tasks.get("digits_mlp", hidden=(32,)))

  The workdir is a resumable run (:mod:`meta_train._run`): ``config.json`` is
  written once (a resumed run may change only :data:`RESUMABLE_KEYS`), a second
  process is refused, ``metrics.jsonl`` is cut back to the restored step, a
  damaged newest checkpoint is skipped and ``weights/`` is replaced atomically.

  Args:
    dataset: a checkpoint dataset directory (:mod:`meta_train.gpt.dataset`), or several
      separated by commas (see :func:`meta_train.gpt.load_dataset`).
    workdir: output directory (checkpoints, metrics, weights, split).
    config: overrides of :data:`DEFAULT_TRAIN_CONFIG`.
    export: also copy the final weights directory here (replaced atomically).
    log: progress printer.

  Raises:
    ValueError: a bad config, or a workdir holding a run with another config.
    meta_train._run.RunError: the workdir is in use by another process.
  """
  cfg = check_train_config(config or {})
  run_dir = RunDir(workdir, cfg, resumable=RESUMABLE_KEYS, normalize=_normalize_saved)
  run_dir.check_config()
  with run_dir:
    return _train(dataset, cfg, run_dir, export, log)


def _train(dataset: str, cfg: dict[str, Any], run_dir: RunDir, export: str | None,
           log: Callable[[str], None]) -> pathlib.Path:
  data = load_dataset(dataset)
  if cfg["metric"] not in data.metrics:
    raise ValueError(f"metric {cfg['metric']!r} not in dataset; has {sorted(data.metrics)}")
  workdir_p = run_dir.path
  spec = data.index["param_spec"]
  train_runs, held_runs = split_runs(data.run_ids, cfg["holdout_runs"], cfg["seed"])
  metric = data.metrics[cfg["metric"]]
  # log(loss) for positive losses; returns (and -return losses) are embedded as they are.
  model = GPT(spec, **{k: cfg[k] for k in _MODEL_KEYS},
              log_metric=use_log_metric(cfg["metric"], metric[train_runs]))
  run_dir.start()  # everything is valid: the first write
  grad_fn = sample_grads = None
  if cfg["condition_grad"]:
    task = tasks.get(data.index["task"], **data.index["task_config"])
    grad_fn = jax.jit(task_grad_fn(task, model.tokenizer))
    # Gradient scales from 2,048 random training checkpoints.
    rng = np.random.default_rng([cfg["seed"], 11])
    r = train_runs[rng.integers(0, len(train_runs), 2048)]
    c = rng.integers(0, data.params.shape[1], 2048)
    sample_grads = np.asarray(grad_fn(jnp.asarray(data.params[r, c]), jax.random.key(11)))
  stats = {k: jnp.asarray(v) for k, v in
           model.compute_stats(data.params[train_runs], metric[train_runs],
                               sample_grads).items()}
  best = best_value(cfg["metric"], metric[train_runs])  # the max for a return
  # What the optimizer checks its use against: the task's every setting, the metric range.
  trained = {"task": _trained_for(data.index), "best_metric": best, "metric_range": (
      float(np.nanmin(metric[train_runs])), float(np.nanmax(metric[train_runs])))}
  atomic_write_text(workdir_p / "split.json", json.dumps(
      {"dataset": ",".join(str(pathlib.Path(p).resolve()) for p in str(dataset).split(",")),
       "seed": cfg["seed"],
       "train_run_ids": data.run_ids[train_runs].tolist(),
       "heldout_run_ids": data.run_ids[held_runs].tolist()}))

  sched = optax.warmup_cosine_decay_schedule(0.0, cfg["learning_rate"], cfg["warmup_steps"],
                                             max(cfg["steps"], cfg["warmup_steps"] + 1),
                                             cfg["learning_rate"] * 0.1)
  tx = optax.chain(optax.clip_by_global_norm(cfg["grad_clip"]),
                   optax.adamw(sched, weight_decay=cfg["weight_decay"]))
  net = model.init(jax.random.key(cfg["seed"]))
  state = {"params": net, "ema": net, "opt_state": tx.init(net),
           "step": jnp.zeros((), jnp.int32), "nonfinite": jnp.zeros((), jnp.int32)}
  export_fn = functools.partial(_export, workdir_p / "weights", model, stats, data, dataset,
                                cfg, trained, held_runs)
  mngr = run_dir.checkpoint_manager(max_to_keep=2)
  try:
    restored = restore_newest(mngr, state, workdir_p, log=log)
    if restored is not None:
      state = restored[1]
      log(f"gpt_train: resumed from step {int(state['step'])}")
    run_dir.metrics.truncate(int(state["step"]))
    state = _loop(model, tx, cfg, state, stats, data, metric, train_runs, held_runs, grad_fn,
                  mngr, run_dir, log, export_fn)
    mngr.wait_until_finished()
  finally:
    mngr.close()
  out = export_fn(state)
  if export:
    dst = pathlib.Path(export)
    replace_dir(dst, lambda tmp: shutil.copytree(out, tmp))
    log(f"gpt_train: exported weights to {dst}")
  return out


def _trained_for(index: dict[str, Any]) -> dict[str, Any]:
  """The manifest's task: its registry name and all of its ``config()`` (defaults included)."""
  name, config = index["task"], index["task_config"]
  try:
    config = tasks.get(name, **config).config()
  except Exception:  # noqa: BLE001 - e.g. TFDS data not prepared here: the dataset's settings
    pass
  return {"name": name, "config": config}


def _export(path, model, stats, data, dataset, cfg, trained, held_runs, state) -> pathlib.Path:
  """Writes the EMA weights and their manifest to ``path`` (swapped in atomically)."""
  replace_dir(path, lambda tmp: save_gpt(
      tmp, model, state["ema"], stats, **trained,
      extra={"dataset": str(pathlib.Path(dataset)), "train_config": cfg,
             "steps": int(state["step"]), "nonfinite_steps": int(state["nonfinite"]),
             "heldout_run_ids": data.run_ids[held_runs].tolist()}))
  return path.resolve()


def _loop(model, tx, cfg, state, stats, data, metric, train_runs, held_runs, grad_fn, mngr,
          run_dir, log, export_fn):
  """Training steps from the restored one to ``cfg["steps"]``: metrics, checkpoints."""
  step_fn = _make_step(model, tx, cfg["ema_decay"], grad_fn)
  spec = data.index["param_spec"]
  batcher = _Batcher(data.params, metric, spec, cfg, train_runs)
  held = _Batcher(data.params, metric, spec, {**cfg, "seed": cfg["seed"] + 1}, held_runs)
  # The held-out loss is the prompted one (no prompt dropout), comparable across runs.
  eval_fn = jax.jit(functools.partial(model.loss, prompt_dropout=0.0))
  n_params = sum(x.size for x in jax.tree.leaves(state["params"]))
  log(f"gpt_train: {n_params} network params, {model.tokenizer.num_tokens} tokens of "
      f"{model.tokenizer.chunk_size}; {len(train_runs)} train / {len(held_runs)} held-out runs")
  start_step = int(state["step"])
  eta, run_loss = Eta(cfg["steps"], start_step), []
  for s in range(start_step, cfg["steps"]):
    key = jax.random.fold_in(jax.random.key(cfg["seed"]), s)
    state, m = step_fn(state, stats, key, batcher(s))
    run_loss.append(m["loss"])
    done = s + 1
    if done % cfg["log_every"] == 0 or done == cfg["steps"]:
      losses = np.asarray(jax.device_get(run_loss))
      run_loss = []
      rec = {"step": done, "loss": float(np.nanmean(np.where(np.isfinite(losses), losses,
                                                             np.nan))),
             "nonfinite": int(state["nonfinite"]), "sec_per_step": 1 / eta.rate(done)}
      if done % cfg["eval_every"] == 0 or done == cfg["steps"]:
        hb = held(0, augment=False)
        hg = None if grad_fn is None else grad_fn(hb[0], jax.random.key(1))
        rec["heldout_loss"] = float(eval_fn(state["ema"], stats, jax.random.key(0), *hb, hg))
      run_dir.metrics.append(rec)
      log(f"gpt_train: step {done}/{cfg['steps']} loss {rec['loss']:.4f} "
          + (f"heldout {rec['heldout_loss']:.4f} " if "heldout_loss" in rec else "")
          + f"nonfinite {rec['nonfinite']} {eta(done)}")
    if done % cfg["checkpoint_every"] == 0 or done == cfg["steps"]:
      mngr.save(done, args=ocp.args.StandardSave(state))
      export_fn(state)
    if cfg["time_limit_min"] and time.monotonic() - eta.t0 > 60 * cfg["time_limit_min"]:
      log(f"gpt_train: time limit reached at step {done}; stopping")
      if done % cfg["checkpoint_every"]:
        mngr.save(done, args=ocp.args.StandardSave(state))
      break
  return state


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
  """Defines this command line's flags in ``fv``: one per training setting, validated."""
  flags.DEFINE_string("dataset", None, "Checkpoint dataset directory (or several, "
                      "comma-separated).", required=True, flag_values=fv)
  flags.DEFINE_string("workdir", None, "Output directory (resumed when it holds a run).",
                      required=True, flag_values=fv)
  flags.DEFINE_string("export", None, "Also copy the final weights here.", flag_values=fv)
  for key, default in DEFAULT_TRAIN_CONFIG.items():
    help_ = f"{key} (default {default})" + (f"; must be {_BOUNDS[key][1]}" if key in _BOUNDS
                                             else "") + "."
    if isinstance(default, bool):
      flags.DEFINE_bool(key, default, help_, flag_values=fv)
    elif isinstance(default, int):
      flags.DEFINE_integer(key, default, help_, flag_values=fv)
    elif isinstance(default, float):
      flags.DEFINE_float(key, default, help_, flag_values=fv)
    else:
      flags.DEFINE_string(key, default, help_, flag_values=fv)
    if key in _BOUNDS:
      flags.register_validator(key, functools.partial(_check_flag, key), flag_values=fv)


def _check_flag(key: str, value: Any) -> bool:
  try:
    check_train_config({key: value})
  except ValueError as e:
    raise flags.ValidationError(str(e)) from None
  return True


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  cfg = {k: getattr(f, k) for k in DEFAULT_TRAIN_CONFIG}
  try:
    train_gpt(f.dataset, f.workdir, cfg, export=f.export)
  except (RunError, ValueError, FileNotFoundError) as e:
    # not a flag problem (those stop at parsing): one line, no usage text
    sys.exit(f"gpt.train: {e}")


def run() -> None:
  """The command line: ``python -m meta_train.gpt.train``."""
  define_flags()
  app.run(main)


if __name__ == "__main__":
  run()
