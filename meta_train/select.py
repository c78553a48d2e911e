r"""Choose a meta-training checkpoint blind: on the validation suite only, by a fixed rule.

Usage::

  python -m meta_train.select --workdir=runs/celo2_lopt_broad
  python -m meta_train.select --workdir=runs/celo2_lopt_broad --export=lopt/weights/celo2_lopt

The candidates are the run's weight snapshots (``<workdir>/snapshots/step_*``,
written every ``--snapshot_every`` outer steps; step 0 is the untrained init).
Each runs the ``validation`` suite (never a held-out task) against tuned Adam
with the benchmark's protocol; the results are saved after every task in
``<workdir>/validation/results.json`` and reused, so new snapshots cost only
their own runs and an interrupted selection resumes. The rule (:func:`choose`,
fixed on 2026-11-30 before any held-out figure of the version 2 runs existed;
docs/meta_training.md, "Choosing a checkpoint"):

1. score = the IQM over tasks and seeds of ``speedup_steps``;
2. among the candidates within ``SCORE_TIE`` of the best score, the higher IQM
   ``speedup_test``; then the earlier step.

``<workdir>/validation/selection.json`` records every candidate's scores and the
choice. ``--export`` writes the chosen snapshot as shipped weights: the manifest
names the run's command, config, chosen step and the selection.
"""

from __future__ import annotations

import datetime
import json
import pathlib
import shutil
import sys
from typing import Any, Sequence

from absl import app, flags, logging

#: Candidates scoring within this of the best IQM speedup_steps count as tied.
SCORE_TIE = 0.05
RULE = ("max IQM speedup_steps on the validation suite (3 seeds, num_steps given, tuned "
        f"Adam at 4x horizon); within {SCORE_TIE} of the best: max IQM speedup_test, then "
        "the earliest step. Fixed 2026-11-30 10:55 UTC, before any held-out figure.")
#: The selection rules (``--rule``): "steps" is :data:`RULE`; "test" puts the test loss
#: first for runs whose step speed is already enough (added 2026-12-01 06:35 UTC).
RULES = {
    "steps": RULE,
    "test": ("among the snapshots with IQM speedup_steps >= {floor:g} on the validation suite "
             "(3 seeds, num_steps given, tuned Adam at 4x horizon): max IQM speedup_test; "
             f"within {SCORE_TIE} of the best: max IQM speedup_steps, then the earliest step; "
             "no snapshot at the floor: the 'steps' rule."),
}

__all__ = ["RULE", "RULES", "SCORE_TIE", "candidates", "choose", "select"]

_FLAGS = flags.FLAGS


def candidates(workdir: str | pathlib.Path, *, stride: int = 1) -> list[tuple[int, pathlib.Path]]:
  """``(step, path)`` of the run's snapshots, every ``stride``-th one (the last always).

  Raises:
    FileNotFoundError: the run has no snapshots (it ran without ``--snapshot_every``).
  """
  root = pathlib.Path(workdir) / "snapshots"
  found = sorted((int(p.name.split("_")[1]), p) for p in root.glob("step_*")
                 if p.is_dir() and (p / "manifest.json").is_file()) if root.is_dir() else []
  if not found:
    raise FileNotFoundError(f"no weight snapshots in {root}; run meta-training with "
                            f"--snapshot_every=N to write them")
  if stride < 1:
    raise ValueError(f"stride must be >= 1, got {stride}")
  keep = found[::stride]
  return keep if keep[-1] == found[-1] else keep + [found[-1]]


def choose(scores: dict[int, dict[str, float]], *, rule: str = "steps",
           steps_floor: float = 2.0) -> int:
  """The chosen step from ``{step: {"steps": iqm, "test": iqm}}`` by a rule of :data:`RULES`.

  ``"steps"`` (default): the highest IQM ``speedup_steps``; within :data:`SCORE_TIE`,
  the higher ``speedup_test``; then the earlier step. ``"test"``: among candidates
  with ``speedup_steps >= steps_floor``, the same with the two scores swapped; when
  none reaches the floor, the ``"steps"`` rule.
  """
  if rule not in RULES:
    raise ValueError(f"unknown rule {rule!r}; rules: {', '.join(RULES)}")
  if not scores:
    raise ValueError("no candidates to choose from")
  above = ({t: s for t, s in scores.items() if s["steps"] >= steps_floor}
           if rule == "test" else {})
  first, second = ("test", "steps") if above else ("steps", "test")
  pool = above or scores
  best = max(s[first] for s in pool.values())
  tied = [t for t, s in pool.items() if s[first] >= best - SCORE_TIE]
  return min(tied, key=lambda t: (-pool[t][second], t))


def _spec(name: str, path: pathlib.Path, lopt_config: dict[str, Any]) -> str:
  args = ",".join(f"{k}={v!r}" for k, v in sorted(lopt_config.items()))
  return f"{name}:{path}" + (f"({args})" if args else "")


