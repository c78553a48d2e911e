"""Meta-training throughput: PES inner steps/s against a plain vmapped unroll.

::

  python -m benchmarks.meta                 # mlp_lopt, digits 64-32-10 MLP (2,410 params)
  python -m benchmarks.meta --lopt=celo2_lopt --repeats=7
  python -m benchmarks.meta --hidden=64,32  # 64 inputs -> 64 -> 32 -> 10 (6,570 params)
  python -m benchmarks.meta --lo_config='{"chunk": 16384}'   # mlp_lopt's old CPU chunking

Measures, after compilation and in one process:

* **PES**: the full outer step of :func:`meta_train.make_outer_step` (antithetic
  PES over ``--num_tasks`` instances, truncation ``--trunc_length``, Adam on the
  meta-params). Each antithetic pair counts as two inner steps, so one outer step
  is ``2 * num_tasks * trunc_length`` inner steps.
* **plain**: the same ``2 * num_tasks`` instances trained by the same learned
  optimizer with no estimator: ``jax.vmap(meta_train.unroll)`` at fixed
  meta-params (no perturbation, no gradient), with the meta-params shared by the
  instances and tiled per instance; per round the faster of the two is the baseline.
* **reference**: Adam training one instance with ``tasks.train`` (a load-independent
  yardstick: learned_optimization's PES on this configuration ran at about 0.12x
  of it).

The task is the digits MLP with ``--hidden`` hidden layers (default ``32``: the
issue's "64-32-10", 64 inputs -> 32 -> 10 classes, 2,410 parameters;
``--hidden=64,32`` is 64 -> 64 -> 32 -> 10, 6,570 parameters); the printout gives
the parameter count, so figures from other libraries can be matched to the same size.

Both include resets at the horizon and batch sampling inside the scan. Each
measurement is repeated (other processes share the CPU) and the median and best
rounds are reported with their ratio.

**Bound.** For a per-parameter MLP optimizer (an ``mlp_sizes`` attribute) the
printout also gives the FLOPs of one inner step of one instance: the learned
optimizer's MLP over the padded parameter rows (its time-embedding input folded
into a bias, as the optimizer runs it) plus the task's loss and gradient (XLA
cost analysis); the FLOP/s the best PES round achieved; and the inner steps/s a
machine running only those FLOPs at the square-matmul peak
(:func:`benchmarks.speed.matmul_peak`, 512-2048, measured in the same process
with the same ``XLA_FLAGS``) could reach. That bound ignores every elementwise
op (features, normalization, ReLU) and assumes the small matmuls
(``32 x 13``, ``32 x 32`` on a few hundred rows per instance) ran as fast as a
large square one, so it is optimistic.
"""

from __future__ import annotations

import json
import os
import statistics
import time

import jax
import numpy as np
import optax
from absl import app, flags
from jax.sharding import Mesh

import lopt
import tasks
from meta_train import PES, UnrollConfig, init_inner_state, make_outer_step, unroll

FLAGS = flags.FLAGS
flags.DEFINE_string("lopt", "mlp_lopt", "Learned optimizer (lopt.available_learned()).")
flags.DEFINE_integer("num_tasks", 8, "PES instances (each an antithetic pair).", lower_bound=1)
flags.DEFINE_integer("trunc_length", 20, "Inner steps per truncation.", lower_bound=1)
flags.DEFINE_integer("horizon", 1000, "Inner run length (instances reset when they reach it).")
flags.DEFINE_integer("calls", 10, "Truncations per timed round.", lower_bound=1)
flags.DEFINE_integer("repeats", 5, "Timed rounds per measurement.", lower_bound=1)
flags.DEFINE_string("json_out", None, "Also write the results as JSON here.")
flags.DEFINE_list("hidden", ["32"], "Hidden sizes of the digits MLP task (64 inputs, "
                  "10 classes): the default 64,32 has 6,570 parameters, 32 has 2,410.")
