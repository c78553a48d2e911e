r"""Scanned training loop vs a Python loop over a jitted step, in one run.

::

  python -m benchmarks.train_loop [--steps=2000] [--repeats=3]

Trains the digits MLP (64-32-10, batch 128) with Adam both ways, after
compilation, and prints steps/s of each and their ratio. The scanned loop is
``tasks.train`` (one ``lax.scan``, no host round trip per step); the Python
loop calls ``jax.jit(tasks.train_step)`` once per step.
"""

from __future__ import annotations

import json
import time

import jax
from absl import app, flags

import lopt
import tasks

FLAGS = flags.FLAGS


def define_flags(fv: flags.FlagValues = FLAGS) -> None:
  """Defines this command's flags (only when run as a script)."""
  flags.DEFINE_integer("steps", 2000, "Training steps per timed run.", lower_bound=10,
                       flag_values=fv)
  flags.DEFINE_integer("repeats", 3, "Timed runs per loop kind (best is kept).", lower_bound=1,
                       flag_values=fv)


def measure(steps: int, repeats: int) -> dict:
  """Returns steps/s of the scanned and the Python loop and their ratio."""
  task = tasks.get("digits_mlp", hidden=(64, 32), batch_size=128)
  tx = lopt.get("adam", learning_rate=1e-3)
  key = jax.random.key(0)
  params = task.init(key)
  opt_state = tx.init(params)

  step = jax.jit(lambda p, s, k: tasks.train_step(task, tx, p, s, k), donate_argnums=(0, 1))

  def fresh():
    return (jax.tree.map(lambda x: x.copy(), params), jax.tree.map(lambda x: x.copy(), opt_state))

  def run_scan(r):
    jax.block_until_ready(tasks.train(task, tx, steps, jax.random.key(r), params=params,
                                      opt_state=opt_state, check_finite=False).losses)

  def run_loop(r):
    p, s = fresh()
    for k in list(jax.random.split(jax.random.key(r), steps)):
      p, s, loss = step(p, s, k)
    jax.block_until_ready(loss)

  run_scan(0)  # compile both
  p, s = fresh()
  jax.block_until_ready(step(p, s, key))
  # Interleave the two kinds so machine-load changes affect both alike.
  scan_times, loop_times = [], []
  for r in range(repeats):
    for run, times in ((run_scan, scan_times), (run_loop, loop_times)):
      t0 = time.perf_counter()
      run(r)
      times.append(time.perf_counter() - t0)

  scan_sps, loop_sps = steps / min(scan_times), steps / min(loop_times)
  return {"task": "digits_mlp hidden=(64,32) batch=128", "optimizer": "adam",
          "steps": steps, "scan_steps_per_s": scan_sps, "python_loop_steps_per_s": loop_sps,
          "speedup": scan_sps / loop_sps, "backend": jax.default_backend()}


def main(argv):
  del argv
  r = measure(FLAGS.steps, FLAGS.repeats)
  print(f"{r['task']}, {r['optimizer']}, {r['steps']} steps, best of {FLAGS.repeats}, "
        f"backend {r['backend']}")
  print(f"| loop | steps/s |\n|---|---|\n| lax.scan (tasks.train) | {r['scan_steps_per_s']:,.0f} |"
        f"\n| Python loop of jitted step | {r['python_loop_steps_per_s']:,.0f} |")
  print(f"scan / python-loop speedup: {r['speedup']:.2f}x")
  print(json.dumps(r))


if __name__ == "__main__":
  define_flags()
  app.run(main)