def select(workdir: str | pathlib.Path, *, stride: int = 1, num_seeds: int = 3,
           tasks: str = "validation", verbose: bool = True, rule: str = "steps",
           steps_floor: float = 2.0) -> dict[str, Any]:
  """Scores the run's snapshots on the validation suite and applies :func:`choose`
  with ``rule`` and ``steps_floor`` (the rule a run's flagfile names).

  Returns:
    The selection record (also written to ``<workdir>/validation/selection.json``):
    ``{"rule", "candidates": {step: {"steps", "test", "spec"}}, "chosen", ...}``.
  """
  from benchmarks import markdown, parse_tasks, run_benchmark
  from benchmarks._report import write_json

  workdir = pathlib.Path(workdir)
  config = json.loads((workdir / "config.json").read_text())
  name, lopt_config = config["lopt"], dict(config.get("lopt_config") or {})
  cands = candidates(workdir, stride=stride)
  specs = {step: _spec(name, path, lopt_config) for step, path in cands}
  out = workdir / "validation"
  reuse_path = out / "results.json"
  reuse = json.loads(reuse_path.read_text()) if reuse_path.is_file() else None
  results = run_benchmark(list(specs.values()), parse_tasks(tasks), tune=("adam",),
                          num_seeds=num_seeds, time_rounds=1, verbose=verbose, reuse=reuse,
                          on_task_done=lambda r: write_json(r, reuse_path))
  write_json(results, reuse_path)
  (out / "results.md").write_text(markdown(results))
  summary = results["summary"]
  scores = {step: {"steps": float(summary[s]["steps"]["iqm"]),
                   "test": float(summary[s]["test"]["iqm"]), "spec": s}
            for step, s in specs.items() if s in summary}
  chosen = choose(scores, rule=rule, steps_floor=steps_floor)
  record = {"rule": RULES[rule].format(floor=steps_floor), "suite": tasks,
            "num_seeds": num_seeds, "run": str(workdir),
            "candidates": {str(k): v for k, v in sorted(scores.items())}, "chosen": chosen,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes")}
  (out / "selection.json").write_text(json.dumps(record, indent=1) + "\n")
  return record


def export(workdir: str | pathlib.Path, record: dict[str, Any], dest: str | pathlib.Path,
           command: str) -> pathlib.Path:
  """Writes the chosen snapshot as shipped weights (manifest names run, command, choice)."""
  import lopt
  from meta_train._run import replace_dir

  workdir, dest = pathlib.Path(workdir), pathlib.Path(dest)
  config = json.loads((workdir / "config.json").read_text())
  lo = lopt.learned(config["lopt"], **dict(config.get("lopt_config") or {}))
  step = int(record["chosen"])
  theta = lopt.load_weights(workdir / "snapshots" / f"step_{step:06d}", lo)
  extra = {"meta_training": {"command": command, "outer_step": step, "config": config,
                             "selection": {k: record[k] for k in ("rule", "suite", "chosen",
                                                                   "candidates", "date")}}}

  def write(tmp: pathlib.Path) -> None:
    lopt.save_weights(tmp, lo, theta, extra=extra)
    curve = workdir / "meta_training_curve.png"
    if curve.is_file():
      shutil.copy(curve, tmp / "meta_training_curve.png")

  replace_dir(dest, write)
  return dest


def _define_flags() -> None:
  flags.DEFINE_string("workdir", None, "The meta-training run's directory.", required=True)
  flags.DEFINE_integer("stride", 1, "Score every stride-th snapshot (the newest always).",
                       lower_bound=1)
  flags.DEFINE_integer("seeds", 3, "Seeds per task.", lower_bound=1)
  flags.DEFINE_string("export", None, "Write the chosen snapshot as weights here.")
  flags.DEFINE_enum("rule", "steps", list(RULES), "The selection rule (meta_train.select."
                    "RULES): steps first, or test loss first above --steps_floor.")
  flags.DEFINE_float("steps_floor", 2.0, "With --rule=test: the IQM speedup_steps a "
                     "snapshot needs to be a candidate.", lower_bound=0.0)
  flags.DEFINE_string("command", None, "The command that reproduces the run (for the "
                      "manifest); default: python -m meta_train.main --flagfile=<flagfile "
                      "named in the run's config>, else the workdir.")


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  workdir = pathlib.Path(_FLAGS.workdir)
  if not (workdir / "config.json").is_file():
    print(f"error: {workdir} is not a meta-training run (no config.json)", file=sys.stderr)
    sys.exit(1)
  try:
    record = select(workdir, stride=_FLAGS.stride, num_seeds=_FLAGS.seeds, rule=_FLAGS.rule,
                    steps_floor=_FLAGS.steps_floor)
    for step, s in record["candidates"].items():
      mark = "  <- chosen" if int(step) == record["chosen"] else ""
      print(f"step {int(step):6d}: IQM speedup steps {s['steps']:.3f}, test {s['test']:.3f}"
            f"{mark}")
    if _FLAGS.export:
      command = (_FLAGS.command
                 or f"python -m meta_train.main --workdir={workdir} (see its flagfile)")
      print(f"exported to {export(workdir, record, _FLAGS.export, command)}")
  except (OSError, KeyError, ValueError) as e:  # not a flag problem: one line, no usage
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  _define_flags()
  app.run(main)
