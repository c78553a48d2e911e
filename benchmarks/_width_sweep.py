r"""Width sweeps: does an optimizer's loss curve keep its shape as a network widens?

An optimizer whose updates are sized for the width (muP, e.g. ``celo2_lopt`` with
``update_scaling="spectral"``) should give nearly the same loss curve on the
digits MLP at hidden width 32 and at 1,024; a standard parameterization's curve
drifts (its hidden-layer updates grow with the width). :func:`sweep_widths` trains
each optimizer at each width, all seeds vmapped in one compiled run, and measures
the drift with :func:`width_spread`: the standard deviation over widths of the
log loss, so 0 means the curves coincide and 0.1 means about 10 % apart.
"""

from __future__ import annotations

import pathlib
import time
from typing import Any, Sequence

import jax
import numpy as np

import tasks
from benchmarks._protocol import auto_ema_decay, ema
from benchmarks._report import write_json
from benchmarks._runs import train_runs
from benchmarks._specs import build_optimizer, parse_spec

__all__ = ["save_width_sweep", "sweep_widths", "width_spread", "width_sweep_markdown"]


def width_spread(values: Any) -> float:
  r"""How much a loss changes with width: the spread of its log over widths.

  .. math::
     s = \operatorname{mean}_t \operatorname{std}_w \log v_{w,t}

  over axis 0 (widths) and averaged over any further axes (steps), so final
  losses ``(W,)`` and whole curves ``(W, T)`` both give one number. Identical
  rows give exactly 0; losses 10 % apart give about 0.05 for two widths. A
  non-finite or non-positive value (a diverged run) gives ``inf``.

  Example::

    width_spread([0.1, 0.1, 0.1])   # 0.0: the loss does not depend on the width
    width_spread([0.1, 1.0])        # 1.15 = log(10) / 2

  Args:
    values: array of shape ``(num_widths, ...)``, ``num_widths >= 1``.

  Returns:
    The spread (a float >= 0, or ``inf``).
  """
  v = np.asarray(values, np.float64)
  if v.ndim == 0 or v.shape[0] < 1:
    raise ValueError(f"width_spread needs an array of shape (num_widths, ...), got {v.shape}")
  if not np.all(np.isfinite(v) & (v > 0)):
    return float("inf")
  logs = np.log(v)
  return float(np.mean(np.std(logs - logs[:1], axis=0)))   # relative to row 0: exact zeros


def _finite_mean(x: np.ndarray, axis) -> np.ndarray:
  """Mean over ``axis``; ``inf`` where any value is not finite (a diverged seed)."""
  return np.where(np.all(np.isfinite(x), axis=axis), np.mean(np.where(np.isfinite(x), x, 0.0),
                                                             axis=axis), np.inf)


def _non_increasing(values: list[float]) -> bool:
  v = np.asarray(values, np.float64)
  return bool(np.all(np.isfinite(v)) and np.all(np.diff(v) <= 0))


def _summarize(row: dict[str, Any], decay: float) -> dict[str, Any]:
  """Adds the over-width figures to a row holding per-width losses and curves."""
  final = np.array(row["final_loss"], np.float64)
  curves = np.array([[np.inf if v is None else v for v in c] for c in row["curve"]], np.float64)
  row["ratio"] = float(final[-1] / final[0]) if np.all(np.isfinite(final[[0, -1]])) else None
  row["final_spread"] = width_spread(final)
  row["curve_spread"] = width_spread(ema(curves, decay))
  row["test_spread"] = width_spread(row["test_loss"])
  row["wider_is_better"] = {"train": _non_increasing(row["final_loss"]),
                            "test": _non_increasing(row["test_loss"])}
  return row


