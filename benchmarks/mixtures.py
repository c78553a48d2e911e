r"""Which base optimizer each layer uses: plots of a specialized optimizer's mixtures.

Usage::

  python -m benchmarks.mixtures --weights=lopt/weights/specialized/digits_cnn \
      --targets=heldout --out=docs/results/finetune

``layerwise_combo_lopt`` updates tensor ``t`` by ``sum_k lr_t c_{t,k} u_k`` over
the base directions ``u_k`` (the optimizer's ``directions``: sgd, momentum, adam, sign and
optionally orth).
The size of a coefficient alone says little (an sgd direction is a raw gradient,
a sign direction has unit entries), so each direction's *contribution* is
measured as ``|lr_t c_{t,k}| * rms_t(u_k)`` at every step of a fine-tuning run and
shown as its share of the four. The figure has one panel per tensor (shares
averaged over the targets, the median total update RMS in the title); the JSON
beside it holds the per-target curves.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags

import lopt
import tasks
from benchmarks._cli import check, make_main

__all__ = ["define_flags", "plot_mixtures", "record_mixtures", "run_from_flags"]

_NAME = "layerwise_combo_lopt"


def record_mixtures(lo: Any, meta_params: Any, task: tasks.Task, num_steps: int,
                    key: jax.Array) -> dict[str, Any]:
  """Fine-tunes ``task`` with ``lo`` and records each direction's contribution.

  Args:
    lo: a :class:`lopt.LayerwiseComboLOpt`.
    meta_params: its weights.
    task: the task (its ``init`` gives the starting parameters).
    num_steps: the run's length (also the optimizer's horizon).
    key: randomness of init and batches.

  Returns:
    ``{"tensors": [path, ...], "directions": [name, ...], "contribution":
    (num_steps, T, K) array, "loss": (num_steps,) array}``; contribution ``[s, t, k]`` is
    ``|lr_t c_{t,k}| * rms_t(u_k)`` at step ``s``.
  """
  opt = lo.transform(meta_params, num_steps)
  k_init, k_run = jax.random.split(key)
  params = task.init(k_init)
  layout = lo.layout(params)
  tensors = [jax.tree_util.keystr(p) for p, _ in jax.tree.leaves_with_path(params)]

  def rms(x):
    return jnp.sqrt(layout.tensor_mean(x * x))

  @jax.jit
  def run(params, key):
    def body(carry, k):
      params, state = carry
      k_batch, k_loss = jax.random.split(k)
      loss, grads = jax.value_and_grad(task.loss)(params, k_loss, task.batch(k_batch, "train"))
      updates, state = opt.update(grads, state, params, loss=loss)
      adam = lo.adam_direction(state.mu, state.nu, state.step)
      u = jnp.stack([rms(x) for x in lo.direction_rows(
          layout, layout.flatten(grads), state.trace, state.mu, adam)], axis=1)   # (T, K)
      return (optax.apply_updates(params, updates), state), (jnp.abs(state.coef) * u, loss)

    _, out = jax.lax.scan(body, (params, opt.init(params)), jax.random.split(key, num_steps))
    return out

  contribution, loss = run(params, k_run)
  return {"tensors": tensors, "directions": list(lo.directions),
          "contribution": np.asarray(contribution),
          "loss": np.asarray(loss)}


def plot_mixtures(records: dict[str, dict[str, Any]], path: str | pathlib.Path,
                  title: str = "") -> pathlib.Path:
  """Stacked shares of the directions per tensor, averaged over ``records``.

  Args:
    records: ``{target: record_mixtures(...)}``, all over the same tensors and steps.
    path: the PNG to write.
    title: the figure's title.
  """
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  first = next(iter(records.values()))
  contrib = np.stack([r["contribution"] for r in records.values()])   # (R, S, T, K)
  share = contrib / np.maximum(contrib.sum(-1, keepdims=True), 1e-30)
  mean_share = share.mean(0)                                          # (S, T, K)
  total = np.median(contrib.sum(-1), axis=(0, 1))                     # (T,)
  num_t = mean_share.shape[1]
  cols = min(3, num_t)
  rows = -(-num_t // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
  steps = np.arange(1, mean_share.shape[0] + 1)
  for t in range(num_t):
    ax = axes[t // cols][t % cols]
    ax.stackplot(steps, mean_share[:, t, :].T, labels=first["directions"], alpha=0.85)
    ax.set_title(f"{first['tensors'][t]}\nmedian step rms {total[t]:.2g}", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_xlabel("step", fontsize=8)
    ax.tick_params(labelsize=7)
  for t in range(num_t, rows * cols):
    axes[t // cols][t % cols].axis("off")
  axes[0][0].set_ylabel("share of the update")
  axes[0][-1].legend(loc="upper right", fontsize=7)
  fig.suptitle(title or f"direction shares, mean over {len(records)} runs", fontsize=10)
  fig.tight_layout()
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def _target_names(value: str) -> list[str]:
  named = {"heldout": tasks.HELD_OUT_TARGETS, "specialization": tasks.SPECIALIZATION_TARGETS}
  names = list(named.get(value, [v.strip() for v in value.split(",") if v.strip()]))
  bad = [n for n in names if n not in tasks.FINETUNE_TARGETS]
  if bad or not names:
    raise ValueError(f"unknown target(s) {bad or value!r}; valid: heldout, specialization or "
                     f"a comma list of {', '.join(tasks.FINETUNE_TARGETS)}")
  return names


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
  """Defines this command's flags (with validators) on ``fv``."""
  flags.DEFINE_string("weights", None, "Weights directory of a specialized "
                      "layerwise_combo_lopt (written by meta_train.specialize).", required=True,
                      flag_values=fv)
  flags.DEFINE_string("targets", "heldout", "'heldout', 'specialization' or a comma list of "
                      "tasks.FINETUNE_TARGETS.", flag_values=fv)
  flags.DEFINE_integer("pretrain_seed", 0, "The backbone's pretraining seed.", lower_bound=0,
                       flag_values=fv)
  flags.DEFINE_integer("steps", None, "Fine-tuning steps (default: the specialization "
                       "horizon, from the manifest).", lower_bound=2, flag_values=fv)
  flags.DEFINE_string("out", "bench_out/mixtures", "Output directory.", flag_values=fv)
  flags.DEFINE_integer("seed", 0, "Seed of the runs.", lower_bound=0, flag_values=fv)

  flags.register_validator("targets", lambda v: check(_target_names, v), flag_values=fv)
  flags.register_validator("out", bool, "--out must not be empty", flag_values=fv)