flags.DEFINE_string("lo_config", "{}", "JSON constructor arguments of the learned optimizer "
                    "(e.g. '{\"chunk\": 16384}' to time another chunk size).")
flags.register_validator("lopt", lambda v: v in lopt.available_learned(),
                         f"unknown learned optimizer; valid: {', '.join(lopt.available_learned())}")
flags.register_validator("horizon", lambda v: v >= 1, "horizon must be >= 1")
flags.register_validator("hidden", lambda v: all(h.strip().isdigit() and int(h) > 0 for h in v),
                         "hidden sizes must be positive integers, e.g. --hidden=64,32")


def _json_object(text: str) -> bool:
  try:
    return isinstance(json.loads(text), dict)
  except json.JSONDecodeError:
    return False


flags.register_validator("lo_config", _json_object, "lo_config must be a JSON object")


def _flops_per_inner_step(task, lo, params) -> dict:
  """FLOPs of one inner step of one instance: LO MLP (if per-parameter) and task grad."""
  from lopt._per_param_mlp import FlatLayout, mlp_flops

  batch = task.batch(jax.random.key(0), "train")
  grad_fn = jax.jit(jax.value_and_grad(task.loss))
  cost = grad_fn.lower(params, jax.random.key(0), batch).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  out = {"task_loss_grad": float(cost.get("flops", 0.0)) if cost else 0.0}
  sizes = getattr(lo, "mlp_sizes", None)
  if sizes is not None:
    layout = lo.layout(params) if hasattr(lo, "layout") else FlatLayout.from_tree(params)
    rows = layout.num_rows
    # the time embedding is folded into the first layer's bias: only the per-parameter
    # features enter the per-row matmul
    per_row = list(sizes)
    names = getattr(lo, "param_feature_names", None)
    if names is not None:
      per_row[0] = len(names)
    out["lo_mlp"] = float(mlp_flops(per_row, rows))
    out["lo_mlp_rows"] = rows
  out["total"] = out["task_loss_grad"] + out.get("lo_mlp", 0.0)
  return out


def _time_round(fn, args, calls: int) -> tuple[float, tuple]:
  """Runs ``args = fn(*args)`` ``calls`` times; returns (seconds, final args)."""
  jax.block_until_ready(args)
  t = time.perf_counter()
  for _ in range(calls):
    args = fn(*args)
  jax.block_until_ready(args)
  return time.perf_counter() - t, args


