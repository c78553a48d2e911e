r"""Checkpoint datasets for G.pt: many training runs of one task architecture.

Each run starts from ``task.init`` scaled by a random factor and trains with a
registry optimizer (``lopt.get``) at a random log-uniform learning rate. Runs of
one shard share the optimizer and are vmapped, so a shard is one compiled
``lax.scan``. Every ``steps_per_run / (checkpoints_per_run - 1)`` steps the
flattened parameters and metrics on the full train and test splits are saved.

Command line::

  python -m meta_train.gpt.dataset --task=digits_mlp --runs=512 \
      --checkpoints_per_run=21 --steps_per_run=1000 --out=runs/gpt_digits_data

  python -m meta_train.gpt.dataset --task=cartpole --runs=64 \
      --checkpoints_per_run=11 --steps_per_run=200 --out=runs/gpt_cartpole_data

(``python -m meta_train.gpt_dataset`` is the same.) Bad flags stop at parsing.

**Runs from the model's own samples** (``--start_from=<G.pt weights>``): each run
starts from one G.pt update of its scaled init (prompted with ``--start_prompt``,
default the model's recorded target, at its recorded temperature and guidance)
instead of the init, so a model retrained on the data learns to improve its own
samples (see :mod:`meta_train.gpt._start`)::

  python -m meta_train.gpt.dataset --task=digits_mlp --runs=512 --steps_per_run=100 \
      --checkpoints_per_run=21 --init_scale_min=0.25 --init_scale_max=4 \
      --start_from=lopt/weights/gpt_digits_mlp --out=runs/gpt_digits_data_self

The model must be one of the same task (``--task``, ``--task_config``); without
``--start_from`` the dataset is what it always was.

On-disk format (``format_version`` 1): ``index.json`` (task and config, ``param_spec``,
checkpoint steps, metric names, seed, init scales, and per shard the optimizer and each
run's id, learning rate and init scale; ``start_from`` when given) and ``shard_*.npz``
(``params`` ``(runs, checkpoints, num_params)``, one ``(runs, checkpoints)`` array per
metric, ``run_ids``), described field by field in docs/gpt.md, section 1. Load with
:func:`meta_train.gpt.load_dataset`. ``--lr_ranges=adam:5e-4:5e-3`` replaces an
optimizer's learning-rate range (``DEFAULT_LR_RANGES``) or adds one.

Generation is deterministic given ``--seed`` (run ``i`` uses
``fold_in(key(seed), i)``) and resumable: shards are written atomically and
existing ones are skipped, so rerunning the same command finishes a killed job
(other settings, ``--start_from`` included, on an existing directory are refused).
Diverged runs are kept (non-finite values) and dropped by the loader.

Reference: Peebles et al. 2022, arXiv 2209.12892, Sec. 4 (checkpoint datasets).
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

import lopt
import tasks
from lopt.gpt import param_spec
from lopt.gpt._checks import task_info
from meta_train.gpt._data import FORMAT_VERSION, shard_name
from meta_train.gpt._start import (
  StartFrom,
  check_start_from,
  describe_start,
  load_start_from,
  sample_start,
)

__all__ = ["DEFAULT_LR_RANGES", "DEFAULT_TASK_CONFIGS", "define_flags", "generate", "run"]

#: Log-uniform learning-rate ranges per registry optimizer.
DEFAULT_LR_RANGES: dict[str, tuple[float, float]] = {
    "adam": (2e-3, 3e-2),
    "sgd": (0.1, 1.0),
    "momentum": (0.01, 0.1),
    "rmsprop": (1e-3, 1e-2),
    "nesterov": (0.01, 0.1),
    "adamw": (2e-3, 3e-2),
}

#: Task configurations used when none is given: small nets G.pt can model on a CPU.
DEFAULT_TASK_CONFIGS: dict[str, dict[str, Any]] = {
    "digits_mlp": {"hidden": [32]},
    "cartpole": {"hidden": [8], "horizon": 200, "batch_size": 8},
}


def _eval_batch(task, split: str, key):
  return task.eval_batch(key, split)


def _shard_fn(task, opt_name: str, num_segments: int, interval: int,
              start: StartFrom | None = None):
  """A jitted ``(keys, lrs, scales) -> (params, metrics)`` for one shard's runs.

  With ``start`` each run starts from one G.pt update of its scaled init.
  """

  def flat(p):
    return jnp.concatenate([jnp.ravel(x).astype(jnp.float32) for x in jax.tree.leaves(p)])

  def measure(params, key):
    k_tr, k_te = jax.random.split(key)
    out = {}
    for split, k in (("train", k_tr), ("test", k_te)):
      for name, v in task.metrics(params, k, _eval_batch(task, split, k)).items():
        out[f"{split}_{name}"] = v.astype(jnp.float32)
    return out

  def run(key, lr, scale):
    k_init, k_train, k_eval = jax.random.split(key, 3)
    params = jax.tree.map(lambda p: p * scale, task.init(k_init))
    if start is not None:
      params = sample_start(start, task, params, measure(params, k_eval), key)
    tx = lopt.get(opt_name, learning_rate=lr)
    state = tx.init(params)

    def segment(carry, k):
      params, state = carry
      def step(c, kk):
        p, s = c
        p, s, _ = tasks.train_step(task, tx, p, s, kk)
        return (p, s), None
      (params, state), _ = jax.lax.scan(step, (params, state), jax.random.split(k, interval))
      return (params, state), (flat(params), measure(params, jax.random.fold_in(k_eval, 1)))

    first = (flat(params), measure(params, k_eval))
    _, (ps, ms) = jax.lax.scan(segment, (params, state),
                               jax.random.split(k_train, num_segments))
    ps = jnp.concatenate([first[0][None], ps])
    ms = {k: jnp.concatenate([first[1][k][None], v]) for k, v in ms.items()}
    return ps, ms

  return jax.jit(jax.vmap(run))


def _plan(num_runs: int, runs_per_shard: int, optimizers: Sequence[str], seed: int,
          init_scale_range: tuple[float, float], lr_ranges: dict[str, tuple[float, float]]):
  """Deterministic per-shard plan: optimizer, and per run its id, lr and init scale."""
  rng = np.random.default_rng(seed)
  shards = []
  for s, start in enumerate(range(0, num_runs, runs_per_shard)):
    opt = optimizers[s % len(optimizers)]
    lo, hi = lr_ranges[opt]
    runs = []
    for r in range(start, min(num_runs, start + runs_per_shard)):
      lr = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
      scale = float(np.exp(rng.uniform(*np.log(init_scale_range))))
      runs.append({"run_id": r, "learning_rate": lr, "init_scale": scale})
    shards.append({"file": shard_name(s), "optimizer": opt, "runs": runs})
  return shards


def _parse_lr_ranges(items: Sequence[str]) -> dict[str, tuple[float, float]]:
  """``["adam:5e-4:5e-3", ...]`` -> ``{"adam": (5e-4, 5e-3)}``; ``ValueError`` names a bad item."""
  out: dict[str, tuple[float, float]] = {}
  for item in items:
    parts = str(item).split(":")
    try:
      if len(parts) != 3:
        raise ValueError
      lo, hi = float(parts[1]), float(parts[2])
    except ValueError:
      raise ValueError(f"learning-rate range {item!r} is not optimizer:min:max "
                       f"(e.g. adam:5e-4:5e-3)") from None
    if not 0 < lo <= hi < float("inf"):
      raise ValueError(f"learning-rate range {item!r} must satisfy 0 < min <= max")
    if parts[0] in out:
      raise ValueError(f"learning-rate range of {parts[0]!r} given twice")
    out[parts[0]] = (lo, hi)
  return out


def _check_settings(*, runs: int, runs_per_shard: int, checkpoints_per_run: int,
                    steps_per_run: int, optimizers: Sequence[str],
                    init_scale_range: tuple[float, float],
                    lr_ranges: dict[str, tuple[float, float]]) -> None:
  """Raises ``ValueError`` naming the first bad setting of :func:`generate`."""
  for name, value in (("runs", runs), ("runs_per_shard", runs_per_shard),
                      ("steps_per_run", steps_per_run)):
    if value < 1:
      raise ValueError(f"{name} must be >= 1, got {value}")
  if checkpoints_per_run < 2 or steps_per_run % (checkpoints_per_run - 1):
    raise ValueError(f"steps_per_run ({steps_per_run}) must be a positive multiple of "
                     f"checkpoints_per_run - 1 ({checkpoints_per_run - 1})")
  lo, hi = init_scale_range
  if not 0 < lo <= hi:
    raise ValueError(f"init scale range must satisfy 0 < min <= max, got {lo}, {hi}")
  if not optimizers:
    raise ValueError("optimizers must name at least one optimizer")
  unknown = sorted(set(lr_ranges) - set(lopt.available()))
  if unknown:
    raise ValueError(f"learning-rate range for unknown optimizer {unknown[0]!r}; known: "
                     f"{', '.join(sorted(lopt.available()))}")
  for o in optimizers:
    if o not in lr_ranges:
      raise ValueError(f"no learning-rate range for optimizer {o!r} (give one, e.g. "
                       f"lr_ranges {o}:1e-3:1e-2); ranges exist for {sorted(lr_ranges)}")


def generate(out: str | os.PathLike, *, task: str = "digits_mlp",
             task_config: dict[str, Any] | None = None, runs: int = 512,
             runs_per_shard: int = 32, checkpoints_per_run: int = 21,
             steps_per_run: int = 1000, optimizers: Sequence[str] = ("adam", "sgd", "momentum",
                                                                     "rmsprop"),
             init_scale_range: tuple[float, float] = (0.5, 2.0), seed: int = 0,
             lr_ranges: dict[str, tuple[float, float]] | None = None,
             start_from: str | os.PathLike | None = None, start_prompt: float | None = None,
             log: Callable[[str], None] = print) -> dict[str, Any]:
  """Generates (or finishes) a checkpoint dataset in ``out``; see the module docstring.

  Example::

    index = generate("runs/data", task="digits_mlp", runs=64, steps_per_run=200)

  Args:
    out: the dataset directory (created).
    task: a ``tasks`` registry name.
    task_config: keyword arguments of ``tasks.get`` (default: ``DEFAULT_TASK_CONFIGS``).
    runs: number of training runs.
    runs_per_shard: runs per ``.npz`` shard (vmapped together; one optimizer).
    checkpoints_per_run: checkpoints per run, the initialization included.
    steps_per_run: training steps per run; a multiple of ``checkpoints_per_run - 1``.
    optimizers: registry optimizers, cycled over shards.
    init_scale_range: log-uniform range of the factor multiplying ``task.init``.
    seed: the dataset seed.
    lr_ranges: per-optimizer log-uniform learning-rate ranges (default
      ``DEFAULT_LR_RANGES``).
    start_from: a G.pt weights directory of this task: each run starts from one
      sample of it at its scaled init (:mod:`meta_train.gpt._start`); None or ""
      starts from the scaled inits.
    start_prompt: the prompt of those samples (default: the model's recorded target).
    log: progress printer.

  Returns:
    The index (also written to ``out/index.json``).

  Raises:
    ValueError: a bad setting; ``start_from`` not a G.pt model of this task; an
      existing ``out`` written with other settings (or another ``start_from``).
  """
  lr_ranges = {**DEFAULT_LR_RANGES, **(lr_ranges or {})}
  _check_settings(runs=runs, runs_per_shard=runs_per_shard,
                  checkpoints_per_run=checkpoints_per_run, steps_per_run=steps_per_run,
                  optimizers=optimizers, init_scale_range=init_scale_range, lr_ranges=lr_ranges)
  if start_prompt is not None and not start_from:
    raise ValueError("start_prompt needs start_from (the G.pt model it prompts)")
  if task_config is None:
    task_config = dict(DEFAULT_TASK_CONFIGS.get(task, {}))
  t = tasks.get(task, **task_config)
  example = t.init(jax.random.key(0))
  spec = param_spec(example)
  interval = steps_per_run // (checkpoints_per_run - 1)
  key0 = jax.random.fold_in(jax.random.key(seed), 0)
  metric_names = sorted(jax.eval_shape(
      lambda p: {f"{s}_{k}": v for s in ("train", "test")
                 for k, v in t.metrics(p, key0, _eval_batch(t, s, key0)).items()},
      example))
  start = None  # loaded (and checked against the task) before anything is written
  if start_from:
    start = load_start_from(start_from, task_info(t), metrics=metric_names, prompt=start_prompt)
  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  index = {
      "format_version": FORMAT_VERSION, "task": task, "task_config": task_config,
      "param_spec": spec, "num_params": int(sum(np.prod(s["shape"]) for s in spec)),
      "steps": [i * interval for i in range(checkpoints_per_run)], "metrics": metric_names,
      "seed": seed, "init_scale_range": list(init_scale_range),
      "shards": _plan(runs, runs_per_shard, list(optimizers), seed, init_scale_range,
                      lr_ranges),
  }
  if start is not None:
    index["start_from"] = start.record
  index_file = out / "index.json"
  if index_file.exists():
    old = json.loads(index_file.read_text())
    if old.get("start_from") != json.loads(json.dumps(index.get("start_from"))):
      raise ValueError(f"{index_file} was written with start_from "
                       f"{describe_start(old.get('start_from'))}, not "
                       f"{describe_start(index.get('start_from'))}; use a new --out or the "
                       f"same --start_from to resume")
    if {k: v for k, v in old.items()} != json.loads(json.dumps(index)):
      raise ValueError(f"{index_file} exists with different settings; use a new --out or the "
                       f"same flags to resume")
  index_file.write_text(json.dumps(index, indent=1))
  fns: dict[str, Any] = {}
  t0, done = time.time(), 0
  todo = [s for s in index["shards"] if not (out / s["file"]).exists()]
  log(f"gpt_dataset: {len(index['shards']) - len(todo)} of {len(index['shards'])} shards "
      f"already done in {out}")
  for shard in todo:
    opt = shard["optimizer"]
    if opt not in fns:
      fns[opt] = _shard_fn(t, opt, checkpoints_per_run - 1, interval, start)
    ids = [r["run_id"] for r in shard["runs"]]
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(seed), i))(jnp.asarray(ids))
    lrs = jnp.asarray([r["learning_rate"] for r in shard["runs"]], jnp.float32)
    scales = jnp.asarray([r["init_scale"] for r in shard["runs"]], jnp.float32)
    ps, ms = fns[opt](keys, lrs, scales)
    arrays = {"params": np.asarray(ps, np.float32), "run_ids": np.asarray(ids, np.int32)}
    arrays.update({k: np.asarray(v, np.float32) for k, v in ms.items()})
    tmp = out / (shard["file"] + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, out / shard["file"])
    done += 1
    el = time.time() - t0
    eta = el / done * (len(todo) - done)
    final = {k: float(np.nanmedian(v[:, -1])) for k, v in arrays.items()
             if k not in ("params", "run_ids")}
    log(f"gpt_dataset: shard {shard['file']} ({opt}, {len(ids)} runs) done "
        f"[{done}/{len(todo)}] elapsed {el:.0f}s ETA {eta:.0f}s; median final {final}")
  return index


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
  """Defines this command line's flags in ``fv``, with their validators."""
  flags.DEFINE_string("out", None, "Output dataset directory.", required=True, flag_values=fv)
  flags.DEFINE_enum("task", "digits_mlp", tasks.available(), "Task registry name.",
                    flag_values=fv)
  flags.DEFINE_string("task_config", "", "JSON task config (default: a small net per task).",
                      flag_values=fv)
  flags.DEFINE_integer("runs", 512, "Number of training runs.", lower_bound=1, flag_values=fv)
  flags.DEFINE_integer("runs_per_shard", 32, "Runs per shard (vmapped together).",
                       lower_bound=1, flag_values=fv)
  flags.DEFINE_integer("checkpoints_per_run", 21, "Checkpoints per run (init included).",
                       lower_bound=2, flag_values=fv)
  flags.DEFINE_integer("steps_per_run", 1000, "Training steps per run; a multiple of "
                       "--checkpoints_per_run - 1.", lower_bound=1, flag_values=fv)
  flags.DEFINE_list("optimizers", ["adam", "sgd", "momentum", "rmsprop"],
                    f"Registry optimizers, cycled over shards; with a default range: "
                    f"{sorted(DEFAULT_LR_RANGES)} (others need --lr_ranges).",
                    flag_values=fv)
  flags.DEFINE_float("init_scale_min", 0.5, "Smallest init scale factor (> 0).", flag_values=fv)
  flags.DEFINE_float("init_scale_max", 2.0, "Largest init scale factor.", flag_values=fv)
  flags.DEFINE_integer("seed", 0, "Dataset seed.", flag_values=fv)
  flags.DEFINE_string("start_from", "", "G.pt weights directory of this task: each run starts "
                      "from one sample of it at its scaled init (default: the scaled init).",
                      flag_values=fv)
  flags.DEFINE_float("start_prompt", None, "Prompt of the --start_from samples (default: the "
                     "model's recorded target, else its best_metric).", flag_values=fv)
  dflt = ", ".join(f"{k}:{lo:g}:{hi:g}" for k, (lo, hi) in DEFAULT_LR_RANGES.items())
  flags.DEFINE_list("lr_ranges", [], f"optimizer:min:max log-uniform learning-rate ranges "
                    f"replacing the defaults ({dflt}) or adding one.", flag_values=fv)

  def check(d):
    try:
      _check_settings(runs=d["runs"], runs_per_shard=d["runs_per_shard"],
                      checkpoints_per_run=d["checkpoints_per_run"],
                      steps_per_run=d["steps_per_run"], optimizers=d["optimizers"],
                      init_scale_range=(d["init_scale_min"], d["init_scale_max"]),
                      lr_ranges={**DEFAULT_LR_RANGES, **_parse_lr_ranges(d["lr_ranges"])})
      if d["task_config"] and not isinstance(json.loads(d["task_config"]), dict):
        raise ValueError("--task_config must be a JSON object")
      if d["start_prompt"] is not None and not d["start_from"]:
        raise ValueError("--start_prompt needs --start_from (the G.pt model it prompts)")
      if d["start_from"]:
        cfg = json.loads(d["task_config"]) if d["task_config"] else DEFAULT_TASK_CONFIGS.get(
            d["task"], {})
        check_start_from(d["start_from"], task_info(tasks.get(d["task"], **cfg)))
    except (ValueError, TypeError) as e:  # json.JSONDecodeError is a ValueError
      raise flags.ValidationError(str(e)) from None
    return True

  flags.register_multi_flags_validator(
      ["runs", "runs_per_shard", "checkpoints_per_run", "steps_per_run", "optimizers",
       "init_scale_min", "init_scale_max", "task", "task_config", "start_from",
       "start_prompt", "lr_ranges"], check, flag_values=fv)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  try:
    generate(f.out, task=f.task,
             task_config=json.loads(f.task_config) if f.task_config else None,
             runs=f.runs, runs_per_shard=f.runs_per_shard,
             checkpoints_per_run=f.checkpoints_per_run, steps_per_run=f.steps_per_run,
             optimizers=f.optimizers, init_scale_range=(f.init_scale_min, f.init_scale_max),
             seed=f.seed, lr_ranges=_parse_lr_ranges(f.lr_ranges),
             start_from=f.start_from or None, start_prompt=f.start_prompt)
  except (ValueError, TypeError) as e:  # e.g. an index of other settings, a bad task_config
    sys.exit(f"gpt.dataset: {e}")


def run() -> None:
  """The command line: ``python -m meta_train.gpt.dataset``."""
  define_flags()
  app.run(main)


if __name__ == "__main__":
  run()
