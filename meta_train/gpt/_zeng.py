"""Zeng et al.'s baselines for generative weight models, each at its strongest.

Zeng et al. 2025 ("Generative modeling of weights: generalization or
memorization?") found that generated networks rarely beat simple uses of the
training checkpoints. The protocol gives each baseline its best form:

* **retrieval**: the training checkpoint whose metric is closest to the prompt;
  at the best metric in the data (its strongest prompt) and at the optimizer's target.
* **aligned ensembles**: the average of the ``k`` best checkpoints *after*
  permutation alignment to the best one (averaging unaligned networks ruins them;
  the unaligned average is reported beside it).
* **noise at the spread of good checkpoints**: the best checkpoint plus Gaussian
  noise whose per-parameter std is a fraction of the std of the ``num_good`` best
  checkpoints (aligned to the best), instead of isotropic noise at arbitrary scales.
  Each fraction gives a (novelty, metric) point; G.pt is *dominated* when noise at
  its novelty (interpolated) reaches a better metric.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import numpy as np

from meta_train.gpt._align import UnitLayout, align, nearest_aligned

__all__ = ["aligned_stack", "dominated", "zeng_baselines"]


def aligned_stack(ckpts: np.ndarray, layout: UnitLayout) -> np.ndarray:
  """``ckpts`` with every row's hidden units aligned to the first row's."""
  ckpts = np.asarray(ckpts, np.float32)
  return np.stack([ckpts[0]] + [align(ckpts[0], c, layout).astype(np.float32)
                                for c in ckpts[1:]])


def zeng_baselines(bank: np.ndarray, bank_metric: np.ndarray,
                   evaluate: Callable[[np.ndarray], np.ndarray], layout: UnitLayout, *,
                   best: float, target: float, key: jax.Array, lower_is_better: bool = True,
                   ensemble_sizes: Sequence[int] = (2, 5, 10),
                   noise_fractions: Sequence[float] = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0),
                   num_good: int = 64, num_noisy: int = 64, num_candidates: int = 32,
                   bank_canonical: np.ndarray | None = None) -> dict[str, Any]:
  """The baselines of the module docstring, each measured on the test metric.

  Args:
    bank: ``(N, P)`` training checkpoints; ``bank_metric`` their metric.
    evaluate: flat rows -> the metric of each.
    layout: the hidden units of the architecture.
    best, target: the best metric in the data and the optimizer's prompt.
    key: the noise key.
    lower_is_better: False for returns.
    ensemble_sizes: the ``k`` of the aligned ensembles.
    noise_fractions: noise std as fractions of the good checkpoints' spread.
    num_good: how many of the best checkpoints define the spread.
    num_noisy: noisy networks per fraction.
    num_candidates, bank_canonical: see :func:`meta_train.gpt._align.nearest_aligned`.

  Returns:
    ``{"retrieval_best", "retrieval_target", "ensembles", "noise"}``; ``noise`` maps
    each fraction to the median metric and median aligned distance to the nearest
    checkpoint of its networks.
  """
  sign = 1.0 if lower_is_better else -1.0
  order = np.argsort(sign * bank_metric, kind="stable")
  near_target = int(np.argmin(np.abs(bank_metric - target)))
  out: dict[str, Any] = {
      "retrieval_best": {"metric": float(bank_metric[order[0]]), "distance": 0.0},
      "retrieval_target": {"metric": float(bank_metric[near_target]), "distance": 0.0}}
  ens = {}
  for k in ensemble_sizes:
    top = bank[order[:k]]
    aligned = aligned_stack(top, layout).mean(0)
    ens[str(k)] = {"metric": float(evaluate(aligned[None])[0]),
                   "unaligned_metric": float(evaluate(top.mean(0)[None])[0])}
  out["ensembles"] = ens
  good = aligned_stack(bank[order[:num_good]], layout)
  spread = good.std(axis=0)
  noise = {}
  for i, f in enumerate(noise_fractions):
    eps = np.asarray(jax.random.normal(jax.random.fold_in(key, i), (num_noisy, bank.shape[1])))
    noisy = (good[0][None] + float(f) * spread[None] * eps).astype(np.float32)
    dist, _ = nearest_aligned(noisy, bank, layout, num_candidates=num_candidates,
                              bank_canonical=bank_canonical)
    noise[f"{f:g}"] = {"metric": float(np.median(evaluate(noisy))),
                       "distance": float(np.median(dist))}
  out["noise"] = noise
  out["good_checkpoints"] = {"num": int(num_good), "spread_rms": float(np.sqrt(np.mean(
      spread ** 2))), "worst_metric": float(bank_metric[order[min(num_good, len(order)) - 1]])}
  return out


def dominated(noise: dict[str, dict[str, float]], distance: float, metric: float, *,
              lower_is_better: bool = True) -> dict[str, Any]:
  """Whether noisy retrieval at G.pt's novelty ``distance`` beats G.pt's ``metric``.

  The noise family's metric is interpolated (linearly in distance) at ``distance``;
  beyond its largest distance the comparison is undecided (``None``).
  """
  pts = sorted((v["distance"], v["metric"]) for v in noise.values())
  ds, ms = zip(*pts)
  if distance > ds[-1]:
    return {"noise_metric_at_gpt_distance": None, "dominated": None}
  at = float(np.interp(distance, ds, ms))
  beats = at < metric if lower_is_better else at > metric
  return {"noise_metric_at_gpt_distance": at, "dominated": bool(beats)}
