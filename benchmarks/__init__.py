"""Benchmarks: optimizers against tuned baselines that run longer, speed, and the demo.

::

  from benchmarks import parse_tasks, run_benchmark, save_results
  results = run_benchmark(["sgd(learning_rate=0.1)", "celo2_lopt:pretrained",
                           "celo2_lopt:fresh"], parse_tasks("heldout_quick"))
  results["summary"]["celo2_lopt:pretrained"]["steps"]   # IQM speedup with 95 % CI
  save_results(results, "bench_out")   # results.json, results.md, PNG plots

Command lines: ``python -m benchmarks.run``, ``python -m benchmarks.demo``,
``python -m benchmarks.width_sweep`` (:func:`sweep_widths`: loss curves across widths).
"""

from benchmarks._benchmark import PROTOCOL_VERSION as PROTOCOL_VERSION
from benchmarks._benchmark import REFERENCE as REFERENCE
from benchmarks._benchmark import run_benchmark as run_benchmark
from benchmarks._benchmark import tuned_label as tuned_label
from benchmarks._protocol import auto_ema_decay as auto_ema_decay
from benchmarks._protocol import bootstrap_ci as bootstrap_ci
from benchmarks._protocol import ema as ema
from benchmarks._protocol import horizon_speedup as horizon_speedup
from benchmarks._protocol import iqm as iqm
from benchmarks._protocol import lower_envelope as lower_envelope
from benchmarks._protocol import ratio_scores as ratio_scores
from benchmarks._protocol import speedup_curve as speedup_curve
from benchmarks._protocol import steps_to_reach as steps_to_reach
from benchmarks._protocol import wallclock_speedup as wallclock_speedup
from benchmarks._report import markdown as markdown
from benchmarks._report import save_results as save_results
from benchmarks._runs import Runs as Runs
from benchmarks._runs import eval_every as eval_every
from benchmarks._runs import evaluate_runs as evaluate_runs
from benchmarks._runs import grid_runs as grid_runs
from benchmarks._runs import lr_grid as lr_grid
from benchmarks._runs import time_per_step as time_per_step
from benchmarks._runs import train_runs as train_runs
from benchmarks._specs import TUNE_RANGES as TUNE_RANGES
from benchmarks._specs import OptimizerSpec as OptimizerSpec
from benchmarks._specs import build_optimizer as build_optimizer
from benchmarks._specs import parse_spec as parse_spec
from benchmarks._specs import split_specs as split_specs
from benchmarks._specs import tune_grid as tune_grid
from benchmarks._suites import SUITES as SUITES
from benchmarks._suites import SuiteTask as SuiteTask
from benchmarks._suites import parse_tasks as parse_tasks
from benchmarks._suites import suite as suite
from benchmarks._summary import beats_tuned_adam as beats_tuned_adam
from benchmarks._summary import head_to_head as head_to_head
from benchmarks._summary import meta_training_gain as meta_training_gain
from benchmarks._summary import summarize as summarize
from benchmarks._summary import untrained_init_spec as untrained_init_spec
from benchmarks._width_sweep import save_width_sweep as save_width_sweep
from benchmarks._width_sweep import sweep_widths as sweep_widths
from benchmarks._width_sweep import width_spread as width_spread
from benchmarks._width_sweep import width_sweep_markdown as width_sweep_markdown

__all__ = [
    "PROTOCOL_VERSION", "REFERENCE", "SUITES", "TUNE_RANGES", "OptimizerSpec", "Runs",
    "SuiteTask", "auto_ema_decay", "beats_tuned_adam", "bootstrap_ci", "build_optimizer", "ema",
    "eval_every", "evaluate_runs", "grid_runs", "head_to_head", "horizon_speedup", "iqm",
    "lower_envelope",
    "lr_grid", "markdown", "meta_training_gain", "parse_spec", "parse_tasks", "ratio_scores",
    "run_benchmark", "save_results", "save_width_sweep", "speedup_curve", "split_specs",
    "steps_to_reach", "suite", "summarize", "sweep_widths", "time_per_step", "train_runs",
    "tune_grid", "tuned_label", "untrained_init_spec", "wallclock_speedup", "width_spread",
    "width_sweep_markdown",
]
