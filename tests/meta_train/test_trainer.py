"""The outer loop: devices, NaN safety, kill -9 and resume, multi-process."""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh

import lopt
import meta_train
import tasks
from meta_train import (
  EstimatorConfig,
  TrainConfig,
  UnrollConfig,
  make_estimator,
  make_outer_step,
  train,
)
from tests.meta_train import trainer_worker
from tests.meta_train.tiny_lopt import NaNLOpt, TinyLOpt

ROOT = pathlib.Path(__file__).resolve().parents[2]


def quad_family():
  return tasks.ChoiceFamily("quadratic4", tasks.Quadratic, {"condition": [10.0]}, dim=4,
                            noise=0.1)


def small_config(estimator="pes", **kw):
  base = dict(lopt="tiny_lopt", task_family="quadratic4", estimator=EstimatorConfig(estimator),
              num_tasks=8, unroll=UnrollConfig(trunc_length=4, min_horizon=8, max_horizon=16),
              learning_rate=0.03, outer_steps=3, checkpoint_every=100)
  return TrainConfig(**{**base, **kw})


def test_four_devices_give_the_same_meta_gradient_as_one(tmp_path):
  assert jax.device_count() == 4
  cfg = small_config(snapshot_every=2)
  one = train(cfg, tmp_path / "one", lo=TinyLOpt(), family=quad_family(),
              devices=jax.devices()[:1])
  # Snapshots: the init (step 0) and every 2 outer steps, loadable as weights.
  snaps = sorted(p.name for p in (tmp_path / "one" / "snapshots").iterdir())
  assert snaps == ["step_000000", "step_000002"]
  init = lopt.load_weights(tmp_path / "one" / "snapshots" / "step_000000", TinyLOpt())
  jax.tree.map(np.testing.assert_array_equal, init, TinyLOpt().init(None))
  four = train(cfg, tmp_path / "four", lo=TinyLOpt(), family=quad_family())
  rows = [[json.loads(x) for x in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
          for d in ("one", "four")]
  for a, b in zip(*rows):
    np.testing.assert_allclose(a["grad_norm"], b["grad_norm"], rtol=1e-5)
    np.testing.assert_allclose(a["meta_loss"], b["meta_loss"], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5), one.meta_params,
               four.meta_params)
  assert one.meta_params["log_lr"] != TinyLOpt().init(None)["log_lr"]  # it did learn


def test_trainable_trains_only_the_matching_meta_params(tmp_path):
  """``trainable="log_lr"``: logit_momentum keeps its init bit for bit, log_lr moves."""
  init = TinyLOpt().init(None)
  got = train(small_config(trainable="log_lr"), tmp_path, lo=TinyLOpt(), family=quad_family(),
              devices=jax.devices()[:1]).meta_params
  np.testing.assert_array_equal(got["logit_momentum"], init["logit_momentum"])
  assert float(got["log_lr"]) != float(init["log_lr"])
  with pytest.raises(ValueError, match=r"matches no meta-parameter; their paths: "
                                       r"\['log_lr'\], \['logit_momentum'\]"):
    meta_train.trainable_mask(init, "bias")
  with pytest.raises(ValueError, match="not a regular expression"):
    small_config(trainable="(")


def test_injected_nan_meta_gradient_is_skipped_and_never_applied():
  lo, task = TinyLOpt(), quad_family().task({"condition": 10.0, "dim": 4, "noise": 0.1})
  est = make_estimator("es", task, lo, UnrollConfig(trunc_length=4, min_horizon=8,
                                                    max_horizon=8))
  opt = optax.adam(0.1)
  mesh = Mesh(np.asarray(jax.devices()), ("tasks",))
  step = make_outer_step(est, opt, mesh, 4)
  theta = lo.init(None)
  opt_state = opt.init(theta)
  seed = jax.random.key_data(jax.random.key(0))
  state = est.init(theta, jax.random.key_data(jax.random.split(jax.random.key(1), 4)))
  theta1, opt_state1, state, m = step(theta, opt_state, state, 0, seed, True)
  assert int(m["skipped"]) == 1 and not np.isfinite(float(m["grad_norm"]))
  jax.tree.map(np.testing.assert_array_equal, theta1, theta)
  jax.tree.map(np.testing.assert_array_equal, opt_state1, opt_state)
  theta2, _, _, m = step(theta1, opt_state1, state, 1, seed, False)
  assert int(m["skipped"]) == 0 and float(theta2["log_lr"]) != float(theta["log_lr"])


