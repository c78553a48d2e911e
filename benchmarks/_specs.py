"""Optimizer specs on the command line: ``name``, ``name:weights``, ``name(key=value, ...)``.

::

  parse_spec("sgd(learning_rate=0.1, momentum=0.9)")
  parse_spec("celo2_lopt:pretrained")
  parse_spec("celo2_lopt:pretrained(num_steps=unknown)")   # horizon-free mode
  split_specs("sgd(learning_rate=0.1,momentum=0.9),celo2_lopt:fresh")  # two specs
"""

from __future__ import annotations

import ast
import difflib
import pathlib
import re
from typing import Any, NamedTuple

import lopt
from lopt._horizon import check_num_steps

__all__ = ["TUNE_RANGES", "OptimizerSpec", "build_optimizer", "parse_spec", "split_specs",
           "tunable", "tune_grid", "unavailable_reason", "weights_digest"]

#: Learning-rate ranges over which each hand-designed optimizer is tuned (log grid).
TUNE_RANGES: dict[str, tuple[float, float]] = {
    "sgd": (1e-3, 10.0), "momentum": (1e-4, 1.0), "nesterov": (1e-4, 1.0),
    "adam": (1e-4, 1.0), "adamw": (1e-4, 1.0), "rmsprop": (1e-5, 1e-1),
    "adafactor": (1e-4, 1.0), "lion": (1e-5, 1e-1), "muon": (1e-4, 1.0),
}

_SPEC = re.compile(r"^(?P<name>[A-Za-z_]\w*)(?::(?P<w1>[^()]+?))?\s*(?:\((?P<args>.*)\))?"
                   r"(?::(?P<w2>[^()]+))?$")


class OptimizerSpec(NamedTuple):
  """A parsed optimizer spec.

  Attributes:
    text: the spec as written (the row's label in results).
    name: the registry name (``lopt.available()``).
    weights: for learned optimizers, ``"pretrained"``, ``"fresh"`` or a path; else None.
    kwargs: keyword arguments for ``lopt.get`` (literals only).
  """
  text: str
  name: str
  weights: str | None
  kwargs: dict[str, Any]

  @property
  def learned(self) -> bool:
    """Whether this is a learned optimizer (including G.pt)."""
    return lopt.is_learned(self.name)


def split_specs(text: str) -> list[str]:
  """Splits a comma list of specs at the commas outside parentheses."""
  out, depth, cur = [], 0, []
  for ch in text:
    if ch == "(":
      depth += 1
    elif ch == ")":
      depth -= 1
      if depth < 0:
        raise ValueError(f"unbalanced ')' in optimizer list {text!r}")
    if ch == "," and depth == 0:
      out.append("".join(cur).strip())
      cur = []
    else:
      cur.append(ch)
  if depth:
    raise ValueError(f"unbalanced '(' in optimizer list {text!r}")
  out.append("".join(cur).strip())
  return [s for s in out if s]


def _literal(kw: ast.keyword) -> Any:
  """A keyword's literal value; a bare ``num_steps=unknown`` is ``lopt.UNKNOWN_HORIZON``."""
  if (kw.arg == "num_steps" and isinstance(kw.value, ast.Name)
      and kw.value.id == lopt.UNKNOWN_HORIZON):   # unquoted, as typed on a command line
    return lopt.UNKNOWN_HORIZON
  return ast.literal_eval(kw.value)


def _kwargs(args: str, text: str) -> dict[str, Any]:
  try:
    call = ast.parse(f"f({args})", mode="eval").body
    assert isinstance(call, ast.Call)
    if call.args:
      raise ValueError("positional arguments")
    return {kw.arg: _literal(kw) for kw in call.keywords if kw.arg}
  except (SyntaxError, ValueError, AssertionError) as e:
    raise ValueError(f"cannot parse the arguments of optimizer spec {text!r}: give keyword "
                     f"arguments with literal values, e.g. 'sgd(learning_rate=0.1)' ({e})"
                     ) from None


