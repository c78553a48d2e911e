r"""Per-update speed of every optimizer against Adam, and learned-MLP FLOP/s vs peak.

For each optimizer (``adam``, ``sgd`` and every registered learned optimizer) and each
parameter count, times one jitted update (with the optimizer state donated, as in a
training loop) on an MLP-shaped parameter tree, and reports:

* ``update_ms``: best-of-``repeats`` wall time of one update;
* ``vs_adam``: that time over ``optax.adam``'s, measured in the same run;
* ``state_bytes_per_param``: optimizer-state bytes per parameter;
* for learned optimizers with a per-parameter MLP (an ``mlp_sizes`` attribute):
  ``mlp_gflops`` / ``mlp_frac_peak``, the achieved FLOP/s of the chunked MLP kernel
  in the layout the optimizer runs it (``lax.map`` of ``mlp_forward_t`` over
  feature-major chunks for ``mlp_lopt``) over all parameters, against the
  square-matmul peak; ``ref_mlp_ms``, the straightforward XLA form
  ``relu(relu(x @ w1) @ w2) @ w3`` over the same full array; and
  ``update_vs_ref_mlp``, the whole update's time over that.

The matmul peak is the best ``jnp.dot`` of two square float32 matrices (sides
1024 and 2048), best of ``repeats``. Writes ``speed.json`` and ``speed.md`` to ``--out``::

  python -m benchmarks.speed --sizes=1e4,1e5,1e6,1e7 --out=bench_out/speed
  python -m benchmarks.speed --optimizers=adam,mlp_lopt --sizes=1e6 --repeats=7
"""

from __future__ import annotations

import json
import math
import pathlib
import platform
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from jax import lax

import lopt
from lopt._per_param_mlp import (
    FlatLayout,
  mlp_apply_reference,
  mlp_flops,
  mlp_forward,
  mlp_forward_t,
  mlp_init,
)

__all__ = ["matmul_peak", "mlp_shaped_params", "run", "to_markdown"]


def _best_time(fn: Callable[[], Any], repeats: int) -> float:
  jax.block_until_ready(fn())  # compile + warm up
  best = math.inf
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    best = min(best, time.perf_counter() - t0)
  return best


def matmul_peak(sizes: Sequence[int] = (1024, 2048), repeats: int = 5) -> float:
  """FLOP/s of the best float32 square ``jnp.dot`` over ``sizes`` and ``repeats``.

  Taking the best over two sizes keeps the peak (and so the fractions of it
  reported) conservative on CPUs where the largest product spills out of cache.
  """
  best = 0.0
  for n in sizes:
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    dot = jax.jit(jnp.dot)
    best = max(best, 2 * n ** 3 / _best_time(lambda: dot(a, b), repeats))
  return best


def mlp_shaped_params(num_params: int, key: jax.Array, *, d_in: int = 256,
                      d_out: int = 10) -> dict[str, Any]:
  """An MLP ``d_in -> h -> h -> d_out`` (weights and biases) with about ``num_params``."""
  # h^2 + (d_in + d_out + 3) h + d_out = num_params
  b = d_in + d_out + 3
  h = max(1, int(round((-b + math.sqrt(b * b + 4 * max(num_params - d_out, 1))) / 2)))
  shapes = {"w1": (d_in, h), "b1": (h,), "w2": (h, h), "b2": (h,), "w3": (h, d_out),
            "b3": (d_out,)}
  keys = jax.random.split(key, len(shapes))
  return {k: jax.random.normal(kk, s, jnp.float32) / math.sqrt(s[0])
          for kk, (k, s) in zip(keys, shapes.items())}


def _make_optimizer(name: str):
  if name in lopt.available_learned():
    return lopt.get(name, weights=None, num_steps=1000)
  return lopt.get(name)


def _interleaved_best(timers: dict[str, Callable[[], Any]], rounds: int, repeats: int
                      ) -> dict[str, float]:
  """Best wall time of each timer; rounds interleave all timers so load hits all alike."""
  for fn in timers.values():
    jax.block_until_ready(fn())  # compile + warm up
  best = {k: math.inf for k in timers}
  for _ in range(rounds):
    for k, fn in timers.items():
      for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        best[k] = min(best[k], time.perf_counter() - t0)
  return best


def _update_timer(opt, params, grads) -> tuple[Callable[[], Any], int]:
  """A timer of one jitted update with the state donated, and the state's bytes."""
  state = opt.init(params)
  state_bytes = sum(np.asarray(x).nbytes for x in jax.tree.leaves(state))

  def step(grads, state, params):
    return opt.update(grads, state, params, loss=jnp.float32(1.0))

  step = jax.jit(step, donate_argnums=(1,))
  box = [state]

  def one():
    updates, box[0] = step(grads, box[0], params)
    return updates

  return one, state_bytes


