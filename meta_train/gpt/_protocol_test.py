"""The test step of the G.pt protocol: every figure, from settings fixed beforehand.

:func:`run_test` is called by :func:`meta_train.gpt.protocol.evaluate_protocol` once
the settings file has been read and checked; see that module for what is measured.
Its ``split`` names the init ids every figure is computed on: ``test`` (the test
figures) or ``validation`` (the same figures on the ids the settings were chosen on,
for choosing between model versions without looking at test inits).
"""

from __future__ import annotations

import time
from typing import Any, Callable

import jax
import numpy as np

from meta_train.gpt._align import canonicalize, nearest_aligned, pairwise_aligned
from meta_train.gpt._baselines import nearest_distance
from meta_train.gpt._context import ProtocolContext
from meta_train.gpt._measures import (
  adam_every_step,
  adam_step_flops,
  alignment_r2,
  compute_ratio,
  gpt_update_flops,
  median_summary,
)
from meta_train.gpt._protocol import ProtocolSettings
from meta_train.gpt._zeng import dominated, zeng_baselines

__all__ = ["ADAM_KEY_SEED", "run_test"]

#: Base seed of Adam's batch keys (``fold_in(key(ADAM_KEY_SEED), init id)``).
ADAM_KEY_SEED = 17
#: The schemes the targets are judged on.
TARGET_SCHEMES = ("train", "scale:2")


def _novelty(ctx: ProtocolContext, s: ProtocolSettings, starts, gpt_one, adam_nets,
             bank_canonical) -> dict[str, float]:
  def near(x):
    return nearest_aligned(x, ctx.bank, ctx.layout, num_candidates=s.num_candidates,
                           bank_canonical=bank_canonical)[0]

  g, a = near(gpt_one), near(adam_nets)
  gp, ap = pairwise_aligned(gpt_one, ctx.layout), pairwise_aligned(adam_nets, ctx.layout)
  med = lambda x: float(np.median(x))  # noqa: E731
  return {"gpt_nearest_median": med(g), "adam_nearest_median": med(a),
          "nearest_ratio": med(g) / max(med(a), 1e-12),
          "gpt_nearest_raw_median": med(nearest_distance(gpt_one, ctx.bank)),
          "gpt_pairwise_median": med(gp), "adam_pairwise_median": med(ap),
          "pairwise_ratio": med(gp) / max(med(ap), 1e-12),
          "gpt_moved_median": med(np.linalg.norm(gpt_one - starts, axis=1)),
          "adam_moved_median": med(np.linalg.norm(adam_nets - starts, axis=1))}


def _scheme(ctx: ProtocolContext, s: ProtocolSettings, name: str, ids: np.ndarray,
            key: jax.Array, adam_keys: jax.Array, bank_canonical: np.ndarray) -> dict[str, Any]:
  starts = ctx.inits(name, ids)
  nets, mets = ctx.repeated(key, starts, s.repeats, s.target, s.temperature, s.guidance)
  med = [float(np.median(m[ctx.metric])) for m in mets]
  curves, p_at = adam_every_step(ctx.task, ctx.unflatten(starts), adam_keys, s.adam_lrs,
                                 metric=ctx.metric, ceiling=s.adam_ceiling, at=s.adam_at)
  adam = median_summary(curves, s.adam_lrs, med[1], at=s.adam_at)
  best = s.adam_lrs.index(adam["best_lr_at"])
  adam_nets = np.asarray(jax.vmap(ctx.tok.flatten)(jax.tree.map(lambda x: x[best], p_at)))
  out = {"init_median": med[0], "gpt_median": med,
         "gpt_mean": [float(np.mean(m[ctx.metric])) for m in mets],
         "gpt_one_update": mets[1][ctx.metric].tolist(),
         "gpt_beats_adam_at": bool(med[1] < adam["median_at"]), "adam": adam,
         "adam_median_curve_best_lr": np.median(curves[best], 0).round(6).tolist()}
  if "test_error" in mets[1]:
    out["gpt_one_update_test_error_median"] = float(np.median(mets[1]["test_error"]))
  if name in s.novelty_schemes:
    out["novelty"] = _novelty(ctx, s, starts, nets[1], adam_nets, bank_canonical)
  return out


