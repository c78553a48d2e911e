"""PNG plots of benchmark results: training, test and wall-clock curves; speedup bars."""

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
_KIND_TITLES = {"steps": "steps (training loss)", "test": "test loss",
                "wallclock": "wall-clock"}


def _color(i: int):
  pool = _COLORS + _MORE_COLORS
  return pool[i % len(pool)]


def _curve(values: list) -> np.ndarray:
  return np.array([np.nan if v is None else v for v in values], np.float64)


def _set_scale(ax, curves: list[np.ndarray], start: float) -> None:
  """Log scale when every value is positive and they span over a decade; a readable range."""
  vals = np.concatenate([c[np.isfinite(c)] for c in curves] or [np.zeros(0)])
  if vals.size == 0:
    return
  lo, hi = float(vals.min()), float(max(start, np.nanmin(vals)))
  hi = max(hi, lo)
  if lo > 0 and vals.max() / lo > 10:
    ax.set_yscale("log")
    ax.set_ylim(lo / 1.3, hi * 1.3)
  else:
    pad = 0.05 * (hi - lo + 1e-12)
    ax.set_ylim(lo - pad, hi + pad)


def plot_curves(label: str, t: dict[str, Any], path: str | pathlib.Path,
                reference: str = "adam") -> pathlib.Path:
  """One task's curves in three panels: training loss by step (each Adam learning
  rate faint, the tuned envelope dashed, through the baselines' longer runs), test
  loss by step, and training loss by wall-clock seconds."""
  fig, axes = plt.subplots(1, 3, figsize=(15.5, 4.3))
  a = t["baselines"][reference]
  rows = {n: r for n, r in t["optimizers"].items() if not r["tuned"]}
  tuned = {n: r for n, r in t["optimizers"].items() if r["tuned"]}
  ref_row = next((r for n, r in tuned.items() if n.startswith(reference)), None)
  steps, env = np.array(a["envelope_steps"]), _curve(a["envelope"])

  ax = axes[0]
  for c in a["curves_by_lr"]:
    ax.plot(steps, _curve(c), color="0.6", lw=0.6, alpha=0.5)
  ax.plot([], [], color="0.6", lw=0.6, label=f"{reference}, each lr")
  ax.plot(steps, env, "k--", lw=1.6, label=f"tuned {reference} envelope")
  for i, (name, b) in enumerate((n, b) for n, b in t["baselines"].items() if n != reference):
    ax.plot(np.array(b["envelope_steps"]), _curve(b["envelope"]), ls=":", lw=1.4,
            color="0.25", label=f"tuned {name} envelope")
  for i, (name, r) in enumerate(rows.items()):
    ax.plot(np.array(r["curve_steps"]), _curve(r["curve"]), lw=1.4, color=_color(i),
            label=f"{name} ({r['speedup_steps']:.2f}x)")
  ax.axvline(t["steps"], color="k", lw=0.6, alpha=0.5)
  _set_scale(ax, [env] + [_curve(r["curve"]) for r in rows.values()],
             float(np.nanmax(env[: max(1, len(env) // 40)])))
  ax.set_xlabel("step")
  ax.set_ylabel("training loss (EMA, mean over seeds)")
  ax.set_title(f"{label}: training loss", fontsize=10)
  ax.legend(fontsize=6.5, loc="best")

  ax = axes[1]
  tsteps, tenv = np.array(a["test_steps"]), _curve(a["test_envelope"])
  ax.plot(tsteps, tenv, "k--", lw=1.6, label=f"tuned {reference} envelope")
  for i, (name, r) in enumerate(rows.items()):
    ax.plot(np.array(r["test_steps"]), _curve(r["test_curve"]["loss"]), lw=1.4,
            color=_color(i), label=f"{name} ({r['speedup_test']:.2f}x)")
  ax.axvline(t["steps"], color="k", lw=0.6, alpha=0.5)
  _set_scale(ax, [tenv] + [_curve(r["test_curve"]["loss"]) for r in rows.values()],
             float(np.nanmax(tenv[:2])))
  ax.set_xlabel("step")
  ax.set_ylabel("test loss (mean over seeds)")
  ax.set_title("test loss", fontsize=10)
  ax.legend(fontsize=6.5, loc="best")

  ax = axes[2]
  if ref_row is not None and "reference_seconds_per_step" in ref_row:
    ref_sec = ref_row["reference_seconds_per_step"]
    ax.plot(steps * ref_sec, env, "k--", lw=1.6, label=f"tuned {reference} envelope")
    for i, (name, r) in enumerate(rows.items()):
      if "seconds_per_step" in r:
        ax.plot(np.array(r["curve_steps"]) * r["seconds_per_step"], _curve(r["curve"]), lw=1.4,
                color=_color(i), label=f"{name} ({r['speedup_wallclock']:.2f}x)")
    _set_scale(ax, [env] + [_curve(r["curve"]) for r in rows.values()],
               float(np.nanmax(env[: max(1, len(env) // 40)])))
    ax.legend(fontsize=6.5, loc="best")
  ax.set_xlabel("seconds (one run, per-step times measured interleaved)")
  ax.set_ylabel("training loss")
  ax.set_title("training loss by wall-clock", fontsize=10)
  for ax in axes:
    ax.grid(alpha=0.3)
  fig.suptitle(f"{label}: {t['task']} {t['cfg']}", fontsize=9)
  fig.tight_layout()
  path = pathlib.Path(path)
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def plot_speedups(results: dict[str, Any], path: str | pathlib.Path) -> pathlib.Path:
  """Bars of the speedup over tuned Adam in steps, test loss and wall-clock: per task
  and optimizer, plus the IQM with its 95 % interval. Log y axis; the line at 1 is
  tuned Adam. A task an optimizer does not apply to gets no bar."""
  labels = list(results["tasks"])
  names = [n for n in results["summary"] if not n.startswith(results["config"]["reference"])]
  groups = labels + ["IQM"]
  fig, axes = plt.subplots(3, 1, figsize=(min(16.0, max(7.0, 1.2 + 0.25 * len(groups)
                                                         * max(1, len(names)))), 10.5))
  width = 0.8 / max(1, len(names))
  x = np.arange(len(groups))
  for ax, kind in zip(axes, ("steps", "test", "wallclock")):
    for i, name in enumerate(names):
      pos = x + (i - (len(names) - 1) / 2) * width
      for j, t in enumerate(labels):
        r = results["tasks"][t]["optimizers"].get(name)
        if r is None or f"speedup_{kind}" not in r:
          continue  # not applicable: no bar
        ax.bar(pos[j], max(r[f"speedup_{kind}"], 1e-3), width, color=_color(i),
               hatch="//" if r[f"speedup_{kind}_is_lower_bound"] else None)
      s = results["summary"][name][kind]
      ax.bar(pos[-1], max(s["iqm"], 1e-3), width, color=_color(i), label=name)
      ax.errorbar(pos[-1], s["iqm"], fmt="none", ecolor="k", capsize=2, lw=1,
                  yerr=[[s["iqm"] - s["ci95"][0]], [s["ci95"][1] - s["iqm"]]])
    ax.axhline(1.0, color="k", ls="--", lw=1)
    ax.set_yscale("log")
    ax.set_xticks(x, groups, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(f"speedup ({_KIND_TITLES[kind]})", fontsize=8)
    ax.grid(alpha=0.3, axis="y")
  axes[0].set_title("Speedup over tuned Adam at the horizon (>1 is faster; hatched: lower "
                    "bound; IQM with 95% CI)", fontsize=10)
  axes[0].legend(fontsize=7, ncol=3)
  fig.tight_layout()
  path = pathlib.Path(path)
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def plot_results(results: dict[str, Any], out_dir: str | pathlib.Path) -> list[pathlib.Path]:
  """Writes ``curves_<task>.png`` for every task and ``speedup.png``; returns the paths."""
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  ref = results["config"]["reference"]
  paths = [plot_curves(label, t, out / f"curves_{label}.png", ref)
           for label, t in results["tasks"].items()]
  if any(not n.startswith(ref) for n in results["summary"]):
    paths.append(plot_speedups(results, out / "speedup.png"))
  return paths
