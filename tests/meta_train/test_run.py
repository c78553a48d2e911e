"""Resumable runs (meta_train._run): cut-off metrics, damaged checkpoints, locks, failed starts."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from meta_train import TrainConfig, UnrollConfig, train
from meta_train._run import ConfigMismatch, MetricsLog, RunDir, WorkdirLocked, replace_dir
from tests.meta_train.test_trainer import quad_family, small_config
from tests.meta_train.tiny_lopt import TinyLOpt


def _config(**kw):
  return small_config(num_tasks=4, outer_steps=2, checkpoint_every=1, **kw)


def _train(workdir, **kw):
  logs = []
  result = train(_config(), workdir, lo=TinyLOpt(), family=quad_family(), log=logs.append, **kw)
  return result, logs


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  """A finished two-step run, checkpointed after each step."""
  workdir = tmp_path_factory.mktemp("run") / "w"
  result, _ = _train(workdir)
  return workdir, result


def test_resume_survives_a_cut_off_metrics_line_a_damaged_checkpoint_and_a_stale_lock(
    finished, tmp_path):
  workdir = tmp_path / "w"
  shutil.copytree(finished[0], workdir)
  with open(workdir / "metrics.jsonl", "a") as f:
    f.write('{"dropped_instances": 0.0, "es_')  # killed mid-write
  damaged = [p for p in (workdir / "checkpoints" / "2").rglob("*") if p.is_file()
             and p.stat().st_size > 64]
  assert damaged
  for p in damaged:  # the newest checkpoint's data files are cut short
    os.truncate(p, p.stat().st_size // 2)
  dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                        capture_output=True, text=True, check=True)
  (workdir / "run.lock").write_text(json.dumps({"pid": int(dead.stdout), "host":
                                                socket.gethostname()}))  # left by a kill -9
  result, logs = _train(workdir)
  assert len(logs) == 1 and "skipping checkpoint 2" in logs[0] and "from checkpoint 1" in logs[0]
  assert (workdir / "damaged_checkpoints" / "2").is_dir()  # kept for inspection
  assert (workdir / "checkpoints" / "2").is_dir()  # written again
  rows = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == [1, 2]  # row 2 dropped with its checkpoint, then redone
  jax.tree.map(np.testing.assert_array_equal, result.meta_params, finished[1].meta_params)
  assert not (workdir / "run.lock").exists()  # taken over, then released


_HOLD_LOCK = """
import fcntl, json, os, socket, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode())
print("locked", flush=True)
time.sleep(60)
"""


def test_a_second_process_is_refused_at_once(finished, tmp_path):
  workdir = tmp_path / "w"
  shutil.copytree(finished[0], workdir)
  holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(workdir / "run.lock")],
                            stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "locked"
    t0 = time.time()
    with pytest.raises(WorkdirLocked, match=f"in use by another run \\(pid {holder.pid} "):
      _train(workdir)
    assert time.time() - t0 < 2  # before any compilation
  finally:
    holder.kill()
    holder.wait()
  # The holder died: its lock file stays, naming a dead pid; the next run takes it over.
  assert json.loads((workdir / "run.lock").read_text())["pid"] == holder.pid
  with RunDir(workdir, _config().to_json(), resumable=("outer_steps",)):
    assert json.loads((workdir / "run.lock").read_text())["pid"] == os.getpid()
    with pytest.raises(WorkdirLocked, match=socket.gethostname()):  # also within one process
      RunDir(workdir, _config().to_json()).__enter__()
  assert not (workdir / "run.lock").exists()


def test_failed_start_writes_no_config(tmp_path):
  workdir = tmp_path / "w"
  with pytest.raises(FileNotFoundError):
    train(_config(init_weights=str(tmp_path / "no_such_dir")), workdir, lo=TinyLOpt(),
          family=quad_family())
  assert not workdir.exists()
  # a config mismatch is found before anything else, and the message names the field
  workdir.mkdir()
  (workdir / "config.json").write_text(json.dumps(_config(seed=1).to_json()))
  with pytest.raises(ConfigMismatch, match="seed: 1 -> 0"):
    _train(workdir)
  assert sorted(p.name for p in workdir.iterdir()) == ["config.json"]


def test_old_flat_config_json_is_the_same_config(tmp_path):
  flat = {"lopt": "mlp_lopt", "lopt_config": {}, "task_family": "mixed", "estimator": "pes",
          "num_tasks": 8, "num_configs": 4, "trunc_length": 20, "min_horizon": 100,
          "max_horizon": 400, "param_scale_range": [0.5, 2.0], "loss_scale_range": [0.5, 2.0],
          "meta_loss_split": "train", "outer_steps": 5000, "learning_rate": 0.001,
          "clip_norm": 1.0, "sigma": 0.01, "seed": 5, "checkpoint_every": 20, "max_to_keep": 2,
          "init_weights": None, "inject_nan_steps": []}
  cfg = TrainConfig.from_json(flat)
  assert cfg.unroll == UnrollConfig(20, 100, 400, (0.5, 2.0), (0.5, 2.0), "train")
  assert cfg.estimator.name == "pes" and cfg.estimator.sigma == 0.01
  assert TrainConfig.from_json(cfg.to_json()) == cfg
  (tmp_path / "config.json").write_text(json.dumps(flat))
  from meta_train._trainer import _normalize_saved

  extended = json.loads(json.dumps({**cfg.to_json(), "outer_steps": 6000}))
  assert RunDir(tmp_path, extended, resumable=("outer_steps",),
                normalize=_normalize_saved).check_config()
  changed = {**extended, "unroll": {**extended["unroll"], "stagger": False}}
  with pytest.raises(ConfigMismatch, match="unroll"):
    RunDir(tmp_path, changed, normalize=_normalize_saved).check_config()
  with pytest.raises(ValueError, match="bogus"):
    TrainConfig.from_json({**flat, "bogus": 1})


def test_metrics_log_and_replace_dir(tmp_path):
  log = MetricsLog(tmp_path / "metrics.jsonl")
  log.truncate(3)  # no file: nothing to do
  for s in (1, 2, 3):
    log.append({"step": s})
  text = log.path.read_text()
  log.truncate(5)
  assert log.path.read_text() == text  # nothing to drop: not rewritten
  log.truncate(2)
  assert [r["step"] for r in log.rows()] == [1, 2]
  dest = tmp_path / "weights"

  def write(content):
    def fn(tmp):
      tmp.mkdir()
      (tmp / "f").write_text(content)
      return tmp
    return fn

  replace_dir(dest, write("a"))
  replace_dir(dest, write("b"))
  assert (dest / "f").read_text() == "b"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl", "weights"]
