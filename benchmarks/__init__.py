"""Benchmarks: optimizers against tuned Adam, speed, and the demo.

::

  from benchmarks import parse_tasks, run_benchmark, save_results
  results = run_benchmark(["sgd", "lion"], parse_tasks("embedded"), num_seeds=2)
  save_results(results, "bench_out")   # results.json, results.md, PNG plots

Command lines: ``python -m benchmarks.run``, ``python -m benchmarks.demo``.
"""

from benchmarks._benchmark import build_optimizer as build_optimizer
from benchmarks._benchmark import has_pretrained_gpt as has_pretrained_gpt
from benchmarks._benchmark import run_benchmark as run_benchmark
from benchmarks._benchmark import summarize as summarize
from benchmarks._protocol import auto_ema_decay as auto_ema_decay
from benchmarks._protocol import bootstrap_ci as bootstrap_ci
from benchmarks._protocol import ema as ema
from benchmarks._protocol import iqm as iqm
from benchmarks._protocol import lower_envelope as lower_envelope
from benchmarks._protocol import speedup_curve as speedup_curve
from benchmarks._protocol import steps_to_reach as steps_to_reach
from benchmarks._report import markdown as markdown
from benchmarks._report import save_results as save_results
from benchmarks._runs import Runs as Runs
from benchmarks._runs import adam_grid as adam_grid
from benchmarks._runs import evaluate_runs as evaluate_runs
from benchmarks._runs import lr_grid as lr_grid
from benchmarks._runs import train_runs as train_runs
from benchmarks._suites import SUITES as SUITES
from benchmarks._suites import SuiteTask as SuiteTask
from benchmarks._suites import parse_tasks as parse_tasks
from benchmarks._suites import suite as suite

__all__ = [
    "SUITES", "Runs", "SuiteTask", "adam_grid", "auto_ema_decay", "bootstrap_ci",
    "build_optimizer", "ema", "evaluate_runs", "has_pretrained_gpt", "iqm", "lower_envelope",
    "lr_grid", "markdown", "parse_tasks", "run_benchmark", "save_results", "speedup_curve",
    "steps_to_reach", "suite", "summarize", "train_runs",
]
