"""Meta-gradient signal-to-noise: how much of one meta-training step is signal.

::

  python -m benchmarks.meta_snr --config=meta_train/configs/combo_lopt_broad_long.flags \\
      --weights=lopt/weights/layerwise_combo_lopt --num_tasks=32
  python -m benchmarks.meta_snr --config=meta_train/configs/mlp_lopt_broad.flags --weights=init
  python -m benchmarks.meta_snr --config=meta_train/configs/combo_lopt_broad_long.flags \\
      --weights=lopt/weights/layerwise_combo_lopt --estimator=tbptt   # another estimator

At fixed meta-params (``--weights``: saved weights, or ``init`` for the config's own
initialization), for each of the first ``--groups`` task configurations of the
config's family, ``--num_tasks`` instances are started and advanced
``--truncations`` truncations with the config's estimator (PES keeps its state
between them, as in training). From the per-instance estimates ``g_1 .. g_n``
(flattened, ``n x D``) of each truncation it reports:

* ``snr_per_task``: ``(||mean||^2 - tr(Cov) / n) / tr(Cov)``, the squared norm of the
  expected meta-gradient (unbiased) over the variance of one instance's estimate.
  The SNR of a mean over ``k`` instances is ``k`` times it; ``tasks_for_snr_1`` is its
  inverse, the instances per outer step for as much signal as noise.
* ``snr_at_num_tasks``: the SNR of the config's own outer step (its ``num_tasks``).
* ``cos_halves``: cosine between the means of two disjoint halves of the instances
  (near 0: two outer steps would point in unrelated directions).

An evolution-strategies estimate in ``D`` dimensions has a per-instance SNR of at
most about ``1 / D`` even on a noiseless task, so meta-training with few instances
per step and many meta-parameters is mostly a random walk; this measures how far a
configuration is from that. Figures are printed per record and summarized (median
over records); ``--out`` writes them as JSON.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import sys
import time
from typing import Any, Callable

import jax
import numpy as np
from absl import app, flags

import lopt
import meta_train
import meta_train.main as meta_main
import tasks

__all__ = ["define_flags", "gradient_snr", "snr_stats"]


def snr_stats(grads: np.ndarray) -> dict[str, float]:
  """Signal-to-noise figures of per-instance estimates ``grads`` ``(n, D)``, ``n >= 4``.

  Rows with a non-finite entry are dropped first (as the outer step drops them).

  Returns:
    ``n`` (rows kept), ``signal`` (unbiased ``||E g||^2``), ``variance`` (``tr Cov``,
    one instance), ``snr_per_task``, ``tasks_for_snr_1`` (inf when the signal is not
    positive) and ``cos_halves``.
  """
  g = np.asarray(grads, np.float64)
  g = g[np.all(np.isfinite(g), axis=1)]
  n = len(g)
  if n < 4:
    raise ValueError(f"need at least 4 finite estimates, got {n}")
  mean = g.mean(0)
  var = float(g.var(0, ddof=1).sum())
  signal = float(mean @ mean) - var / n
  snr = signal / var if var > 0 else float("inf")
  h = n // 2
  a, b = g[:h].mean(0), g[h:2 * h].mean(0)
  cos = float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-300))
  return {"n": n, "signal": signal, "variance": var, "snr_per_task": snr,
          "tasks_for_snr_1": 1.0 / snr if snr > 0 else float("inf"), "cos_halves": cos}


def gradient_snr(config, meta_params: Any, *, lo: lopt.LearnedOptimizer | None = None,
                 family: tasks.TaskFamily | None = None, groups: int = 2,
                 truncations: int = 4, seed: int = 0, own_num_tasks: int | None = None,
                 log: Callable[[str], None] = print) -> dict[str, Any]:
  """Meta-gradient SNR of ``config`` (a :class:`meta_train.TrainConfig`) at ``meta_params``.

  Example::

    cfg = meta_train.TrainConfig(lopt="mlp_lopt", task_family="digits_mlp", num_tasks=32)
    rep = gradient_snr(cfg, lopt.learned("mlp_lopt").init(jax.random.key(0)))
    rep["summary"]["snr_per_task"], rep["summary"]["tasks_for_snr_1"]

  Args:
    config: the run's config; ``num_tasks`` instances per group are measured.
    meta_params: the meta-parameters the estimates are taken at. Only those
      ``config.trainable`` selects are measured (all when it is None).
    lo, family: objects to use instead of those ``config`` names.
    groups: task configurations measured (the first ``groups`` of the family's
      ``num_configs``, drawn as training draws them).
    truncations: truncations per group (each gives one record).
    seed: seed of the instances.
    own_num_tasks: the instances per outer step of the run being judged, for
      ``snr_at_num_tasks`` (default ``config.num_tasks``).

  Returns:
    ``records`` (one per group and truncation: :func:`snr_stats` plus ``group``,
    ``truncation``, ``task``), ``summary`` (medians over records, and
    ``snr_at_num_tasks`` for ``own_num_tasks``), ``num_meta_params`` and ``config``.
  """
  if groups < 1 or truncations < 1:
    raise ValueError(f"groups and truncations must be >= 1, got {groups}, {truncations}")
  if groups > config.num_configs:
    raise ValueError(f"groups={groups} is more than the config's num_configs="
                     f"{config.num_configs}")
  lo = lo if lo is not None else lopt.learned(config.lopt, **dict(config.lopt_config))
  family = family if family is not None else meta_train.get_family(config.task_family)
  root = jax.random.key(config.seed)
  task_configs = family.group_configs(jax.random.fold_in(root, 0), config.num_configs)
  n = config.num_tasks
  keep = jax.tree.leaves(meta_train.trainable_mask(meta_params, config.trainable))
  records, t0 = [], time.time()
  for g in range(groups):
    est = config.estimator.build(family.task(task_configs[g]), lo, config.unroll)
    key = jax.random.key(seed * 1000 + g)
    state = jax.jit(est.init)(meta_params, jax.random.key_data(jax.random.split(key, n)))
    step = jax.jit(est.per_instance)
    for t in range(truncations):
      k = jax.random.key_data(jax.random.split(jax.random.fold_in(key, t + 1), n))
      grads, state, _ = step(meta_params, state, k)
      flat = np.concatenate([np.asarray(x, np.float64).reshape(n, -1)
                             for x, k in zip(jax.tree.leaves(grads), keep) if k], axis=1)
      rec = {"group": g, "truncation": t, "task": str(task_configs[g]), **snr_stats(flat)}
      records.append(rec)
      log(f"meta_snr: group {g} truncation {t}: SNR per instance {rec['snr_per_task']:.4f} "
          f"(x{n} instances: {rec['snr_per_task'] * n:.3f}), cos of halves "
          f"{rec['cos_halves']:.3f} [{time.time() - t0:.0f}s]")
  med = lambda k: float(np.median([r[k] for r in records]))  # noqa: E731
  own = int(own_num_tasks or n)
  summary = {"snr_per_task": med("snr_per_task"), "cos_halves": med("cos_halves"),
             "own_num_tasks": own, "snr_at_num_tasks": med("snr_per_task") * own}
  summary["tasks_for_snr_1"] = (1.0 / summary["snr_per_task"] if summary["snr_per_task"] > 0
                                else float("inf"))
  return {"records": records, "summary": summary,
          "num_meta_params": int(sum(np.size(x) for x, k in zip(jax.tree.leaves(meta_params), keep)
                                     if k)),
          "config": config.to_json()}


def _config(path: str):
  """The :class:`meta_train.TrainConfig` of a ``meta_train.main`` flagfile."""
  fv = flags.FlagValues()
  meta_main.define_flags(fv)
  try:
    fv(["prog", f"--flagfile={path}", "--workdir=unused"])
  except flags.Error as e:
    raise ValueError(f"--config {path}: {e}") from None
  return meta_main.config_from_flags(fv)


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
  """Defines this command line's flags in ``fv``, with their validators."""
  flags.DEFINE_string("config", None, "A meta_train.main flagfile (the run to measure).",
                      required=True, flag_values=fv)
  flags.DEFINE_string("weights", "init", "Saved weights of the config's optimizer, or 'init'.",
                      flag_values=fv)
  flags.DEFINE_integer("num_tasks", 32, "Instances per group (the config's own is replaced).",
                       lower_bound=4, flag_values=fv)
  flags.DEFINE_integer("groups", 2, "Task configurations measured.", lower_bound=1,
                       flag_values=fv)
  flags.DEFINE_integer("truncations", 4, "Truncations per group.", lower_bound=1,
                       flag_values=fv)
  flags.DEFINE_integer("seed", 0, "Seed of the instances.", flag_values=fv)
  flags.DEFINE_enum("estimator", None, sorted(meta_train.ESTIMATORS), "Measure this estimator "
                    "instead of the config's (default: the config's).", flag_values=fv)
  flags.DEFINE_float("sigma", None, "ES/PES perturbation scale instead of the config's.",
                     lower_bound=1e-12, flag_values=fv)
  flags.DEFINE_string("out", None, "Also write the report as JSON here.", flag_values=fv)

  def check(d):
    if not pathlib.Path(d["config"] or "").is_file():
      raise flags.ValidationError(f"--config {d['config']!r} is not a file (a "
                                  f"meta_train/configs/*.flags)")
    if d["weights"] != "init" and not pathlib.Path(d["weights"]).is_dir():
      raise flags.ValidationError(f"--weights {d['weights']!r} is neither 'init' nor a "
                                  f"weights directory")
    return True

  flags.register_multi_flags_validator(["config", "weights"], check, flag_values=fv)


