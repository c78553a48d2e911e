"""One optimizer's row of benchmark results: speedups from its runs, and JSON-ready curves."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from benchmarks import _protocol as protocol

__all__ = ["MAX_CURVE_POINTS", "Reference", "add_wallclock", "as_array", "finite_or_none",
           "nulls", "sig_round", "subsample", "task_row"]

#: Curves stored in the results are subsampled to at most this many points.
MAX_CURVE_POINTS = 250


def subsample(curve: np.ndarray, steps: np.ndarray | None = None
               ) -> tuple[list[int], list[float | None]]:
  n = curve.shape[-1]
  idx = np.unique(np.linspace(0, n - 1, min(n, MAX_CURVE_POINTS)).round().astype(int))
  vals = np.where(np.isfinite(curve[..., idx]), curve[..., idx], np.nan)
  at = (idx + 1) if steps is None else np.asarray(steps)[idx]
  return at.tolist(), nulls(sig_round(vals))


def sig_round(x: np.ndarray, digits: int = 6) -> np.ndarray:
  """Rounds to ``digits`` significant digits (curves for plots and tables; small losses kept)."""
  x = np.asarray(x, np.float64)
  with np.errstate(divide="ignore", invalid="ignore"):
    mag = np.where(np.isfinite(x) & (x != 0), np.floor(np.log10(np.abs(x))), 0.0)
    scale = 10.0 ** (digits - 1 - mag)
    return np.where(np.isfinite(x), np.round(x * scale) / scale, x)


def nulls(x: np.ndarray) -> list:
  """A nested list with NaN/Inf as None (JSON null)."""
  return [(nulls(v) if isinstance(v, np.ndarray) else finite_or_none(v)) for v in x]


def finite_or_none(x: float) -> float | None:
  x = float(x)
  return x if np.isfinite(x) else None


def as_array(values: Sequence[float | None]) -> np.ndarray:
  return np.array([np.inf if v is None else v for v in values], np.float64)


class Reference:
  """Tuned Adam's curves that every speedup is measured against."""

  def __init__(self, record: dict[str, Any]):
    self.envelope = as_array(record["envelope_full"])
    self.test_steps = np.asarray(record["test_steps"])
    self.test_envelope = as_array(record["test_envelope"])


def task_row(losses: np.ndarray, test: dict[str, np.ndarray], test_steps: np.ndarray,
         horizon: int, ema_decay: float, ref: Reference) -> dict[str, Any]:
  """The numbers of one optimizer on one task from ``(num_seeds, horizon)`` runs.

  Wall-clock speedups are added later, once per-step times are measured.
  """
  smoothed = protocol.ema(losses, ema_decay)
  mean = smoothed.mean(axis=0)
  at_t = test_steps <= horizon
  row: dict[str, Any] = {
      "final_loss": finite_or_none(mean[-1]),
      "best_loss": finite_or_none(np.min(mean)),
      "loss_ratio": (finite_or_none(mean[-1] / ref.envelope[horizon - 1])
                     if ref.envelope[horizon - 1] > 0 else None),
      "test": {k: finite_or_none(np.mean(v[:, at_t][:, -1])) for k, v in test.items()},
      "diverged_seeds": int(protocol.diverged(losses).sum()),
  }
  finals = {"steps": (smoothed[:, -1], mean[-1], None, ref.envelope),
            "test": (test["loss"][:, at_t][:, -1], np.mean(test["loss"][:, at_t][:, -1]),
                     ref.test_steps, ref.test_envelope)}
  for kind, (per_seed, avg, grid, env) in finals.items():
    # Stored envelopes keep 9 significant digits: compare at that precision, so that
    # tuned Adam's own row (its final loss is the envelope's) is not a step short.
    per_seed, avg = sig_round(per_seed, 9), sig_round(avg, 9)
    s, lower = protocol.horizon_speedup(avg, env, horizon, grid=grid)
    row[f"speedup_{kind}"] = float(s)
    row[f"speedup_{kind}_is_lower_bound"] = bool(lower)
    row[f"speedup_{kind}_per_seed"] = [float(x) for x in
                                       protocol.horizon_speedup(per_seed, env, horizon,
                                                                grid=grid)[0]]
  row["curve_steps"], row["curve"] = subsample(mean)
  row["test_steps"] = test_steps[at_t].tolist()
  row["test_curve"] = {k: nulls(sig_round(v[:, at_t].mean(axis=0))) for k, v in test.items()}
  return row


def add_wallclock(row: dict[str, Any], seconds: float, reference_seconds: float) -> None:
  row["seconds_per_step"] = seconds
  row["reference_seconds_per_step"] = reference_seconds
  ratio = reference_seconds / seconds
  row["speedup_wallclock"] = row["speedup_steps"] * ratio
  row["speedup_wallclock_is_lower_bound"] = row["speedup_steps_is_lower_bound"]
  row["speedup_wallclock_per_seed"] = [s * ratio for s in row["speedup_steps_per_seed"]]
