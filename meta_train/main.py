r"""Meta-train a learned optimizer from the command line.

Example::

  python -m meta_train.main --lopt=mlp_lopt --task_family=digits_mlp --estimator=pes \
      --num_tasks=8 --trunc_length=20 --outer_steps=500 --workdir=runs/mlp_digits
  python -m meta_train.main --flagfile=meta_train/configs/mlp_lopt_pretrained.flags

Rerunning the same command resumes from the newest checkpoint in ``--workdir``.
Multi-process (one process per host, or several on one host for testing)::

  python -m meta_train.main ... --coordinator_address=127.0.0.1:12345 \
      --num_processes=2 --process_id=0   # and --process_id=1 in the other process

Writes into ``--workdir``: ``config.json``, ``checkpoints/``, ``metrics.jsonl``,
``meta_training_curve.png`` and ``weights/`` (load with
``lopt.get(name, weights="<workdir>/weights")``).
"""

from __future__ import annotations

import json
import pathlib
import time

from absl import app, flags, logging

import lopt
import meta_train

FLAGS = flags.FLAGS

flags.DEFINE_enum("lopt", "mlp_lopt", lopt.available_learned(), "Learned optimizer to train.")
flags.DEFINE_string("lopt_config", "{}", "JSON object of the learned optimizer's constructor "
                    "arguments, e.g. '{\"hidden_size\": 16}'.")
flags.DEFINE_enum("task_family", "digits_mlp", meta_train.available_families(),
                  "Family of inner tasks.")
flags.DEFINE_enum("estimator", "pes", sorted(meta_train.ESTIMATORS), "Meta-gradient estimator.")
flags.DEFINE_integer("num_tasks", 8, "Task instances per group (divisible by the device count).",
                     lower_bound=1)
flags.DEFINE_integer("num_configs", 1, "Task configurations (groups), each compiled once.",
                     lower_bound=1)
flags.DEFINE_integer("trunc_length", 20, "Inner steps per truncation.", lower_bound=1)
flags.DEFINE_integer("min_horizon", 100, "Shortest inner run.", lower_bound=1)
flags.DEFINE_integer("max_horizon", 500, "Longest inner run.", lower_bound=1)
flags.DEFINE_list("param_scale_range", ["1", "1"], "lo,hi of the log-uniform parameter "
                  "rescaling (task augmentation).")
flags.DEFINE_list("loss_scale_range", ["1", "1"], "lo,hi of the log-uniform loss/gradient "
                  "rescaling (task augmentation).")
flags.DEFINE_enum("meta_loss_split", "train", ["train", "test"],
                  "Meta-objective on training batches or on held-out batches.")
flags.DEFINE_integer("outer_steps", 1000, "Outer (meta) steps.", lower_bound=1)
flags.DEFINE_float("learning_rate", 1e-3, "Adam learning rate on meta-params.", lower_bound=0.0)
flags.DEFINE_float("clip_norm", 1.0, "Global-norm clipping of the meta-gradient.",
                   lower_bound=0.0)
flags.DEFINE_float("sigma", 0.01, "ES/PES perturbation standard deviation.", lower_bound=0.0)
flags.DEFINE_integer("seed", 0, "Root of all randomness.")
flags.DEFINE_integer("checkpoint_every", 100, "Outer steps between checkpoints.", lower_bound=1)
flags.DEFINE_string("init_weights", None, "Start from these saved weights.")
flags.DEFINE_string("workdir", None, "Run directory (resumed when it holds a run).")
flags.DEFINE_integer("log_every", 10, "Outer steps between progress lines.", lower_bound=1)
flags.DEFINE_bool("plot", True, "Write meta_training_curve.png at the end.")
flags.DEFINE_bool("compilation_cache", True, "Keep compiled steps in <workdir>/jax_cache so a "
                  "resumed run skips compilation (one compile per task configuration).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process).")
flags.DEFINE_integer("num_processes", 1, "Number of processes (multi-process).", lower_bound=1)
flags.DEFINE_integer("process_id", 0, "This process's id (multi-process).", lower_bound=0)

flags.mark_flag_as_required("workdir")


def _pair(name: str, value: list[str]) -> tuple[float, float]:
  try:
    lo, hi = (float(v) for v in value)
  except ValueError:
    raise app.UsageError(f"--{name} must be two numbers 'lo,hi', got {','.join(value)!r}")
  if not 0 < lo <= hi:
    raise app.UsageError(f"--{name} must satisfy 0 < lo <= hi, got {lo},{hi}")
  return lo, hi


@flags.multi_flags_validator(["min_horizon", "max_horizon"],
                             message="--min_horizon must be <= --max_horizon")
def _check_horizons(d):
  return d["min_horizon"] <= d["max_horizon"]