def run_from_flags(fv: flags.FlagValues = flags.FLAGS) -> pathlib.Path:
  """Records and plots the mixtures the flags ask for; returns the PNG's path.

  Raises:
    OSError, ValueError: missing weights, weights not specialized to a digits backbone.
  """
  from lopt._registry import load_meta_params, saved_config
  from lopt._weights import read_manifest

  manifest = read_manifest(fv.weights)
  if manifest["name"] != _NAME:
    raise ValueError(f"{fv.weights} holds {manifest['name']!r} weights, not {_NAME!r}")
  extra = manifest.get("extra", {})
  special = extra.get("specialized_to")
  if not special or special.get("backbone") not in ("digits_cnn", "digits_mlp"):
    raise ValueError(f"{fv.weights} is not specialized to a digits backbone (its manifest's "
                     f"extra.specialized_to is {special!r})")
  unroll = extra.get("meta_training", {}).get("config", {}).get("unroll", {})
  steps = fv.steps or unroll.get("max_horizon")
  if not steps:
    raise ValueError("the manifest names no horizon; pass --steps")
  steps = int(steps)
  lo = lopt.learned(_NAME, **saved_config(_NAME, fv.weights))
  mp = load_meta_params(lo, fv.weights)
  backbone = special["backbone"]
  records = {}
  for name in _target_names(fv.targets):
    task = tasks.FineTuneDigits(backbone, source=special["source"],
                                pretrain_seed=fv.pretrain_seed, **tasks.finetune_target(name))
    records[name] = record_mixtures(lo, mp, task, steps, jax.random.key(fv.seed))
    print(f"{name}: final training loss {records[name]['loss'][-1]:.4f}")
  out = pathlib.Path(fv.out)
  png = plot_mixtures(records, out / "mixtures.png",
                      f"{_NAME} specialized to {backbone} (seed {fv.pretrain_seed}): direction "
                      f"shares per tensor, mean over {len(records)} targets ({steps} steps)")
  final = {n: (r["contribution"][-1] / np.maximum(r["contribution"][-1].sum(-1, keepdims=True),
                                                  1e-30)).round(4).tolist()
           for n, r in records.items()}
  (out / "mixtures.json").write_text(json.dumps(
      {"weights": str(fv.weights), "steps": steps, "pretrain_seed": fv.pretrain_seed,
       "directions": list(lo.directions), "tensors": next(iter(records.values()))["tensors"],
       "final_share": final}, indent=1))
  return png


def _print_run(fv: flags.FlagValues) -> None:
  print(f"wrote {run_from_flags(fv)}")


main = make_main(_print_run, (OSError, KeyError, ValueError))


if __name__ == "__main__":
  define_flags()
  app.run(main)
