r"""Evaluate a G.pt model: prompt alignment, one-update training, baselines, novelty.

Command line::

  python -m meta_train.gpt.evaluate --weights=runs/gpt_digits/weights \
      --dataset=runs/gpt_digits_data --out=runs/gpt_digits_eval

(``python -m meta_train.gpt_eval`` is the same.) Bad flag values stop at parsing
with a one-line error.

``--dataset`` may list several datasets separated by commas (the training
data of the model); by default it is read from the model's manifest. Writes
``report.json`` and PNG plots to ``--out``. Measured (metric = the model's
metric, e.g. test loss):

* **the optimizer's settings**, chosen on validation data that no reported figure
  uses (``--num_inits`` validation inits, ``task.init`` seeds disjoint from the
  reported ones; validation networks, the held-out runs after the first
  ``--num_nets``) and recorded in the weights' manifest by ``--save_settings``,
  where ``lopt.get("gpt")`` takes its defaults from:

  - **sampling temperature** (noise scale of the sampler, :func:`lopt.gpt.sample`)
    and **target** (the optimizer's prompt): ``--temperature`` and ``--target``, or
    by default the pair from ``--temperatures`` x the grid ``best + f (ref - best)``
    (``f`` in ``--target_fractions``, ``ref`` the median final metric of the
    training runs) whose one update from the validation inits reaches the best
    median metric. Prompting the single best value in the data (an outlier) asks
    for more than one update gives; a slightly less extreme prompt gets further.
  - **guidance scale** (classifier-free guidance, :meth:`lopt.gpt.GPT.generate`):
    ``--guidance``, or by default the one of ``--guidances`` with the best
    prompt-alignment R^2 on the validation networks among those whose one update
    from the validation inits (at the target) is no worse than without guidance.

  ``--validation_only`` stops here and reports the validation R^2 and one-update
  medians at the chosen settings: compare training seeds or configurations by them.
* **prompt alignment** (G.pt, Sec. 5.1): for ``--num_nets`` starting networks (the
  initializations of runs held out of training) and ``--num_prompts`` prompts
  evenly spaced from the best value in the training data to the network's own
  value, the R^2 between prompted and achieved metric after one update, per
  network, averaged; the same for nearest-metric retrieval.
* **one update from unseen random inits** (``task.init`` with fresh seeds),
  prompted with the target (and, side by side, with the best value);
  **recursive prompting**: the metric after 1 .. ``--recursive_steps`` updates.
* **Adam steps to match**: test-loss curves of Adam from the same inits on
  ``--adam_lrs`` (default :data:`ADAM_LRS`, about four rates per decade); the fewest
  steps any learning rate needs (mean curve) to reach G.pt's one-update median.
* **baselines** (Zeng et al. 2025): retrieval of the training checkpoint whose
  metric is closest to the prompt, the same plus Gaussian noise at several
  scales, the average of the k nearest; and **novelty**: the L2 distance of every
  network to its nearest training checkpoint (performance-vs-novelty plot). The
  baselines are prompted with the best value (their strongest setting).

Reference: Peebles et al. 2022, arXiv 2209.12892; Zeng et al. 2025.
"""

from __future__ import annotations

import functools
import json
import pathlib
import sys
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

import tasks
from lopt.gpt import load_gpt
from meta_train.gpt._baselines import (
  MetricFn,
  adam_curves,
  baselines_and_novelty,
  r_squared,
  retrieve,
  steps_to_reach,
)
from meta_train.gpt._data import load_dataset
from meta_train.gpt._eval_settings import (
  ADAM_LRS,
  SETTING_BOUNDS,
  check_flag,
  check_settings,
  finish_report,
)
from meta_train.gpt._pairs import task_grad_fn
from meta_train.gpt._plots import eval_plots

__all__ = ["ADAM_LRS", "check_settings", "define_flags", "evaluate_gpt", "run"]