def parse_spec(text: str) -> OptimizerSpec:
  """Parses ``name``, ``name:weights``, ``name(k=v, ...)`` or ``name:weights(k=v, ...)``.

  Raises:
    KeyError: an unknown optimizer name (the message lists the valid ones and
      suggests the closest).
    ValueError: a malformed spec.
  """
  text = text.strip()
  m = _SPEC.match(text)
  if not m:
    raise ValueError(f"malformed optimizer spec {text!r}; expected name, name:weights or "
                     f"name(key=value, ...)")
  name = m["name"]
  if name not in lopt.available():
    close = difflib.get_close_matches(name, lopt.available(), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise KeyError(f"unknown optimizer {name!r}{hint}; valid names: {', '.join(lopt.available())}")
  if m["w1"] and m["w2"]:
    raise ValueError(f"weights given twice in optimizer spec {text!r}")
  weights = (m["w1"] or m["w2"] or "").strip() or None
  kwargs = _kwargs(m["args"], text) if m["args"] and m["args"].strip() else {}
  spec = OptimizerSpec(text, name, weights, kwargs)
  if weights is not None and not spec.learned:
    raise ValueError(f"{name!r} is hand-designed and takes no weights (spec {text!r})")
  if "weights" in kwargs:
    raise ValueError(f"give weights after a colon, not as an argument (spec {text!r})")
  if "num_steps" in kwargs and name in lopt.available_learned():
    check_num_steps(kwargs["num_steps"], name)   # a bad horizon fails with the flag
  return spec


def unavailable_reason(spec: OptimizerSpec) -> str | None:
  """Why ``spec`` cannot run on this machine (shipped weights missing), or None.

  Raises:
    FileNotFoundError: a weights path that does not exist.
  """
  if spec.weights == "pretrained" or (spec.name == "gpt" and spec.weights is None):
    if not lopt.has_pretrained(spec.name):
      return f"no pretrained weights shipped for {spec.name!r}"
    return None
  if spec.weights in (None, "fresh"):
    return None
  if not pathlib.Path(spec.weights).exists():
    raise FileNotFoundError(f"weights of optimizer spec {spec.text!r} not found: "
                            f"{spec.weights!r} does not exist (or use :pretrained / :fresh)")
  return None


def weights_digest(spec: OptimizerSpec) -> str | None:
  """A fingerprint of the weights a learned spec loads (None for hand-designed ones).

  ``"fresh"`` for an untrained init; else a SHA-256 over the files of the
  weights directory, so reused results of learned optimizers are only taken
  when their weights have not changed.
  """
  import hashlib

  if not spec.learned:
    return None
  weights = spec.weights
  if weights is None:        # lopt.get's default: the shipped weights where they exist
    weights = "pretrained" if lopt.has_pretrained(spec.name) else "fresh"
  if weights == "fresh":
    return "fresh"
  path = pathlib.Path(lopt.pretrained_path(spec.name) if weights == "pretrained" else weights)
  h = hashlib.sha256()
  files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
  for f in files:
    if f.suffix in (".png", ".md"):   # plots and notes beside the weights
      continue
    h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
    h.update(f.read_bytes())
  return h.hexdigest()[:16]


def build_optimizer(spec: OptimizerSpec | str, num_steps: int, *, task: Any = None):
  """``lopt.get`` for a spec, passing the horizon ``num_steps`` to learned optimizers.

  A spec's own arguments win: ``celo2_lopt:pretrained(num_steps=unknown)`` runs
  its horizon-free mode (:data:`lopt.UNKNOWN_HORIZON`). G.pt is run as the paper
  uses it: one sampled update at the first step (``max_updates=1``); its curve is
  flat afterwards. ``task`` (the task it will train) reaches G.pt, which checks it
  against the task it was trained for (:class:`lopt.gpt.TaskMismatchError`).
  """
  if isinstance(spec, str):
    spec = parse_spec(spec)
  kwargs = dict(spec.kwargs)
  if spec.weights is not None:
    kwargs["weights"] = spec.weights
  if spec.name == "gpt":
    kwargs.setdefault("max_updates", 1)
    if task is not None:
      kwargs.setdefault("task", task)
  elif spec.learned:
    kwargs.setdefault("num_steps", int(num_steps))
  return lopt.get(spec.name, **kwargs)


def tunable(name: str) -> bool:
  """Whether ``name`` can be tuned over a learning-rate grid (the hand-designed ones)."""
  return name in TUNE_RANGES


def tune_grid(name: str, lrs_per_decade: int = 3):
  """The learning-rate grid of a tuned optimizer: :data:`TUNE_RANGES` at ``lrs_per_decade``.

  Raises:
    KeyError: ``name`` is not tunable; the message lists the tunable names.
  """
  import numpy as np

  if not tunable(name):
    raise KeyError(f"cannot tune {name!r}: only hand-designed optimizers are tuned; valid: "
                   f"{', '.join(sorted(TUNE_RANGES))}")
  if lrs_per_decade < 1:
    raise ValueError(f"lrs_per_decade must be >= 1, got {lrs_per_decade}")
  lo, hi = TUNE_RANGES[name]
  num = int(round(np.log10(hi / lo) * lrs_per_decade)) + 1
  return np.logspace(np.log10(lo), np.log10(hi), num)
