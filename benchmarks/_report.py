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


def _speedup(r: dict[str, Any], kind: str) -> str:
  if f"speedup_{kind}" not in r:
    return "—"
  s = f"{r[f'speedup_{kind}']:.2f}"
  return "≥" + s if r[f"speedup_{kind}_is_lower_bound"] else s


def _ci(s: dict[str, Any]) -> str:
  return f"{s['iqm']:.2f} [{s['ci95'][0]:.2f}, {s['ci95'][1]:.2f}]"


def _test_cols(t: dict[str, Any]) -> list[str]:
  """The test metrics of one task, loss first."""
  first = next(iter(t["optimizers"].values()), {"test": {}})
  return sorted(first["test"], key=lambda k: (k != "loss", k))


TUNED_NOTE = ("Rows marked *tuned* had their learning rate chosen from a grid on each task "
              "(the rate best at the horizon); all other rows run at the settings shown. "
              "Every speedup is against tuned Adam's lower envelope over its learning rates, "
              "which is why \"adam (tuned)\", one rate, can sit slightly below 1.")


def markdown(results: dict[str, Any]) -> str:
  """Formats benchmark results (from ``run_benchmark``) as markdown tables.

  A summary table (IQM speedup in steps, test loss and wall-clock, each with its
  95 % interval, per optimizer, saying which rows are tuned), the
  pretrained-vs-fresh ratios of learned optimizers, then one table per task.
  """
  cfg = results["config"]
  grids = "; ".join(f"{n} over {len(g)} rates {g[0]:.0e}..{g[-1]:.0e}"
                    for n, g in cfg["learning_rates"].items())
  lines = [
      f"Seeds: {cfg['num_seeds']}. Tuned baselines ({grids}) run "
      f"{cfg['baseline_horizon_mult']}x each task's horizon, so speedups up to "
      f"{cfg['baseline_horizon_mult']} are measured. EMA decay "
      f"{cfg['ema_decay'] or 'auto (window 2 % of the horizon)'}; test metrics at "
      f"~{cfg['eval_points']} points per horizon. {cfg['device']} ({cfg['backend']}, "
      f"{cfg['cpu_count']} cores), jax {cfg['jax']}; {cfg.get('wall_seconds', 0):.0f} s.",
      "",
  ]
  if results.get("skipped"):
    for spec, why in results["skipped"].items():
      lines.append(f"*Skipped {spec}: {why}.*")
    lines.append("")
  lines += ["### Summary over tasks", "",
            "| optimizer | tuned? | speedup (steps) IQM [95% CI] | speedup (test loss) | "
            "speedup (wall-clock) | tasks faster (steps / test) | diverged runs |",
            "|---|---|---|---|---|---|---|"]
  for name, s in results["summary"].items():
    lines.append(
        f"| {name} | {'tuned' if s['tuned'] else 'no'} | {_ci(s['steps'])} | {_ci(s['test'])} "
        f"| {_ci(s['wallclock'])} | {s['steps']['tasks_faster']} / {s['test']['tasks_faster']}"
        f" of {s['num_tasks']} | {s['diverged_runs']} |")
  if results.get("meta_training"):
    lines += ["", "### Did meta-training help? (trained / untrained init, same tasks and seeds)",
              "", "| learned optimizer | speedup ratio (steps) IQM [95% CI] | tasks better | "
              "speedup ratio (test loss) | tasks better |", "|---|---|---|---|---|"]
    for pair, g in results["meta_training"].items():
      lines.append(f"| {pair} | {_ci(g['steps'])} | {g['steps']['tasks_better']}/"
                   f"{g['num_tasks']} | {_ci(g['test'])} | {g['test']['tasks_better']}/"
                   f"{g['num_tasks']} |")
  for label, t in results["tasks"].items():
    test_cols = _test_cols(t)
    lines += ["", f"### {label}", "",
              f"`tasks.get({t['task']!r}, **{t['cfg']})`, {t['steps']} steps (tuned baselines "
              f"{t['baseline_steps']}); test metrics every {t['eval_every']} steps.", "",
              "| optimizer | settings | final train loss | "
              + " | ".join(f"test {c}" for c in test_cols)
              + " | speedup (steps) | (test) | (wall-clock) | ms/step | diverged |",
              "|---|---|---|" + "---|" * len(test_cols) + "---|---|---|---|---|"]
    for name, r in t["optimizers"].items():
      tests = " | ".join(_num(r["test"].get(c)) for c in test_cols)
      ms = r.get("seconds_per_step")
      lines.append(f"| {name} | {r['settings']} | {_num(r['final_loss'])} | {tests} | "
                   f"{_speedup(r, 'steps')} | {_speedup(r, 'test')} | "
                   f"{_speedup(r, 'wallclock')} | {_num(ms and 1e3 * ms, '.3g')} | "
                   f"{r['diverged_seeds']} |")
    for name, why in t.get("not_applicable", {}).items():
      lines.append(f"| {name} | n/a: {why[:80]} |" + " |" * (len(test_cols) + 6))
  lines += ["", TUNED_NOTE, "",
            "Speedup (steps) = steps tuned Adam's envelope needs to reach the optimizer's final "
            "training loss (EMA-smoothed, mean over seeds) / the optimizer's steps; (test) the "
            "same on the test loss, on the step grid; (wall-clock) = seconds tuned Adam needs / "
            "the optimizer's seconds, from per-step times of single runs measured in "
            "interleaved rounds (ms/step). >1 is faster than tuned Adam; ≥ marks a lower "
            "bound: Adam never got there even with its longer runs. IQM and 95 % intervals "
            "are over tasks and seeds (stratified bootstrap)."]
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
  tmp = path.with_name(path.name + ".tmp")    # write + rename: a kill never leaves half a file
  tmp.write_text(json.dumps(_jsonable(results), separators=(",", ":"), allow_nan=False) + "\n")
  tmp.replace(path)
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
