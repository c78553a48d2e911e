"""Settings of the G.pt evaluation: Adam's grid, the bounds of the numeric settings,
and recording the chosen optimizer settings with the report."""

from __future__ import annotations

import json
import pathlib
import time
from typing import Any, Callable

from absl import flags

__all__ = ["ADAM_LRS", "SETTING_BOUNDS", "check_flag", "check_settings", "finish_report"]

#: Adam's learning-rate grid, about four points per decade: Adam's best rate on the
#: digits MLP lies between 3e-2 and 1e-1 for the number of steps G.pt's update is worth,
#: where a half-decade grid overstates the steps Adam needs (115 on 1e-3, 3e-3, .. 1e-1
#: against 90 at 5e-2, for the shipped model's one-update loss 0.087).
ADAM_LRS = (1e-3, 2e-3, 3e-3, 5e-3, 7e-3, 1e-2, 1.5e-2, 2e-2, 3e-2, 4e-2, 5e-2, 7e-2, 1e-1)


#: ``setting: (check, requirement)`` of :func:`evaluate_gpt`'s numeric settings.
SETTING_BOUNDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "num_nets": (lambda v: v >= 1, ">= 1"), "num_prompts": (lambda v: v >= 2, ">= 2"),
    "num_inits": (lambda v: v >= 1, ">= 1"), "recursive_steps": (lambda v: v >= 1, ">= 1"),
    "num_sampling_steps": (lambda v: v >= 1, ">= 1"), "eta": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "adam_steps": (lambda v: v >= 1, ">= 1"),
    "temperatures": (lambda v: len(v) > 0 and min(v) >= 0, "non-empty, each >= 0"),
    "guidances": (lambda v: len(v) > 0 and min(v) >= 0, "non-empty, each >= 0"),
    "target_fractions": (lambda v: len(v) > 0 and min(v) >= 0, "non-empty, each >= 0"),
    "adam_lrs": (lambda v: len(v) > 0 and min(v) > 0, "non-empty, each > 0"),
}


def check_settings(**settings: Any) -> None:
  """Raises ``ValueError`` naming the first setting of :func:`evaluate_gpt` out of range."""
  for key, value in settings.items():
    ok, requirement = SETTING_BOUNDS[key]
    if not ok(value):
      raise ValueError(f"{key} must be {requirement}, got {value}")


def finish_report(rep, outp, weights, save_settings, t0, log):
  """Records the report's optimizer settings in the manifest if asked; writes ``report.json``."""
  if save_settings:
    temperature, guidance, target = rep["temperature"], rep["guidance"], rep["target"]
    mpath = pathlib.Path(weights) / "manifest.json"
    man = json.loads(mpath.read_text())
    man["extra"].update(sampling_temperature=temperature, guidance=guidance, target=target)
    mpath.write_text(json.dumps(man, indent=1))
    log(f"gpt_eval: wrote sampling_temperature={temperature:g}, guidance={guidance:g}, "
        f"target={target:.6g} to {mpath}")
  rep["seconds"] = time.time() - t0
  (outp / "report.json").write_text(json.dumps(rep, indent=1))
  log(f"gpt_eval: wrote {outp / 'report.json'}")
  return rep


def check_flag(key: str, value: Any) -> bool:
  """An absl validator: ``check_settings`` for one flag (lists of strings as floats)."""
  try:
    if isinstance(value, list):
      value = [float(x) for x in value]
    check_settings(**{key: value})
  except ValueError as e:
    raise flags.ValidationError(str(e) if key in str(e) else f"{key}: {e}") from None
  return True