def _mlp_timers(sizes: Sequence[int], params: Any, chunk: int | None, feature_major: bool, *,
                reference: bool) -> tuple[dict[str, Callable[[], Any]], int]:
  """Timers of the chunked MLP kernel (in the LO's layout) and the straightforward form.

  The kernel runs over the same padded chunks as the optimizer (its
  :class:`~lopt._per_param_mlp.FlatLayout`). Returns the timers and the FLOPs the
  kernel does (padding rows included).
  """
  w = mlp_init(jax.random.key(1), sizes)
  layout = FlatLayout.from_tree(params, max_chunk=chunk)
  num_chunks, chunk, n = layout.num_chunks, layout.chunk, layout.num_params
  if feature_major:
    xc = jax.random.normal(jax.random.key(2), (num_chunks, sizes[0], chunk), jnp.float32)
    kernel = jax.jit(lambda w, x: lax.map(lambda c: mlp_forward_t(w, c), x))
  else:
    xc = jax.random.normal(jax.random.key(2), (num_chunks, chunk, sizes[0]), jnp.float32)
    kernel = jax.jit(lambda w, x: lax.map(lambda c: mlp_forward(w, c), x))
  timers = {"kernel": lambda: kernel(w, xc)}
  if reference:
    x = jax.random.normal(jax.random.key(2), (n, sizes[0]), jnp.float32)
    ref = jax.jit(mlp_apply_reference)
    timers["ref"] = lambda: ref(w, x)
  return timers, mlp_flops(sizes, num_chunks * chunk)


def _peak_timers(sizes: Sequence[int]) -> dict[str, Callable[[], Any]]:
  timers = {}
  dot = jax.jit(jnp.dot)
  for n in sizes:
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    timers[f"peak/{n}"] = lambda a=a: dot(a, a)
  return timers


def run(optimizers: Sequence[str], sizes: Sequence[int], *, repeats: int = 3,
        rounds: int = 3, peak_sizes: Sequence[int] = (1024, 2048),
        reference_max_size: int = 10 ** 6, log: Callable[[str], None] = print
        ) -> dict[str, Any]:
  """Runs the speed benchmark and returns its results as a JSON-able dict.

  At each size every measurement (each optimizer's update, the MLP kernels, the
  straightforward MLP, the square matmuls) is compiled, then timed ``repeats``
  times per round over ``rounds`` interleaved rounds; the best time is kept, so
  other load on the machine hits all of them alike and ratios stay meaningful.
  The peak is the best square-matmul FLOP/s seen over the whole run.

  Args:
    optimizers: registry names; ``adam`` is always measured (the baseline).
    sizes: approximate parameter counts.
    repeats: timed repetitions per round.
    rounds: interleaved rounds.
    peak_sizes: sides of the square float32 matmuls that set the peak.
    reference_max_size: largest size at which the straightforward full-array MLP
      is timed (it needs ``num_params * hidden * 4`` bytes per activation).
    log: progress printer.

  Returns:
    ``{"peak_flops", "device", "rows": [...]}``, one row per optimizer and size.
  """
  names = ["adam"] + [n for n in optimizers if n != "adam"]
  per_size, peak = [], 0.0
  for size in sizes:
    params = mlp_shaped_params(int(size), jax.random.key(0))
    grads = mlp_shaped_params(int(size), jax.random.key(1))  # distinct values per leaf
    n = sum(x.size for x in jax.tree.leaves(params))
    timers, info = _peak_timers(peak_sizes), {}
    for name in names:
      timers[name], state_bytes = _update_timer(_make_optimizer(name), params, grads)
      info[name] = {"state_bytes": state_bytes}
      lo = lopt.learned(name) if name in lopt.available_learned() else None
      sizes_mlp = getattr(lo, "mlp_sizes", None)
      if sizes_mlp is not None:
        # The optimizer's own row layout (mlp_lopt picks a smaller chunk on CPU).
        chunk = lo.layout(params).chunk if hasattr(lo, "layout") else getattr(lo, "chunk", None)
        mlp_t, kflops = _mlp_timers(sizes_mlp, params, chunk,
                                    getattr(lo, "feature_major", False),
                                    reference=n <= reference_max_size)
        timers.update({f"{name}/{k}": v for k, v in mlp_t.items()})
        info[name].update(mlp_sizes=list(sizes_mlp), kernel_flops=kflops,
                          flops=mlp_flops(sizes_mlp, n),
                          layout="feature-major" if getattr(lo, "feature_major", False)
                          else "row")
    best = _interleaved_best(timers, rounds, repeats)
    peak = max([peak] + [2 * m ** 3 / best[f"peak/{m}"] for m in peak_sizes])
    per_size.append((n, best, info))
    log(f"{n} params: " + ", ".join(f"{k} {1e3 * v:.3g} ms" for k, v in best.items()))
    del timers
  rows = []
  for n, best, info in per_size:
    for name in names:
      t = best[name]
      row = {"optimizer": name, "num_params": n, "update_ms": 1e3 * t,
             "vs_adam": t / best["adam"],
             "state_bytes_per_param": info[name]["state_bytes"] / n}
      if "mlp_sizes" in info[name]:
        tk = best[f"{name}/kernel"]
        row.update(mlp_sizes=info[name]["mlp_sizes"], mlp_layout=info[name]["layout"],
                   mlp_kernel_ms=1e3 * tk, mlp_gflops=info[name]["kernel_flops"] / tk / 1e9,
                   mlp_frac_peak=info[name]["kernel_flops"] / tk / peak)
        if f"{name}/ref" in best:
          tr = best[f"{name}/ref"]
          row.update(ref_mlp_ms=1e3 * tr, ref_mlp_frac_peak=info[name]["flops"] / tr / peak,
                     update_vs_ref_mlp=t / tr)
      rows.append(row)
  return {"peak_flops": peak, "peak_sizes": list(peak_sizes), "repeats": repeats,
          "rounds": rounds, "device": str(jax.devices()[0].device_kind),
          "platform": platform.platform(), "jax": jax.__version__, "rows": rows}