def measure(lo_name: str = "mlp_lopt", num_tasks: int = 8, trunc_length: int = 20,
            horizon: int = 1000, calls: int = 10, repeats: int = 5,
            hidden: tuple[int, ...] = (64, 32), lo_config: dict | None = None) -> dict:
  """Returns throughput figures (inner steps/s) of PES and of the plain unroll."""
  task = tasks.get("digits_mlp", hidden=tuple(hidden), batch_size=128)
  lo = lopt.learned(lo_name, **(lo_config or {}))
  theta = lo.init(jax.random.key(0))
  params0 = task.init(jax.random.key(0))
  num_params = sum(int(x.size) for x in jax.tree.leaves(params0))
  flops = _flops_per_inner_step(task, lo, params0)
  cfg = UnrollConfig(trunc_length=trunc_length, min_horizon=horizon, max_horizon=horizon)
  mesh = Mesh(np.asarray(jax.devices()[:1]), ("tasks",))
  est = PES(task, lo, cfg, sigma=0.01)
  opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3))
  step = make_outer_step(est, opt, mesh, num_tasks)
  seed = jax.random.key_data(jax.random.key(1))
  keys = jax.random.key_data(jax.random.split(jax.random.key(2), 2 * num_tasks))
  counter = [0]

  def pes_call(theta, opt_state, state):
    counter[0] += 1
    theta, opt_state, state, _ = step(theta, opt_state, state, counter[0], seed, False)
    return theta, opt_state, state

  pes_args = (theta, opt.init(theta), jax.jit(est.init)(theta, keys[:num_tasks]))
  t = time.perf_counter()
  # two warm-up calls: the second sees the mesh-sharded state the first returns
  # (a new input sharding, so a second compilation) instead of the initial one
  for _ in range(2):
    pes_args = jax.block_until_ready(pes_call(*pes_args))
  pes_compile = time.perf_counter() - t

  # plain, two ways: meta-params shared by the instances (in_axes=None), and tiled
  # per instance (in_axes=0, the layout PES uses); the faster is the baseline.
  shared_step = jax.jit(jax.vmap(lambda th, st: unroll(task, lo, th, st, cfg)[0],
                                 in_axes=(None, 0)))
  tiled_step = jax.jit(jax.vmap(lambda th, st: unroll(task, lo, th, st, cfg)[0]))
  tiled_theta = jax.tree.map(lambda x: jax.numpy.broadcast_to(x, (2 * num_tasks,) + x.shape),
                             theta)
  plain_fns = {"shared": lambda st: (shared_step(theta, st),),
               "tiled": lambda st: (tiled_step(tiled_theta, st),)}
  init = jax.jit(jax.vmap(lambda k: init_inner_state(task, lo, theta, k, cfg)))
  plain_args, plain_compile = {}, {}
  for name, fn in plain_fns.items():
    t = time.perf_counter()
    plain_args[name] = jax.block_until_ready(fn(*fn(init(keys))))
    plain_compile[name] = time.perf_counter() - t

  adam = lopt.get("adam", learning_rate=1e-3)
  adam_steps = calls * trunc_length * 4
  tasks.train(task, adam, adam_steps, jax.random.key(3))  # compile

  def adam_round():
    t = time.perf_counter()
    jax.block_until_ready(tasks.train(task, adam, adam_steps, jax.random.key(4)).losses)
    return time.perf_counter() - t

  inner_per_call = 2 * num_tasks * trunc_length
  pes_t, adam_t, plain_t = [], [], {name: [] for name in plain_fns}
  for _ in range(repeats):  # interleave so all see the same background load
    adam_t.append(adam_round())
    t, pes_args = _time_round(pes_call, pes_args, calls)
    pes_t.append(t)
    for name, fn in plain_fns.items():
      t, plain_args[name] = _time_round(fn, plain_args[name], calls)
      plain_t[name].append(t)
  rate = lambda ts: [inner_per_call * calls / t for t in ts]
  pes_r = rate(pes_t)
  plain_all = {name: rate(ts) for name, ts in plain_t.items()}
  best_plain = max(plain_all, key=lambda n: statistics.median(plain_all[n]))
  plain_r = [max(rs) for rs in zip(*plain_all.values())]  # per round, the faster layout
  ratios = [a / b for a, b in zip(pes_r, plain_r)]
  adam_r = [adam_steps / t for t in adam_t]
  from benchmarks.speed import matmul_peak
  peak = matmul_peak(sizes=(512, 1024, 2048), repeats=repeats)
  return {
      "config": {"lopt": lo_name, "lopt_config": lo.config(), "lopt_args": lo_config or {},
                 "task": task.config(), "task_params": num_params,
                 "num_tasks": num_tasks, "antithetic": True, "trunc_length": trunc_length,
                 "horizon": horizon, "plain_instances": 2 * num_tasks,
                 "inner_steps_per_outer_step": inner_per_call, "calls_per_round": calls,
                 "repeats": repeats, "devices": [str(d) for d in jax.devices()[:1]],
                 "jax": jax.__version__, "cpu_count": os.cpu_count(),
                 "cpu_affinity": sorted(os.sched_getaffinity(0)),
                 "xla_flags": os.environ.get("XLA_FLAGS", "")},
      "compile_s": {"pes": pes_compile, "plain": plain_compile},
      "pes_steps_per_s": {"median": statistics.median(pes_r), "best": max(pes_r),
                          "all": pes_r},
      "plain_steps_per_s": {"median": statistics.median(plain_r), "best": max(plain_r),
                            "all": plain_r, "faster_layout": best_plain,
                            "by_layout": plain_all},
      "ratio_pes_over_plain": {"median": statistics.median(ratios),
                               "best_over_best": max(pes_r) / max(plain_r)},
      "adam_1_instance_steps_per_s": {"median": statistics.median(adam_r), "best": max(adam_r),
                                      "all": adam_r},
      "ratio_pes_over_adam_1_instance": max(pes_r) / max(adam_r),
      "flops_per_inner_step": flops,
      "achieved_gflops_best_pes": {k: max(pes_r) * v / 1e9 for k, v in flops.items()
                                   if k in ("lo_mlp", "task_loss_grad", "total")},
      "matmul_peak_gflops": peak / 1e9,
      "bound_inner_steps_per_s": {"lo_mlp_only": peak / flops["lo_mlp"] if "lo_mlp" in flops
                                  else None, "lo_mlp_and_task": peak / flops["total"]},
  }