def evaluate_gpt(weights: str, dataset: str | None, out: str, *, num_nets: int = 16,
                 num_prompts: int = 20, num_inits: int = 128, recursive_steps: int = 10,
                 num_sampling_steps: int = 20, eta: float = 0.0, seed: int = 0,
                 temperature: float | None = None,
                 temperatures: Sequence[float] = (1.0, 0.7, 0.5, 0.3, 0.0),
                 guidance: float | None = None,
                 guidances: Sequence[float] = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5),
                 target: float | None = None,
                 target_fractions: Sequence[float] = (0.0, 0.025, 0.05, 0.075, 0.1, 0.2, 0.35, 0.5),
                 adam_steps: int = 1000, adam_every: int = 5,
                 adam_lrs: Sequence[float] = ADAM_LRS,
                 noise_levels: Sequence[float] = (0.03, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0),
                 knn: int = 5, save_settings: bool = False, validation_only: bool = False,
                 log: Callable[[str], None] = print) -> dict[str, Any]:
  """Runs the evaluation described in the module docstring; returns the report.

  ``dataset=None`` evaluates against the model's training data named in its manifest
  (``extra.dataset``, as ``gpt_train`` writes it).

  ``temperature=None``, ``target=None`` and ``guidance=None`` choose the optimizer's
  settings on validation data as the module docstring describes (``temperatures``
  x ``target_fractions``, then ``guidances``); ``save_settings`` writes them to the
  weights' manifest (``extra.sampling_temperature``, ``extra.target``,
  ``extra.guidance``), the G.pt optimizer's defaults.

  ``validation_only`` stops after those choices and reports (``"validation"``) the
  validation R^2 and one-update medians (at the best prompt and at the target) at the
  chosen settings, touching no reported network or init: the numbers to compare
  training seeds or configurations by.

  Example::

    rep = evaluate_gpt("runs/gpt_digits/weights", "runs/gpt_digits_data", "runs/eval")
    rep["prompt_alignment"]["r2_mean"]
  """
  check_settings(num_nets=num_nets, num_prompts=num_prompts, num_inits=num_inits,
                 recursive_steps=recursive_steps, num_sampling_steps=num_sampling_steps, eta=eta,
                 temperatures=temperatures, guidances=guidances,
                 target_fractions=target_fractions, adam_steps=adam_steps, adam_lrs=adam_lrs)
  t0 = time.time()
  outp = pathlib.Path(out)
  m = load_gpt(weights)
  model, tok, metric = m.model, m.model.tokenizer, m.model.cfg["metric"]
  if dataset is None:
    dataset = m.manifest.get("extra", {}).get("dataset")
    if not dataset:
      raise ValueError(f"the manifest of {weights!r} names no training dataset; pass dataset=")
  data = load_dataset(dataset)
  if data.index["param_spec"] != tok.spec:
    raise ValueError(f"the dataset {dataset!r} holds another architecture than the model "
                     f"{weights!r} was trained for")
  heldout = set(m.manifest["extra"].get("heldout_run_ids", []))
  is_held = np.asarray([int(r) in heldout for r in data.run_ids])
  if is_held.sum() < num_nets:
    raise ValueError(f"only {is_held.sum()} held-out runs; need num_nets={num_nets}")
  task = tasks.get(data.index["task"], **data.index["task_config"])
  outp.mkdir(parents=True, exist_ok=True)
  mf = MetricFn(task, tok)
  best = float(m.manifest["best_metric"])
  bank = data.params[~is_held].reshape(-1, tok.num_params)
  bank_metric = data.metrics[metric][~is_held].reshape(-1)
  key = jax.random.key(seed)
  gfn = jax.jit(task_grad_fn(task, tok)) if model.cfg["condition_grad"] else None
  gen_jit = jax.jit(lambda k, s, ms, mt, g, temp, w: model.generate(
      m.params, m.stats, k, s, ms, mt, g, num_steps=num_sampling_steps, eta=eta,
      temperature=temp, guidance=w), static_argnums=(5, 6))

  def gen(k, s, ms, mt, temp, w):
    # condition_grad models see a minibatch gradient at the start, as in a training loop.
    g = None if gfn is None else gfn(s, jax.random.fold_in(k, 7))
    return gen_jit(k, s, ms, mt, g, float(temp), float(w))

  held_p, held_m = data.params[is_held], data.metrics[metric][is_held]

  def alignment(nets, temp, w):
    starts, own = held_p[nets, 0], held_m[nets, 0]
    prompts = np.stack([np.linspace(best, o, num_prompts) for o in own])
    new = np.asarray(gen(jax.random.fold_in(key, 1), jnp.asarray(np.repeat(starts, num_prompts, 0)),
                         jnp.asarray(np.repeat(own, num_prompts)),
                         jnp.asarray(prompts.reshape(-1)), temp, w))
    achieved = mf(new)[metric].reshape(len(nets), num_prompts)
    return prompts, achieved, new, [r_squared(p, a) for p, a in zip(prompts, achieved)]

  rep: dict[str, Any] = {"weights": str(weights), "dataset": str(dataset), "metric": metric,
                         "best_prompt": best, "num_sampling_steps": num_sampling_steps,
                         "eta": eta, "condition_grad": bool(model.cfg["condition_grad"]),
                         "prompt_dropout": float(model.cfg["prompt_dropout"])}

  # 0. The optimizer's settings, chosen on validation data never used for the figures
  # below: validation inits (task.init seeds disjoint from the reported ones) and
  # validation nets (the held-out runs after the first num_nets).
  val = np.arange(num_nets, int(is_held.sum()))
  if (guidance is None or validation_only) and len(val) == 0:
    raise ValueError("no held-out runs are left for choosing the guidance; pass guidance=, "
                     "or hold out more than num_nets runs")
  if temperature is None or guidance is None or target is None or validation_only:
    vkeys = jax.random.split(jax.random.key(20_000_003 + seed), num_inits)
    vstart = np.asarray(jax.vmap(tok.flatten)(jax.vmap(task.init)(vkeys)))
    vstart_m = mf(vstart)[metric]

  def val_one(temp, w, prompt):
    one = mf(np.asarray(gen(jax.random.fold_in(key, 5), jnp.asarray(vstart),
                            jnp.asarray(vstart_m), jnp.full((num_inits,), prompt, jnp.float32),
                            temp, w)))[metric]
    return float(np.median(one))

  def validation(temp, w):  # once the target is known
    return {"r2": float(np.mean(alignment(val, temp, w)[3])),
            "one_update_median": val_one(temp, w, best),
            "one_update_median_at_target": val_one(temp, w, target)}

  if temperature is None or target is None:
    # Temperature and target (the optimizer's prompt): the pair whose one update from the
    # validation inits is best (lower for losses and errors, higher for returns), without
    # guidance. The target grid runs from the best value in the data towards the median
    # final value of the training runs.
    ref = float(np.median(data.metrics[metric][~is_held][:, -1]))
    temps = [float(t) for t in temperatures] if temperature is None else [float(temperature)]
    grid = ([float(target)] if target is not None else
            list(dict.fromkeys(best + float(f) * (ref - best) for f in target_fractions)))
    scores = {(tp, t): val_one(tp, 0.0, t) for tp in temps for t in grid}
    sign = 1.0 if best <= ref else -1.0
    temperature, target = min(scores, key=lambda k: sign * scores[k])
    table = {f"{tp:g}": {f"{t:.6g}": scores[tp, t] for t in grid} for tp in temps}
    rep["setting_selection"] = {
        "validation_inits": num_inits, "reference_metric": ref,
        "target_fractions": [float(f) for f in target_fractions],
        "one_update_median_by_temperature_and_target": table,
        "chosen": {"temperature": temperature, "target": target}}
    log(f"gpt_eval: validation one-update median by temperature and target {table}; using "
        f"temperature {temperature:g}, target {target:.6g} [{time.time() - t0:.0f}s]")
  rep["temperature"], rep["target"] = float(temperature), float(target)

  res = {}
  if guidance is None:
    # Guidance sharpens prompt following; keep only scales that do not hurt the optimizer's
    # use (one update from the validation inits at the target), then take the best R^2 on
    # the validation nets.
    gs = sorted({0.0, *(float(w) for w in guidances)})
    for w in gs:
      res[w] = validation(temperature, w)
    ok = [w for w in gs if res[w]["one_update_median_at_target"]
          <= res[0.0]["one_update_median_at_target"]]
    guidance = max(ok, key=lambda w: res[w]["r2"])
    rep["guidance_selection"] = {"validation_nets": len(val), "by_guidance": res,
                                 "chosen": guidance}
    log(f"gpt_eval: validation by guidance {res}; using {guidance:g} [{time.time() - t0:.0f}s]")
  rep["guidance"] = float(guidance)
  if validation_only:
    rep["validation"] = {"validation_nets": len(val), "validation_inits": num_inits,
                         **(res.get(float(guidance)) or validation(temperature, guidance))}
    log(f"gpt_eval: validation at temperature {temperature:g}, guidance {guidance:g}: "
        f"{rep['validation']}")
    return finish_report(rep, outp, weights, save_settings, t0, log)

  # 1. Prompt alignment on held-out runs' initializations.
  prompts, achieved, new, r2 = alignment(np.arange(num_nets), temperature, guidance)
  ret = bank_metric[retrieve(bank_metric, prompts.reshape(-1))[:, 0]].reshape(prompts.shape)
  rep["prompt_alignment"] = {
      "r2_mean": float(np.mean(r2)), "r2_per_net": r2,
      "retrieval_r2_mean": float(np.mean([r_squared(p, a) for p, a in zip(prompts, ret)])),
      "num_nets": num_nets, "num_prompts": num_prompts}
  log(f"gpt_eval: prompt alignment R^2 {np.mean(r2):.3f} (retrieval "
      f"{rep['prompt_alignment']['retrieval_r2_mean']:.3f}) [{time.time() - t0:.0f}s]")

  # 2. One update (and recursive prompting) from unseen random inits.
  ikeys = jax.random.split(jax.random.key(10_000_019 + seed), num_inits)
  inits = jax.vmap(task.init)(ikeys)
  cur = rec_start = np.asarray(jax.vmap(tok.flatten)(inits))
  cur_m = mf(cur)[metric]
  rec = [cur_m]
  gpt_one = None
  for r in range(recursive_steps):
    cur = np.asarray(gen(jax.random.fold_in(key, 100 + r), jnp.asarray(cur), jnp.asarray(cur_m),
                         jnp.full((num_inits,), target, jnp.float32), temperature, guidance))
    mets = mf(cur)
    cur_m = mets[metric]
    rec.append(cur_m)
    if r == 0:
      gpt_one, one_mets = cur.copy(), mets
  rec = np.stack(rec)
  rep["one_update"] = {"median": float(np.median(rec[1])), "mean": float(np.mean(rec[1])),
                       "init_median": float(np.median(rec[0])),
                       "test_error_median": float(np.median(one_mets.get("test_error",
                                                                          np.nan))),
                       "per_init": rec[1].tolist(), "target": float(target)}
  # Side by side: the same first update prompted with the best value in the data.
  at_best = rec[1] if target == best else mf(np.asarray(gen(
      jax.random.fold_in(key, 100), jnp.asarray(rec_start), jnp.asarray(rec[0]),
      jnp.full((num_inits,), best, jnp.float32), temperature, guidance)))[metric]
  rep["one_update"]["at_best_prompt_median"] = float(np.median(at_best))
  rep["recursive"] = {"median": np.median(rec, axis=1).tolist(),
                      "mean": np.mean(rec, axis=1).tolist()}
  log(f"gpt_eval: one update from unseen inits: median {metric} {rep['one_update']['median']:.4f}"
      f" at target {target:.4g} ({rep['one_update']['at_best_prompt_median']:.4f} at the best "
      f"prompt, from {rep['one_update']['init_median']:.3f}); recursive "
      f"{[round(x, 4) for x in rep['recursive']['median']]} [{time.time() - t0:.0f}s]")

  # 3. Adam steps to match G.pt's one-update loss.
  curves = adam_curves(task, inits, list(adam_lrs), adam_steps, adam_every,
                       jax.random.fold_in(key, 3))
  level = rep["one_update"]["median"]
  per_lr = {f"{lr:g}": steps_to_reach(c.mean(0), level, adam_every) for lr, c in curves.items()}
  reached = [s for s in per_lr.values() if s is not None]
  rep["adam"] = {"steps_to_match_per_lr": per_lr,
                 "steps_to_match": min(reached) if reached else f">{adam_steps}",
                 "best_final_mean": {f"{lr:g}": float(c.mean(0)[-1]) for lr, c in curves.items()},
                 "num_steps": adam_steps}
  log(f"gpt_eval: tuned Adam needs {rep['adam']['steps_to_match']} steps to reach {level:.4f} "
      f"({per_lr}) [{time.time() - t0:.0f}s]")

  # 4. Baselines at prompt = best (their strongest setting), and novelty.
  leaf_std = tok.detokenize(np.asarray(m.stats["param_scale"]))
  rep["baselines"], rep["novelty"], novelty = baselines_and_novelty(
      bank, bank_metric, mf, metric, leaf_std, gpt_one, rec[1], new, best, num_inits,
      jax.random.fold_in(key, 4), knn, noise_levels)
  log(f"gpt_eval: baselines {json.dumps(rep['baselines'])}; novelty "
      f"{json.dumps(rep['novelty'])}")
  rep["plots"] = eval_plots(outp, rep, {"prompts": prompts, "achieved": achieved}, curves,
                        adam_every, novelty)
  rep["targets"] = {
      "prompt_alignment_r2>=0.9": rep["prompt_alignment"]["r2_mean"] >= 0.9,
      "adam_steps_to_match>=100": (not reached) or min(reached) >= 100,
      "not_dominated_by_noisy_retrieval": rep["novelty"]["gpt_not_dominated"]}
  log(f"gpt_eval: targets {rep['targets']}")
  return finish_report(rep, outp, weights, save_settings, t0, log)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  floats = lambda xs: [float(x) for x in xs]
  try:
    evaluate_gpt(f.weights, f.dataset, f.out, num_nets=f.num_nets, num_prompts=f.num_prompts,
                 num_inits=f.num_inits, recursive_steps=f.recursive_steps,
                 num_sampling_steps=f.num_sampling_steps, eta=f.eta, seed=f.seed,
                 temperature=f.temperature, temperatures=floats(f.temperatures),
                 guidance=f.guidance, guidances=floats(f.guidances),
                 target=f.target, target_fractions=floats(f.target_fractions),
                 adam_steps=f.adam_steps, adam_lrs=floats(f.adam_lrs),
                 save_settings=f.save_settings, validation_only=f.validation_only)
  except (ValueError, FileNotFoundError) as e:  # e.g. too few held-out runs, no dataset
    sys.exit(f"gpt.evaluate: {e}")


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
  """Defines this command line's flags in ``fv``, with their validators."""
  flags.DEFINE_string("weights", "lopt/weights/gpt_digits_mlp", "G.pt weights directory.",
                      flag_values=fv)
  flags.DEFINE_string("dataset", None, "Checkpoint dataset directory (or several, "
                      "comma-separated); default: the model's training data, from its "
                      "manifest (extra.dataset).", flag_values=fv)
  flags.DEFINE_string("out", "runs/gpt_digits_eval", "Output directory.", flag_values=fv)
  flags.DEFINE_integer("num_nets", 16, "Held-out starting networks for prompt alignment.",
                       flag_values=fv)
  flags.DEFINE_integer("num_prompts", 20, "Prompts per network.", flag_values=fv)
  flags.DEFINE_integer("num_inits", 128, "Unseen random inits (and as many validation "
                       "inits).", flag_values=fv)
  flags.DEFINE_integer("recursive_steps", 10, "Recursive prompting updates.", flag_values=fv)
  flags.DEFINE_integer("num_sampling_steps", 20, "Diffusion sampling steps.", flag_values=fv)
  flags.DEFINE_float("eta", 0.0, "0 = DDIM, 1 = DDPM.", flag_values=fv)
  flags.DEFINE_float("temperature", None, "Sampling temperature (default: chosen with the "
                     "target on validation inits from --temperatures).", lower_bound=0.0,
                     flag_values=fv)
  flags.DEFINE_list("temperatures", ["1", "0.7", "0.5", "0.3", "0"],
                    "Temperatures tried on validation inits when --temperature is not given.",
                    flag_values=fv)
  flags.DEFINE_float("guidance", None, "Guidance scale (default: chosen on validation "
                     "networks from --guidances).", lower_bound=0.0, flag_values=fv)
  flags.DEFINE_list("guidances", ["0", "0.05", "0.1", "0.2", "0.3", "0.5"],
                    "Guidance scales to choose from.", flag_values=fv)
  flags.DEFINE_float("target", None, "The optimizer's prompt for the one-update figures "
                     "(default: chosen on validation inits from --target_fractions).",
                     flag_values=fv)
  flags.DEFINE_list("target_fractions",
                    ["0", "0.025", "0.05", "0.075", "0.1", "0.2", "0.35", "0.5"],
                    "Target grid: best + f * (median final metric of the training runs - "
                    "best).", flag_values=fv)
  flags.DEFINE_bool("save_settings", False, "Record the temperature, guidance and target in "
                    "the weights' manifest (extra.sampling_temperature, extra.guidance, "
                    "extra.target), the optimizer's defaults.", flag_values=fv)
  flags.DEFINE_alias("save_temperature", "save_settings", flag_values=fv)
  flags.DEFINE_bool("validation_only", False, "Only choose the temperature, guidance and "
                    "target and report their validation R^2 and one-update medians (to "
                    "compare seeds or configurations without looking at the reported "
                    "figures).", flag_values=fv)
  flags.DEFINE_integer("seed", 0, "Evaluation seed.", flag_values=fv)
  flags.DEFINE_integer("adam_steps", 1000, "Adam steps per learning rate.", flag_values=fv)
  flags.DEFINE_list("adam_lrs", [f"{lr:g}" for lr in ADAM_LRS], "Adam learning rates.",
                    flag_values=fv)
  for key in SETTING_BOUNDS:
    flags.register_validator(key, functools.partial(check_flag, key), flag_values=fv)
  flags.register_validator("weights", lambda w: (pathlib.Path(w) / "manifest.json").is_file(),
                           "--weights must be a G.pt weights directory (with manifest.json)",
                           flag_values=fv)


def run() -> None:
  """The command line: ``python -m meta_train.gpt.evaluate``."""
  define_flags()
  app.run(main)


if __name__ == "__main__":
  run()
