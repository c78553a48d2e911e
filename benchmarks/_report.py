"""Benchmark results as markdown tables and JSON files."""

from __future__ import annotations

import json
import math
import pathlib
from typing import Any

import numpy as np

__all__ = ["markdown", "save_results", "write_json"]


def _num(x: Any, fmt: str = ".4g") -> str:
  return "—" if x is None else format(x, fmt)


def _speedup(r: dict[str, Any]) -> str:
  s = f"{r['speedup']:.2f}"
  if r["speedup_is_lower_bound"]:
    s = "≥" + s
  return s


def _test_cols(t: dict[str, Any]) -> list[str]:
  """The test metrics of one task, loss first."""
  return sorted(t["adam"]["test"], key=lambda k: (k != "loss", k))


def markdown(results: dict[str, Any]) -> str:
  """Formats benchmark results (from ``run_benchmark``) as markdown tables.

  One summary table (IQM speedup with its 95 % interval, per optimizer), then
  one table per task: final and best smoothed training loss, test metrics,
  speedup over tuned Adam at the horizon, wall milliseconds per step, diverged
  seeds.
  """
  cfg = results["config"]
  lines = [
      f"Seeds: {cfg['num_seeds']}; Adam tuned over {len(cfg['learning_rates'])} learning "
      f"rates {cfg['learning_rates'][0]:.0e}..{cfg['learning_rates'][-1]:.0e}; "
      f"EMA decay {cfg['ema_decay'] or 'auto (window 2 % of the horizon)'}; "
      f"{cfg['device']} ({cfg['backend']}, "
      f"{cfg['cpu_count']} cores), jax {cfg['jax']}; {cfg.get('wall_seconds', 0):.0f} s.",
      "",
  ]
  if results.get("skipped"):
    for spec, why in results["skipped"].items():
      lines.append(f"*Skipped {spec}: {why}.*")
    lines.append("")
  lines += ["### Summary over tasks", "",
            "| optimizer | IQM speedup vs tuned Adam [95% CI] | median task speedup | "
            "tasks faster than Adam | diverged runs |",
            "|---|---|---|---|---|"]
  for name, s in results["summary"].items():
    lines.append(f"| {name} | {s['iqm_speedup']:.2f} [{s['ci95'][0]:.2f}, {s['ci95'][1]:.2f}] "
                 f"| {s['median_task_speedup']:.2f} | {s['tasks_faster_than_adam']}/"
                 f"{s['num_tasks']} | {s['diverged_runs']} |")
  for label, t in results["tasks"].items():
    a = t["adam"]
    test_cols = _test_cols(t)
    lines += ["", f"### {label}", "",
              f"`tasks.get({t['task']!r}, **{t['cfg']})`, {t['steps']} steps; tuned Adam "
              f"learning rate {a['best_learning_rate']:.2g}.", "",
              "| optimizer | final loss | best loss | "
              + " | ".join(f"test {c}" for c in test_cols)
              + " | speedup | loss / tuned Adam | ms/step | diverged |",
              "|---|---|---|" + "---|" * len(test_cols) + "---|---|---|---|"]
    rows = [("adam (tuned)", a)] + list(t["optimizers"].items())
    for name, r in rows:
      tests = " | ".join(_num(r["test"].get(c)) for c in test_cols)
      lines.append(f"| {name} | {_num(r['final_loss'])} | {_num(r['best_loss'])} | {tests} | "
                   f"{_speedup(r)} | {_num(r.get('loss_ratio'), '.3g')} | "
                   f"{r['ms_per_step']:.3g} | {r['diverged_seeds']} |")
    for name in t.get("not_applicable", {}):
      lines.append(f"| {name} | n/a (other architecture) |" + " |" * (len(test_cols) + 5))
  lines += ["", "Losses are EMA-smoothed training losses averaged over seeds; test metrics "
            "are averaged over seeds. Speedup = steps tuned Adam's envelope needs to reach "
            "the optimizer's final loss / steps the optimizer took (>1: faster than tuned "
            "Adam; ≥: Adam never got there, a lower bound, counted as faster). Loss / tuned Adam "
            "= the optimizer's final loss over the envelope's final loss (< 1: lower than "
            "any Adam learning rate reached). ms/step is per run, with the "
            "seeds (and Adam's learning rates) vmapped together."]
  return "\n".join(lines) + "\n"


def _jsonable(x: Any) -> Any:
  """Replaces non-finite floats by None and NumPy scalars by Python ones, recursively."""
  if isinstance(x, dict):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, (float, np.floating)):
    return float(x) if math.isfinite(x) else None
  if isinstance(x, np.integer):
    return int(x)
  if isinstance(x, np.bool_):
    return bool(x)
  return x


def write_json(results: dict[str, Any], path: str | pathlib.Path) -> pathlib.Path:
  """Writes ``results`` as JSON; NaN and Inf are stored as null."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(_jsonable(results), indent=1, allow_nan=False) + "\n")
  return path


def save_results(results: dict[str, Any], out_dir: str | pathlib.Path) -> dict[str, Any]:
  """Writes ``results.json``, ``results.md`` and the PNG plots into ``out_dir``.

  Returns:
    ``{"json": path, "markdown": path, "plots": [paths]}``.
  """
  from benchmarks._plots import plot_results

  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  js = write_json(results, out / "results.json")
  md = out / "results.md"
  md.write_text(markdown(results))
  return {"json": js, "markdown": md, "plots": plot_results(results, out)}
