"""Subprocess entry point for the resume and multi-process trainer tests.

``python -m tests.meta_train.trainer_worker WORKDIR OUTER_STEPS SLEEP [COORD NPROC PID]``
meta-trains the tiny learned optimizer on a quadratic family with PES, sleeping
``SLEEP`` seconds after each outer step (so a test can kill it mid-run).
"""

import sys
import time

import jax

import tasks
from meta_train import EstimatorConfig, TrainConfig, UnrollConfig, train
from tests.meta_train.tiny_lopt import TinyLOpt

CONFIG = dict(lopt="tiny_lopt", task_family="quadratic4", estimator=EstimatorConfig("pes"),
              num_tasks=4, learning_rate=0.03, checkpoint_every=2,
              unroll=UnrollConfig(trunc_length=4, min_horizon=8, max_horizon=24,
                                  param_scale_range=(0.5, 2.0), loss_scale_range=(0.5, 2.0)))


def family():
  return tasks.ChoiceFamily("quadratic4", tasks.Quadratic, {"condition": [3.0, 30.0]}, dim=4,
                            noise=0.1)


def main(argv):
  workdir, steps, sleep = argv[1], int(argv[2]), float(argv[3])
  if len(argv) > 4:
    jax.distributed.initialize(argv[4], int(argv[5]), int(argv[6]))
  config = TrainConfig(outer_steps=steps, **CONFIG)
  train(config, workdir, lo=TinyLOpt(), family=family(),
        callback=lambda step, metrics: time.sleep(sleep))


if __name__ == "__main__":
  main(sys.argv)