def sweep_widths(optimizers: Sequence[str], widths: Sequence[int], *, num_steps: int = 300,
                 num_seeds: int = 2, depth: int = 2, task_name: str = "digits_mlp",
                 task_kwargs: dict[str, Any] | None = None, final_fraction: float = 0.1,
                 seed: int = 0, verbose: bool = True) -> dict[str, Any]:
  """Trains ``task_name`` with ``hidden=(w,) * depth`` at each width with each optimizer.

  Every optimizer and width sees the same seeds (keys split from ``seed``); the
  seeds of one (optimizer, width) run vmapped in one compiled scan
  (:func:`benchmarks.train_runs`). Learned optimizers get the horizon ``num_steps``.

  Example::

    r = sweep_widths(["adam(learning_rate=3e-3)", "celo2_lopt:fresh(update_scaling='spectral')"],
                     [32, 128, 512], num_steps=200)
    r["optimizers"]["adam(learning_rate=3e-3)"]["final_spread"]

  Args:
    optimizers: specs as :func:`benchmarks.parse_spec` takes them.
    widths: hidden widths (positive ints; sorted ascending in the results).
    num_steps: training steps per run (>= 2).
    num_seeds: seeds per optimizer and width.
    depth: number of hidden layers, all of width ``w``.
    task_name: a task registry name whose factory takes ``hidden=``.
    task_kwargs: further arguments of the task (e.g. ``batch_size``).
    final_fraction: the final training loss is the mean over the last
      ``max(1, round(final_fraction * num_steps))`` steps (and over seeds).
    seed: base seed.
    verbose: print a line per (optimizer, width).

  Returns:
    ``{"config": {...}, "optimizers": {spec: row}}``; each row has, per width
    (ascending), ``final_loss``, ``test_loss``, ``test_error`` (means over seeds),
    ``curve`` (mean training loss per step), ``diverged`` (seeds with a non-finite
    loss) and ``seconds``; and over widths ``ratio`` (widest / narrowest final
    loss), ``final_spread`` (:func:`width_spread` of the final losses) and
    ``curve_spread`` (:func:`width_spread` of the EMA-smoothed curves), ``test_spread``
    and ``wider_is_better`` (``{"train": bool, "test": bool}``: the final training /
    test loss never rises with the width, what muP predicts of a transferring optimizer).

  Raises:
    KeyError, ValueError: an unknown optimizer, a malformed spec, or bad widths.
  """
  specs = [parse_spec(s) for s in optimizers]
  ws = sorted({int(w) for w in widths})
  if not ws or any(w < 1 for w in ws) or len(ws) != len(list(widths)):
    raise ValueError(f"widths must be distinct positive integers, got {list(widths)}")
  if num_steps < 2 or num_seeds < 1 or depth < 1:
    raise ValueError(f"need num_steps >= 2, num_seeds >= 1 and depth >= 1, got {num_steps}, "
                     f"{num_seeds}, {depth}")
  kwargs = dict(task_kwargs or {})
  keys = jax.random.split(jax.random.key(seed), num_seeds)
  tail = max(1, int(round(final_fraction * num_steps)))
  decay = auto_ema_decay(num_steps)
  rows: dict[str, Any] = {}
  for spec in specs:
    row: dict[str, Any] = {"name": spec.name, "widths": ws, "final_loss": [], "test_loss": [],
                           "test_error": [], "curve": [], "diverged": [], "seconds": []}
    for w in ws:
      task = tasks.get(task_name, hidden=(w,) * depth, **kwargs)
      t0 = time.perf_counter()
      runs = train_runs(task, build_optimizer(spec, num_steps, task=task), num_steps, keys,
                        every=num_steps)
      seconds = time.perf_counter() - t0
      losses = runs.losses                                    # (seeds, steps)
      row["final_loss"].append(float(_finite_mean(losses[:, -tail:], axis=None)))
      row["test_loss"].append(float(_finite_mean(runs.test["loss"][:, -1], axis=0)))
      row["test_error"].append(float(_finite_mean(runs.test["error"][:, -1], axis=0)))
      row["curve"].append(_finite_mean(losses, axis=0))
      row["diverged"].append(int(np.sum(~np.all(np.isfinite(losses), axis=1))))
      row["seconds"].append(seconds)
      if verbose:
        print(f"{spec.text:>50s}  width {w:5d}: final training loss {row['final_loss'][-1]:.4f}, "
              f"test loss {row['test_loss'][-1]:.4f} ({seconds:.0f} s)", flush=True)
    row["curve"] = [c.tolist() for c in row["curve"]]
    rows[spec.text] = _summarize(row, decay)
  config = {"task": task_name, "task_kwargs": kwargs, "depth": depth, "widths": ws,
            "num_steps": int(num_steps), "num_seeds": int(num_seeds), "seed": int(seed),
            "final_fraction": final_fraction, "final_steps": tail, "ema_decay": decay,
            "backend": jax.default_backend()}
  return {"config": config, "optimizers": rows}


def _num(x: Any, fmt: str = ".3g") -> str:
  return "—" if x is None or not np.isfinite(x) else format(x, fmt)


def _yes(flag: bool) -> str:
  return "yes" if flag else "no"


