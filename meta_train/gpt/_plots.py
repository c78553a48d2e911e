"""The PNG plots of :mod:`meta_train.gpt.evaluate` (matplotlib, Agg backend)."""

from __future__ import annotations

import pathlib
from typing import Any

import numpy as np

__all__ = ["eval_plots"]


def eval_plots(out: pathlib.Path, rep: dict[str, Any], align: dict[str, np.ndarray],
               curves: dict[float, np.ndarray], every: int,
               novelty: dict[str, Any]) -> list[str]:
  """Writes the four ``gpt_eval`` PNG plots to ``out``; returns their file names.

  Args:
    out: the output directory.
    rep: the report (prompt alignment R^2, one-update median, recursive medians).
    align: ``{"prompts", "achieved"}``, ``(nets, prompts)`` arrays.
    curves: Adam test-loss curves per learning rate, ``(inits, points)``.
    every: Adam steps between curve points.
    novelty: name -> (distances to the nearest training checkpoint, achieved metric).
  """
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  files = []
  fig, ax = plt.subplots(figsize=(5, 5))
  for p, a in zip(align["prompts"], align["achieved"]):
    ax.plot(p, a, ".-", alpha=0.6)
  lim = [align["prompts"].min(), align["prompts"].max()]
  ax.plot(lim, lim, "k--", label="prompt = achieved")
  ax.set(xlabel="prompted test loss", ylabel="achieved test loss after one update",
         title=f"prompt alignment, mean R^2 = {rep['prompt_alignment']['r2_mean']:.3f}")
  ax.legend()
  files.append("prompt_alignment.png")
  fig.savefig(out / files[-1], dpi=100, bbox_inches="tight")
  plt.close(fig)

  fig, ax = plt.subplots(figsize=(6, 4))
  for lr, c in curves.items():
    ax.plot(np.arange(c.shape[1]) * every, c.mean(0), label=f"Adam lr={lr:g}")
  ax.axhline(rep["one_update"]["median"], color="k", ls="--", label="G.pt, 1 update (median)")
  ax.set(yscale="log", xlabel="Adam steps", ylabel="test loss", title="G.pt vs Adam")
  ax.legend(fontsize=7)
  files.append("adam_vs_gpt.png")
  fig.savefig(out / files[-1], dpi=100, bbox_inches="tight")
  plt.close(fig)

  fig, ax = plt.subplots(figsize=(5, 4))
  rec = rep["recursive"]["median"]
  ax.plot(np.arange(len(rec)), rec, "o-")
  ax.set(yscale="log", xlabel="G.pt updates", ylabel="median test loss",
         title="recursive prompting")
  files.append("recursive.png")
  fig.savefig(out / files[-1], dpi=100, bbox_inches="tight")
  plt.close(fig)

  fig, ax = plt.subplots(figsize=(6, 4.5))
  noisy = [n for n in novelty if n.startswith("retrieval + noise")]
  colors = dict(zip(noisy, plt.cm.viridis(np.linspace(0, 0.9, max(len(noisy), 1)))))
  for name, (d, lo) in novelty.items():
    style = ({"color": "red", "marker": "*", "s": 40} if name.startswith("G.pt")
             else {"color": colors[name], "s": 10} if name in colors
             else {"color": "black", "marker": "D", "s": 30})
    ax.scatter(d, lo, alpha=0.7, label=name, **style)
  ax.set(yscale="log", xlabel="L2 distance to nearest training checkpoint",
         ylabel="achieved test loss", title="performance vs novelty (prompt = best)")
  ax.legend(fontsize=7)
  files.append("novelty.png")
  fig.savefig(out / files[-1], dpi=100, bbox_inches="tight")
  plt.close(fig)
  return files