def main(argv, fv: flags.FlagValues = flags.FLAGS) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  try:
    own = _config(fv.config)
    est = dataclasses.replace(own.estimator, **{k: v for k, v in (
        ("name", fv.estimator), ("sigma", fv.sigma)) if v is not None})
    config = dataclasses.replace(own, num_tasks=fv.num_tasks, estimator=est)
    lo = lopt.learned(config.lopt, **dict(config.lopt_config))
    theta = (lo.init(jax.random.fold_in(jax.random.key(config.seed), 2))
             if fv.weights == "init" else lopt.load_meta_params(lo, fv.weights))
    rep = gradient_snr(config, theta, lo=lo, groups=fv.groups, truncations=fv.truncations,
                       seed=fv.seed, own_num_tasks=own.num_tasks)
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f"benchmarks.meta_snr: {e}")
  s = rep["summary"]
  print(f"meta_snr: {config.lopt} ({rep['num_meta_params']} meta-params), "
        f"{config.estimator.name}, {fv.weights}: median SNR per instance "
        f"{s['snr_per_task']:.4f}; at the config's num_tasks ({own.num_tasks}) "
        f"{s['snr_at_num_tasks']:.3f}; instances for SNR 1: {s['tasks_for_snr_1']:.0f}; "
        f"cosine of two half-means {s['cos_halves']:.3f}")
  if fv.out:
    pathlib.Path(fv.out).write_text(json.dumps({**rep, "weights": fv.weights}, indent=1))


def run() -> None:
  """The command line: ``python -m benchmarks.meta_snr``."""
  define_flags()
  app.run(main)


if __name__ == "__main__":
  run()