def width_sweep_markdown(results: dict[str, Any]) -> str:
  """Markdown tables of a :func:`sweep_widths` result: final training and test loss per width."""
  c = results["config"]
  ws = c["widths"]
  head = ["optimizer"] + [f"w={w}" for w in ws]
  lines = [f"Width sweep on `{c['task']}` with hidden=(w,)×{c['depth']}, {c['num_steps']} steps, "
           f"{c['num_seeds']} seeds. Final training loss = mean over the last "
           f"{c['final_steps']} steps and the seeds. *spread* = std over widths of the log loss "
           f"(0: the same loss at every width); *curve spread* averages it over the "
           f"EMA-smoothed (decay {c['ema_decay']:.3g}) curves; *ratio* = widest / narrowest; "
           f"*wider better*: the loss never rises with the width.",
           "", "| " + " | ".join(head + ["ratio", "spread", "curve spread", "wider better"])
           + " |", "|" + "---|" * (len(head) + 4)]
  for name, r in results["optimizers"].items():
    cells = [f"`{name}`"] + [_num(v) + ("†" if d else "") for v, d in zip(r["final_loss"],
                                                                         r["diverged"])]
    cells += [_num(r["ratio"], ".3f"), _num(r["final_spread"], ".3f"),
              _num(r["curve_spread"], ".3f"), _yes(r["wider_is_better"]["train"])]
    lines.append("| " + " | ".join(cells) + " |")
  lines += ["", "Test loss (held-out digits, final parameters, mean over seeds) and its spread:",
            "", "| " + " | ".join(head + ["spread", "wider better", "test error per width"])
            + " |", "|" + "---|" * (len(head) + 3)]
  for name, r in results["optimizers"].items():
    err = ", ".join(_num(e, ".3f") for e in r["test_error"])
    lines.append("| " + " | ".join([f"`{name}`"] + [_num(v) for v in r["test_loss"]]
                                   + [_num(r["test_spread"], ".3f"),
                                      _yes(r["wider_is_better"]["test"]), err]) + " |")
  if any(any(r["diverged"]) for r in results["optimizers"].values()):
    lines += ["", "† a seed diverged (non-finite loss)."]
  return "\n".join(lines) + "\n"


def _plot(results: dict[str, Any], path: pathlib.Path) -> pathlib.Path:
  """One panel per optimizer, one smoothed training-loss curve per width (shared log y)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  rows = results["optimizers"]
  ws, decay = results["config"]["widths"], results["config"]["ema_decay"]
  cols = min(4, len(rows))
  nrows = -(-len(rows) // cols)
  fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.4 * nrows), sharey=True,
                           squeeze=False)
  colors = matplotlib.colormaps["viridis"](np.linspace(0.0, 0.9, len(ws)))
  for i, (name, r) in enumerate(rows.items()):
    ax = axes[i // cols][i % cols]
    for w, curve, color in zip(ws, r["curve"], colors):
      c = ema(np.array([np.inf if v is None else v for v in curve], np.float64), decay)
      ax.plot(np.arange(1, c.size + 1), np.where(np.isfinite(c), c, np.nan), color=color,
              lw=1.3, label=f"w={w}")
    ax.set_yscale("log")
    ax.set_title(f"{name}\nspread {_num(r['final_spread'], '.3f')}, curve spread "
                 f"{_num(r['curve_spread'], '.3f')}", fontsize=8)
    ax.set_xlabel("step", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3, which="both")
  for i in range(len(rows), nrows * cols):
    axes[i // cols][i % cols].axis("off")
  axes[0][0].set_ylabel("training loss (EMA)")
  axes[0][0].legend(fontsize=7)
  c = results["config"]
  fig.suptitle(f"{c['task']}, hidden=(w,)×{c['depth']}: training loss by width "
               f"(mean of {c['num_seeds']} seeds)", fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def save_width_sweep(results: dict[str, Any], out_dir: str | pathlib.Path) -> dict[str, Any]:
  """Writes ``width_sweep.json``, ``width_sweep.md`` and ``width_sweep.png`` into ``out_dir``.

  Returns:
    ``{"json": path, "markdown": path, "plot": path}``.
  """
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  md = out / "width_sweep.md"
  md.write_text(width_sweep_markdown(results))
  return {"json": write_json(results, out / "width_sweep.json"), "markdown": md,
          "plot": _plot(results, out / "width_sweep.png")}