def main(argv):
  del argv
  r = measure(FLAGS.lopt, FLAGS.num_tasks, FLAGS.trunc_length, FLAGS.horizon, FLAGS.calls,
              FLAGS.repeats, tuple(int(h) for h in FLAGS.hidden), json.loads(FLAGS.lo_config))
  print("configuration:", json.dumps(r["config"]))
  c = r["compile_s"]
  print(f"compile: PES {c['pes']:.1f} s, plain shared {c['plain']['shared']:.1f} s, "
        f"plain tiled {c['plain']['tiled']:.1f} s")
  for name in ("pes", "plain"):
    s = r[f"{name}_steps_per_s"]
    print(f"{name:>5}: median {s['median']:8.0f} inner steps/s, best {s['best']:8.0f}  "
          f"(rounds: {', '.join(f'{x:.0f}' for x in s['all'])})")
  for name, rs in r["plain_steps_per_s"]["by_layout"].items():
    print(f"  plain, meta-params {name}: rounds {', '.join(f'{x:.0f}' for x in rs)}")
  q = r["ratio_pes_over_plain"]
  print(f"ratio PES / plain: median {q['median']:.2f}, best/best {q['best_over_best']:.2f}")
  a = r["adam_1_instance_steps_per_s"]
  print(f"reference, Adam training one instance (tasks.train): best {a['best']:.0f} steps/s; "
        f"PES best / Adam best = {r['ratio_pes_over_adam_1_instance']:.2f} "
        f"(learned_optimization's PES: ~0.12x)")
  f = r["flops_per_inner_step"]
  g = r["achieved_gflops_best_pes"]
  b = r["bound_inner_steps_per_s"]
  print(f"FLOPs per inner step of one instance ({r['config']['task_params']} task params): "
        + (f"LO MLP {f['lo_mlp'] / 1e6:.1f} M ({f['lo_mlp_rows']} padded rows), "
           if "lo_mlp" in f else "")
        + f"task loss+grad {f['task_loss_grad'] / 1e6:.1f} M")
  print(f"best PES round runs {g['total']:.1f} GFLOP/s of those"
        + (f" ({g['lo_mlp']:.1f} in the LO MLP)" if "lo_mlp" in g else "")
        + f"; square-matmul peak {r['matmul_peak_gflops']:.1f} GFLOP/s "
        f"(XLA_FLAGS={r['config']['xla_flags']!r}, {len(r['config']['cpu_affinity'])} cores)")
  print("bound at that peak: "
        + (f"{b['lo_mlp_only']:.0f} inner steps/s (LO MLP alone), " if b["lo_mlp_only"] else "")
        + f"{b['lo_mlp_and_task']:.0f} (LO MLP + task); best PES is "
        f"{r['pes_steps_per_s']['best'] / b['lo_mlp_and_task']:.2f} of the latter")
  if FLAGS.json_out:
    with open(FLAGS.json_out, "w") as f:
      json.dump(r, f, indent=1)


if __name__ == "__main__":
  app.run(main)
