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

The matmul peak is a ``jnp.dot`` of two ``peak_n`` x ``peak_n`` float32 matrices,
best of ``repeats``. Writes ``speed.json`` and ``speed.md`` to ``--out``::

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


def matmul_peak(n: int = 2048, repeats: int = 5) -> float:
  """FLOP/s of the best of ``repeats`` float32 ``(n, n) @ (n, n)`` products."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
  dot = jax.jit(jnp.dot)
  return 2 * n ** 3 / _best_time(lambda: dot(a, b), repeats)


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


def _time_update(opt, params, grads, repeats: int) -> tuple[float, int]:
  state = opt.init(params)
  state_bytes = sum(np.asarray(x).nbytes for x in jax.tree.leaves(state))

  def step(grads, state, params):
    return opt.update(grads, state, params, loss=jnp.float32(1.0))

  step = jax.jit(step, donate_argnums=(1,))
  box = [state]

  def one():
    updates, box[0] = step(grads, box[0], params)
    return updates

  return _best_time(one, repeats), state_bytes


def _time_mlp(sizes: Sequence[int], n: int, chunk: int, feature_major: bool, repeats: int,
              peak: float, *, reference: bool) -> dict[str, Any]:
  """Times the chunked MLP kernel (in the LO's layout) and the straightforward form."""
  w = mlp_init(jax.random.key(1), sizes)
  flops = mlp_flops(sizes, n)
  num_chunks = -(-n // chunk)
  if feature_major:
    xc = jax.random.normal(jax.random.key(2), (num_chunks, sizes[0], chunk), jnp.float32)
    kernel = jax.jit(lambda w, x: lax.map(lambda c: mlp_forward_t(w, c), x))
  else:
    xc = jax.random.normal(jax.random.key(2), (num_chunks, chunk, sizes[0]), jnp.float32)
    kernel = jax.jit(lambda w, x: lax.map(lambda c: mlp_forward(w, c), x))
  # the kernel pads n to num_chunks * chunk rows: count the FLOPs it really does
  kflops = mlp_flops(sizes, num_chunks * chunk)
  tk = _best_time(lambda: kernel(w, xc), repeats)
  out = {"mlp_sizes": list(sizes), "mlp_layout": "feature-major" if feature_major else "row",
         "mlp_kernel_ms": 1e3 * tk, "mlp_gflops": kflops / tk / 1e9,
         "mlp_frac_peak": kflops / tk / peak}
  if reference:
    x = jax.random.normal(jax.random.key(2), (n, sizes[0]), jnp.float32)
    ref = jax.jit(mlp_apply_reference)
    tr = _best_time(lambda: ref(w, x), repeats)
    out.update(ref_mlp_ms=1e3 * tr, ref_mlp_frac_peak=flops / tr / peak)
  return out


def run(optimizers: Sequence[str], sizes: Sequence[int], *, repeats: int = 5,
        peak_n: int = 2048, reference_max_size: int = 10 ** 6,
        log: Callable[[str], None] = print) -> dict[str, Any]:
  """Runs the speed benchmark and returns its results as a JSON-able dict.

  Args:
    optimizers: registry names; ``adam`` is always measured (the baseline).
    sizes: approximate parameter counts.
    repeats: timed repetitions per measurement (the best is kept).
    peak_n: side of the square matmul used for the peak.
    reference_max_size: largest size at which the straightforward full-array MLP
      is timed (it needs ``num_params * hidden * 4`` bytes per activation).
    log: progress printer.

  Returns:
    ``{"peak_flops", "device", "rows": [...]}``, one row per optimizer and size.
  """
  names = ["adam"] + [n for n in optimizers if n != "adam"]
  peak = matmul_peak(peak_n, repeats)
  log(f"square matmul peak ({peak_n}^2 f32): {peak / 1e9:.1f} GFLOP/s")
  rows = []
  for size in sizes:
    params = mlp_shaped_params(int(size), jax.random.key(0))
    grads = jax.tree.map(lambda x: 1e-2 * jnp.ones_like(x), params)
    n = sum(x.size for x in jax.tree.leaves(params))
    adam_s = None
    for name in names:
      opt = _make_optimizer(name)
      t, state_bytes = _time_update(opt, params, grads, repeats)
      adam_s = t if name == "adam" else adam_s
      row = {"optimizer": name, "num_params": n, "update_ms": 1e3 * t,
             "vs_adam": t / adam_s, "state_bytes_per_param": state_bytes / n}
      lo = lopt.learned(name) if name in lopt.available_learned() else None
      sizes_mlp = getattr(lo, "mlp_sizes", None)
      if sizes_mlp is not None:
        row.update(_time_mlp(sizes_mlp, n, getattr(lo, "chunk", 16384),
                             getattr(lo, "feature_major", False), repeats, peak,
                             reference=n <= reference_max_size))
        if "ref_mlp_ms" in row:
          row["update_vs_ref_mlp"] = 1e3 * t / row["ref_mlp_ms"]
      rows.append(row)
      log(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                   for k, v in row.items()))
  return {"peak_flops": peak, "peak_n": peak_n, "repeats": repeats,
          "device": str(jax.devices()[0].device_kind), "platform": platform.platform(),
          "jax": jax.__version__, "rows": rows}


def to_markdown(result: dict[str, Any]) -> str:
  """Formats :func:`run`'s result as a markdown table."""
  lines = [f"Square-matmul peak ({result['peak_n']}^2 float32, best of {result['repeats']}): "
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
flags.DEFINE_list("optimizers", None,
                  "optimizers to time; default: adam, sgd and every learned optimizer")
flags.DEFINE_list("sizes", ["1e4", "1e5", "1e6", "1e7"], "approximate parameter counts")
flags.DEFINE_integer("repeats", 5, "timed repetitions per measurement (best kept)")
flags.DEFINE_integer("peak_n", 2048, "side of the square matmul for the peak")
flags.DEFINE_float("reference_max_size", 1e6,
                   "largest size at which the straightforward MLP is timed")
flags.DEFINE_string("out", "bench_out/speed", "output directory for speed.json / speed.md")


def main(argv: Sequence[str]) -> None:
  del argv
  names = FLAGS.optimizers or (["adam", "sgd"] + lopt.available_learned())
  sizes = [int(float(s)) for s in FLAGS.sizes]
  result = run(names, sizes, repeats=FLAGS.repeats, peak_n=FLAGS.peak_n,
               reference_max_size=int(FLAGS.reference_max_size))
  out = pathlib.Path(FLAGS.out)
  out.mkdir(parents=True, exist_ok=True)
  (out / "speed.json").write_text(json.dumps(result, indent=1) + "\n")
  md = to_markdown(result)
  (out / "speed.md").write_text(md)
  print(md)


if __name__ == "__main__":
  app.run(main)