def test_nan_inner_updates_are_dropped_counted_and_reset(tmp_path, monkeypatch):
  lo = NaNLOpt(nan_above=-100.0)  # every update is NaN: NaN params, NaN meta-gradients
  cfg = small_config(estimator="tbptt", num_tasks=4, outer_steps=2, checkpoint_every=1)
  monkeypatch.chdir(tmp_path)
  result = train(cfg, "run", lo=lo, family=quad_family())  # a relative workdir works too
  tmp_path = tmp_path / "run"
  assert (tmp_path / "checkpoints" / "2").exists()
  assert result.counters["skipped_steps"] == 2
  assert result.counters["dropped_instances"] == 8
  assert result.counters["nonfinite_inner"] == 8
  assert result.counters["resets"] >= 4  # the diverged instances restarted
  jax.tree.map(np.testing.assert_array_equal, result.meta_params, lo.init(None))
  rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["total_skipped_steps"] for r in rows] == [1, 2]
  assert all(np.isfinite(r["meta_loss"]) for r in rows)


def _worker_env(tmp_path, devices=1):
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  return env


def _worker(workdir, steps, sleep, *extra):
  return [sys.executable, "-m", "tests.meta_train.trainer_worker", str(workdir), str(steps),
          str(sleep), *map(str, extra)]


def _final(workdir):
  return lopt.load_weights(workdir / "weights", TinyLOpt())


def test_sigkill_and_resume_is_bit_identical(tmp_path):
  env, steps = _worker_env(tmp_path), 10
  subprocess.run(_worker(tmp_path / "straight", steps, 0), env=env, check=True, cwd=ROOT,
                 timeout=300)
  proc = subprocess.Popen(_worker(tmp_path / "killed", steps, 0.5), env=env, cwd=ROOT)
  ckpt = tmp_path / "killed" / "checkpoints"
  deadline = time.time() + 240
  while not (ckpt / "4").exists() and time.time() < deadline and proc.poll() is None:
    time.sleep(0.1)
  assert (ckpt / "4").exists() and proc.poll() is None, "no checkpoint before the deadline"
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not (tmp_path / "killed" / "weights").exists()  # it really stopped mid-run
  subprocess.run(_worker(tmp_path / "killed", steps, 0), env=env, check=True, cwd=ROOT,
                 timeout=300)
  straight, resumed = _final(tmp_path / "straight"), _final(tmp_path / "killed")
  jax.tree.map(np.testing.assert_array_equal, resumed, straight)
  assert straight["log_lr"] != TinyLOpt().init(None)["log_lr"]
  rows = [json.loads(x) for x in (tmp_path / "killed" / "metrics.jsonl").read_text().split("\n")
          if x]
  assert [r["step"] for r in rows] == list(range(1, steps + 1))


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
  env, steps = _worker_env(tmp_path), 4
  subprocess.run(_worker(tmp_path / "single", steps, 0), env=_worker_env(tmp_path, 2),
                 check=True, cwd=ROOT, timeout=300)
  addr = f"127.0.0.1:{_free_port()}"
  procs = [subprocess.Popen(_worker(tmp_path / "multi", steps, 0, addr, 2, i), env=env, cwd=ROOT)
           for i in range(2)]
  assert [p.wait(timeout=300) for p in procs] == [0, 0]
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5),
               _final(tmp_path / "multi"), _final(tmp_path / "single"))


def test_worker_config_is_valid():
  TrainConfig(outer_steps=1, **trainer_worker.CONFIG)
  with pytest.raises(ValueError, match="valid names: es, pes, tbptt"):
    EstimatorConfig("bogus")
  with pytest.raises(TypeError, match="EstimatorConfig"):
    TrainConfig(estimator="pes")
  assert jnp.isfinite(TinyLOpt().init(None)["log_lr"])


def test_mixed_family_samples_both_members_and_unknown_names_list_choices():
  import meta_train
  fam = meta_train.get_family("mixed")
  cfgs = [fam.sample(jax.random.key(i)) for i in range(12)]
  assert {c["family"] for c in cfgs} == {"digits_mlp_wide", "quadratic_wide"}
  assert isinstance(fam.task(cfgs[0]), tasks.Task)
  assert "mixed" in meta_train.available_families()
  with pytest.raises(KeyError, match="digits_mlp"):
    meta_train.get_family("nope")
