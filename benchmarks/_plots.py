"""PNG plots of benchmark results: loss curves against tuned Adam, speedup bars."""

from __future__ import annotations

import pathlib
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["plot_curves", "plot_results", "plot_speedups"]


# Matplotlib's tab10 without its gray (C7), which the per-learning-rate Adam curves use.
_COLORS = [f"C{i}" for i in (0, 1, 2, 3, 4, 5, 6, 8, 9)]
# Past nine optimizers, distinct colors from tab20 (no grey: Adam's grid is grey).
_MORE_COLORS = [matplotlib.colormaps["tab20"](i) for i in (1, 3, 5, 7, 9, 11, 13, 17, 19)]


def _color(i: int):
  pool = _COLORS + _MORE_COLORS
  return pool[i % len(pool)]


def _curve(values: list) -> np.ndarray:
  return np.array([np.nan if v is None else v for v in values], np.float64)


def plot_curves(label: str, t: dict[str, Any], path: str | pathlib.Path) -> pathlib.Path:
  """Plots one task's smoothed loss curves: each Adam learning rate (faint), the
  tuned-Adam lower envelope (black, dashed) and each optimizer."""
  fig, ax = plt.subplots(figsize=(8.6, 4.2))
  a = t["adam"]
  steps = np.array(a["envelope_steps"])
  env = _curve(a["envelope"])
  finite = [c for c in [env] + [_curve(c) for c in a["curves_by_lr"]] if np.isfinite(c).any()]
  lo = min(np.nanmin(c) for c in finite)
  log = lo > 0
  for lr, c in zip(a["learning_rates"], a["curves_by_lr"]):
    ax.plot(steps, _curve(c), color="0.6", lw=0.6, alpha=0.5)
  ax.plot([], [], color="0.6", lw=0.6, label="adam, each lr")
  ax.plot(steps, env, "k--", lw=1.8,
          label=f"tuned adam envelope (best lr {a['best_learning_rate']:.1g})")
  for i, (name, r) in enumerate(t["optimizers"].items()):
    ax.plot(np.array(r["curve_steps"]), _curve(r["curve"]), lw=1.4, color=_color(i),
            label=f"{name} (speedup {r['speedup']:.2f})")
  # Keep the interesting range: from the best loss to a bit above the initial one.
  hi = np.nanmax(env[: max(1, len(env) // 20)])
  best = min([np.nanmin(env)] + [np.nanmin(_curve(r["curve"])) for r in t["optimizers"].values()
                                  if np.isfinite(_curve(r["curve"])).any()])
  if log:
    if best <= 0:  # a curve reached 0 (stored curves are rounded): floor at the smallest > 0
      pos = [c[c > 0] for c in [env] + [_curve(r["curve"]) for r in t["optimizers"].values()]]
      best = min(float(np.min(c)) for c in pos if c.size)
    ax.set_yscale("log")
    ax.set_ylim(best / 1.3, hi * 1.3)
  else:
    pad = 0.05 * (hi - best + 1e-12)
    ax.set_ylim(best - pad, hi + pad)
  ax.set_xlabel("step")
  ax.set_ylabel("training loss (EMA, mean over seeds)")
  ax.set_title(f"{label}: {t['task']}")
  ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  path = pathlib.Path(path)
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def plot_speedups(results: dict[str, Any], path: str | pathlib.Path) -> pathlib.Path:
  """Bar chart of speedup over tuned Adam: per task and optimizer, plus the IQM with
  its 95 % interval. The y axis is logarithmic; the line at 1 is tuned Adam."""
  labels = list(results["tasks"])
  names = [n for n in results["summary"] if n != "adam (tuned)"]
  groups = labels + ["IQM"]
  width_in = min(12.0, max(6.4, 1.0 + 0.22 * len(groups) * max(1, len(names))))
  fig, ax = plt.subplots(figsize=(width_in, 4.4))
  width = 0.8 / max(1, len(names))
  x = np.arange(len(groups))
  for i, name in enumerate(names):
    vals = [results["tasks"][t]["optimizers"].get(name, {"speedup": np.nan})["speedup"]
            for t in labels]
    s = results["summary"][name]
    vals.append(s["iqm_speedup"])
    pos = x + (i - (len(names) - 1) / 2) * width
    ax.bar(pos, np.fmax(vals, 1e-3), width, label=name, color=_color(i))
    ax.errorbar(pos[-1], s["iqm_speedup"], fmt="none", ecolor="k", capsize=2, lw=1,
                yerr=[[s["iqm_speedup"] - s["ci95"][0]], [s["ci95"][1] - s["iqm_speedup"]]])
  ax.axhline(1.0, color="k", ls="--", lw=1)
  ax.set_yscale("log")
  ax.set_xticks(x, groups, rotation=20, ha="right", fontsize=8)
  ax.set_ylabel("speedup over tuned Adam (steps)")
  ax.set_title("Speedup over tuned Adam at the horizon (>1 is faster; IQM with 95% CI)",
               fontsize=10)
  ax.legend(fontsize=7, ncol=2)
  ax.grid(alpha=0.3, axis="y")
  fig.tight_layout()
  path = pathlib.Path(path)
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def plot_results(results: dict[str, Any], out_dir: str | pathlib.Path) -> list[pathlib.Path]:
  """Writes ``curves_<task>.png`` for every task and ``speedup.png``; returns the paths."""
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  paths = [plot_curves(label, t, out / f"curves_{label}.png")
           for label, t in results["tasks"].items()]
  if results["summary"] and len(results["summary"]) > 1:
    paths.append(plot_speedups(results, out / "speedup.png"))
  return paths