@flags.validator("lopt_config", message="--lopt_config must be a JSON object, e.g. '{}'")
def _check_lopt_config(value):
  try:
    return isinstance(json.loads(value), dict)
  except json.JSONDecodeError:
    return False


def config_from_flags() -> meta_train.TrainConfig:
  """The :class:`meta_train.TrainConfig` the parsed flags describe."""
  try:
    return meta_train.TrainConfig(
        lopt=FLAGS.lopt, lopt_config=json.loads(FLAGS.lopt_config),
        task_family=FLAGS.task_family, estimator=FLAGS.estimator, num_tasks=FLAGS.num_tasks,
        num_configs=FLAGS.num_configs, trunc_length=FLAGS.trunc_length,
        min_horizon=FLAGS.min_horizon, max_horizon=FLAGS.max_horizon,
        param_scale_range=_pair("param_scale_range", FLAGS.param_scale_range),
        loss_scale_range=_pair("loss_scale_range", FLAGS.loss_scale_range),
        meta_loss_split=FLAGS.meta_loss_split, outer_steps=FLAGS.outer_steps,
        learning_rate=FLAGS.learning_rate, clip_norm=FLAGS.clip_norm, sigma=FLAGS.sigma,
        seed=FLAGS.seed, checkpoint_every=FLAGS.checkpoint_every,
        init_weights=FLAGS.init_weights)
  except (ValueError, KeyError) as e:
    raise app.UsageError(str(e))


class Progress:
  """Prints step, windowed meta-loss, outer steps/s and ETA every ``every`` steps."""

  def __init__(self, total: int, every: int):
    self.total, self.every = total, every
    self.window: list[float] = []
    self.t0 = self.first = None

  def __call__(self, step: int, metrics: dict[str, float]) -> None:
    now = time.time()
    if self.t0 is None:  # the first step includes compilation: time from its end
      self.t0, self.first = now, step
      print(f"step {step}/{self.total}: compiled, meta_loss {metrics['meta_loss']:.4f}",
            flush=True)
      return
    self.window.append(metrics["meta_loss"])
    if step % self.every and step != self.total:
      return
    rate = (step - self.first) / max(now - self.t0, 1e-9)
    eta = (self.total - step) / max(rate, 1e-9)
    print(f"step {step}/{self.total}  meta_loss {sum(self.window) / len(self.window):.4f}  "
          f"grad_norm {metrics['grad_norm']:.3g}  skipped {int(metrics['total_skipped_steps'])}"
          f"  {rate:.2f} steps/s  ETA {eta / 60:.1f} min", flush=True)
    self.window = []


def plot_curve(metrics_path: pathlib.Path, png_path: pathlib.Path) -> None:
  """Plots meta-loss per outer step (and a moving average) from ``metrics.jsonl``."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import numpy as np

  rows = [json.loads(ln) for ln in metrics_path.read_text().splitlines() if ln.strip()]
  steps = np.asarray([r["step"] for r in rows])
  loss = np.asarray([r["meta_loss"] for r in rows])
  w = max(1, len(loss) // 50)
  smooth = np.convolve(loss, np.ones(w) / w, mode="valid")
  fig, ax = plt.subplots(figsize=(6, 4))
  ax.plot(steps, loss, alpha=0.3, label="per step")
  ax.plot(steps[w - 1:], smooth, label=f"moving average ({w})")
  ax.set_xlabel("outer step")
  ax.set_ylabel("meta-loss (mean normalized inner loss)")
  ax.set_title(metrics_path.parent.name)
  ax.legend()
  fig.tight_layout()
  fig.savefig(png_path, dpi=100)
  plt.close(fig)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint operation at INFO
  if FLAGS.coordinator_address:
    import jax
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes,
                               FLAGS.process_id)
  config = config_from_flags()
  import jax
  workdir = pathlib.Path(FLAGS.workdir)
  if FLAGS.compilation_cache:
    jax.config.update("jax_compilation_cache_dir", str((workdir / "jax_cache").resolve()))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  is_main = jax.process_index() == 0
  if is_main:
    print(f"meta-training {config.lopt} on {config.task_family} with {config.estimator}: "
          f"{config.num_tasks} instances x {config.num_configs} configs on "
          f"{jax.device_count()} devices ({jax.process_count()} processes); workdir {workdir}",
          flush=True)
  try:
    result = meta_train.train(config, workdir,
                              callback=Progress(config.outer_steps, FLAGS.log_every))
  except ValueError as e:
    raise app.UsageError(str(e))
  if is_main:
    if FLAGS.plot and (workdir / "metrics.jsonl").exists():
      plot_curve(workdir / "metrics.jsonl", workdir / "meta_training_curve.png")
    print(f"done: {result.step} outer steps, counters {result.counters}; weights in "
          f"{workdir / 'weights'}", flush=True)


if __name__ == "__main__":
  app.run(main)