def to_markdown(result: dict[str, Any]) -> str:
  """Formats :func:`run`'s result as a markdown table."""
  sides = "/".join(f"{n}^2" for n in result["peak_sizes"])
  lines = [f"Square-matmul peak ({sides} float32, best of {result['rounds']} x "
           f"{result['repeats']}): "
           f"**{result['peak_flops'] / 1e9:.1f} GFLOP/s** on {result['device']}.", "",
           "| optimizer | params | update ms | vs adam | state B/param | MLP kernel GFLOP/s "
           "(% peak) | straightforward MLP ms (% peak) | update / straightforward |",
           "|---|---:|---:|---:|---:|---:|---:|---:|"]
  for r in result["rows"]:
    kern = (f"{r['mlp_gflops']:.1f} ({100 * r['mlp_frac_peak']:.0f} %)"
            if "mlp_gflops" in r else "")
    ref = (f"{r['ref_mlp_ms']:.2f} ({100 * r['ref_mlp_frac_peak']:.0f} %)"
           if "ref_mlp_ms" in r else "")
    ratio = f"{r['update_vs_ref_mlp']:.2f}" if "update_vs_ref_mlp" in r else ""
    lines.append(f"| {r['optimizer']} | {r['num_params']:.3g} | {r['update_ms']:.3f} | "
                 f"{r['vs_adam']:.2f} | {r['state_bytes_per_param']:.1f} | {kern} | {ref} | "
                 f"{ratio} |")
  return "\n".join(lines) + "\n"


FLAGS = flags.FLAGS


def define_flags(fv: flags.FlagValues = FLAGS) -> None:
  """Defines this command's flags on ``fv`` (only when run as a script, so that
  importing the module defines nothing)."""
  flags.DEFINE_list("optimizers", None,
                    "optimizers to time; default: adam, sgd and every learned optimizer",
                    flag_values=fv)
  flags.DEFINE_list("sizes", ["1e4", "1e5", "1e6", "1e7"], "approximate parameter counts",
                    flag_values=fv)
  flags.DEFINE_integer("repeats", 3, "timed repetitions per round (best kept)", lower_bound=1,
                       flag_values=fv)
  flags.DEFINE_integer("rounds", 3, "interleaved rounds over all measurements", lower_bound=1,
                       flag_values=fv)
  flags.DEFINE_list("peak_sizes", ["1024", "2048"], "sides of the square matmuls for the peak",
                    flag_values=fv)
  flags.DEFINE_float("reference_max_size", 1e6,
                     "largest size at which the straightforward MLP is timed", lower_bound=0.0,
                     flag_values=fv)
  flags.DEFINE_string("out", "bench_out/speed", "output directory for speed.json / speed.md",
                      flag_values=fv)
  flags.register_validator("sizes", _positive_numbers, "sizes must be positive numbers (1e5)",
                           flag_values=fv)
  flags.register_validator("peak_sizes", _positive_numbers, "peak_sizes must be positive",
                           flag_values=fv)
  flags.register_validator(
      "optimizers", lambda v: v is None or all(n in lopt.available() for n in v),
      f"unknown optimizer; valid names: {', '.join(lopt.available())}", flag_values=fv)


def _positive_numbers(values: Sequence[str]) -> bool:
  try:
    return all(float(v) >= 1 for v in values) and len(values) > 0
  except ValueError:
    return False


def main(argv: Sequence[str]) -> None:
  del argv
  names = FLAGS.optimizers or (["adam", "sgd"] + lopt.available_learned())
  sizes = [int(float(s)) for s in FLAGS.sizes]
  result = run(names, sizes, repeats=FLAGS.repeats, rounds=FLAGS.rounds,
               peak_sizes=[int(n) for n in FLAGS.peak_sizes],
               reference_max_size=int(FLAGS.reference_max_size))
  out = pathlib.Path(FLAGS.out)
  out.mkdir(parents=True, exist_ok=True)
  (out / "speed.json").write_text(json.dumps(result, indent=1) + "\n")
  md = to_markdown(result)
  (out / "speed.md").write_text(md)
  print(md)


if __name__ == "__main__":
  define_flags()
  app.run(main)