def run_test(ctx: ProtocolContext, s: ProtocolSettings, *, split: str = "test",
             log: Callable[[str], None] = print) -> dict[str, Any]:
  """Every test figure of the protocol (see :mod:`meta_train.gpt.protocol`).

  Args:
    ctx: the loaded model and data; ``s`` the settings file's settings.
    split: the init ids of every figure: ``"test"`` (``s.num_inits`` test ids) or
      ``"validation"`` (``s.num_validation_inits`` validation ids, those the settings
      were chosen on; no test id is drawn).
    log: progress messages.

  Returns:
    ``compute``, ``schemes``, ``prompt_alignment``, ``baselines``, ``targets``,
    ``seconds``.
  """
  if not ctx.lower_is_better:
    raise ValueError(f"the protocol compares lower-is-better metrics; the model's metric is "
                     f"{ctx.metric!r} (use `python -m meta_train.gpt.protocol_return`)")
  t0 = time.time()
  key = jax.random.key(s.seed)
  ids = s.ids(split)
  adam_keys = jax.vmap(lambda n: jax.random.fold_in(jax.random.key(ADAM_KEY_SEED), n))(
      np.asarray(ids).astype(np.uint32))
  gf, af = (gpt_update_flops(ctx.loaded, num_sampling_steps=s.num_sampling_steps,
                             guidance=s.guidance), adam_step_flops(ctx.task))
  rep: dict[str, Any] = {"compute": {"gpt": gf, "adam": af,
                                     "adam_steps_per_update": compute_ratio(gf, af)}}
  log(f"protocol: one update = {gf['per_update']:.3g} FLOPs = "
      f"{rep['compute']['adam_steps_per_update']:.0f} Adam steps")
  bank_canonical = canonicalize(ctx.bank, ctx.layout)
  rep["schemes"] = {}
  for i, name in enumerate(s.schemes):
    r = rep["schemes"][name] = _scheme(ctx, s, name, ids, jax.random.fold_in(key, i),
                                       adam_keys, bank_canonical)
    log(f"protocol: {name}: init {r['init_median']:.3f}, G.pt after 1..{s.repeats} "
        f"{[round(v, 4) for v in r['gpt_median'][1:]]}, Adam median at {s.adam_at} "
        f"{r['adam']['median_at']:.4f} (lr {r['adam']['best_lr_at']:g}), steps to match "
        f"{r['adam']['steps_to_match']}, novelty {r.get('novelty')} [{time.time() - t0:.0f}s]")
  starts = ctx.inits("train", ids)[:s.num_align_nets]  # the split's first inits of "train"
  prompts, achieved = ctx.alignment(jax.random.fold_in(key, 1000), starts, s.num_prompts,
                                    s.temperature, s.guidance)
  r2 = alignment_r2(prompts, achieved, low_max=s.low_prompt_max)
  rep["prompt_alignment"] = {"r2": r2, "prompts": prompts.round(6).tolist(),
                             "achieved": achieved.round(6).tolist()}
  log(f"protocol: prompt alignment R^2 {r2} [{time.time() - t0:.0f}s]")
  z = zeng_baselines(ctx.bank, ctx.bank_metric, lambda f: ctx.measure(f)[ctx.metric],
                     ctx.layout, best=ctx.best, target=s.target, key=jax.random.fold_in(key, 2000),
                     ensemble_sizes=s.ensemble_sizes, noise_fractions=s.noise_fractions,
                     num_good=s.num_good, num_noisy=s.num_inits, num_candidates=s.num_candidates,
                     bank_canonical=bank_canonical)
  if "novelty" in rep["schemes"].get("train", {}):
    tr = rep["schemes"]["train"]
    z["gpt_train_scheme"] = dominated(z["noise"], tr["novelty"]["gpt_nearest_median"],
                                      tr["gpt_median"][1])
  rep["baselines"] = z
  log(f"protocol: baselines {z} [{time.time() - t0:.0f}s]")
  targets = {}
  for name in TARGET_SCHEMES:
    if name in rep["schemes"]:
      r = rep["schemes"][name]
      targets[f"{name}: one update < Adam median at {s.adam_at}"] = r["gpt_beats_adam_at"]
      targets[f"{name}: {s.repeats} updates <= 1"] = r["gpt_median"][-1] <= r["gpt_median"][1]
  targets["R^2 pooled >= 0.9"] = r2["pooled"] >= 0.9
  targets[f"R^2 prompts <= {s.low_prompt_max:g} >= 0.7"] = (r2["low"] is not None
                                                            and r2["low"] >= 0.7)
  rep["targets"] = targets
  rep["seconds"] = time.time() - t0
  log(f"protocol: targets {targets}")
  return rep
