"""G.pt on a return (higher is better): best value, embedding, range, default prompt."""

import json
import warnings

import jax
import numpy as np
import pytest

import lopt
import tasks
from lopt.gpt import GPT, best_value, higher_is_better, param_spec, use_log_metric
from meta_train.gpt._context import ProtocolContext
from meta_train.gpt._inits import init_ids
from meta_train.gpt.protocol import choose_settings
from meta_train.gpt.protocol_return import choose_return_settings, evaluate_return_protocol
from meta_train.gpt.train import train_gpt

CFG = {"steps": 2, "batch_size": 4, "holdout_runs": 2, "d_model": 16, "num_layers": 1,
       "num_heads": 2, "num_timesteps": 20, "warmup_steps": 1, "log_every": 2,
       "checkpoint_every": 2, "eval_every": 2, "metric": "test_return", "layout": "neuron"}
TASK = {"hidden": [4], "horizon": 20, "batch_size": 2, "eval_batch_size": 4}


def test_direction_helpers():
  assert higher_is_better("test_return") and higher_is_better("return")
  assert not higher_is_better("test_loss") and not higher_is_better("test_error")
  vals = np.array([3.0, np.nan, 500.0, -2.0])
  assert best_value("test_return", vals) == 500.0 and best_value("test_loss", vals) == -2.0
  # log(metric) only for positive losses: a policy's loss is -return (negative).
  assert use_log_metric("test_loss", np.array([0.1, 2.0]))
  assert not use_log_metric("test_loss", np.array([-20.0, -500.0]))
  assert not use_log_metric("test_return", np.array([20.0, 500.0]))
  assert not use_log_metric("test_error", np.array([0.1, 0.5]))


def _write_return_dataset(path, task, runs=6, ckpts=3):
  """Synthetic CartPole runs (no rollouts): the return climbs from 20 to 400 + 20 r."""
  spec = param_spec(task.init(jax.random.key(0)))
  n = sum(int(np.prod(s["shape"])) for s in spec)
  params = np.random.default_rng(0).normal(size=(runs, ckpts, n)).astype(np.float32) * 0.1
  ret = np.linspace(20.0, 400.0 + 20 * np.arange(runs), ckpts).T.astype(np.float32)
  path.mkdir()
  np.savez(path / "shard_00000.npz", params=params, run_ids=np.arange(runs, dtype=np.int32),
           test_return=ret, train_return=ret, test_loss=-ret, train_loss=-ret)
  index = {"format_version": 1, "task": "cartpole", "task_config": TASK, "param_spec": spec,
           "num_params": n, "steps": list(range(ckpts)), "seed": 0,
           "metrics": ["test_loss", "test_return", "train_loss", "train_return"],
           "shards": [{"file": "shard_00000.npz", "optimizer": "adam", "runs": []}]}
  (path / "index.json").write_text(json.dumps(index))
  return params, ret


@pytest.fixture(scope="module")
def untrained_return_model(tmp_path_factory):
  """An untrained G.pt saved like ``gpt_train`` saves a return model (no training: fast)."""
  root = tmp_path_factory.mktemp("gpt_return_untrained")
  task = tasks.get("cartpole", **TASK)
  params, ret = _write_return_dataset(root / "data", task)
  gpt = GPT(param_spec(task.init(jax.random.key(0))), d_model=16, num_layers=1, num_heads=2,
            num_timesteps=20, layout="neuron", metric="test_return",
            log_metric=use_log_metric("test_return", ret))
  stats = gpt.compute_stats(params, ret)
  lopt.gpt.save_gpt(root / "weights", gpt, gpt.init(jax.random.key(0)), stats,
                    task={"name": "cartpole", "config": task.config()},
                    best_metric=best_value("test_return", ret),
                    metric_range=(float(ret.min()), float(ret.max())),
                    extra={"dataset": str(root / "data"), "heldout_run_ids": [0]})
  return root, task


def test_return_optimizer_prompts_the_best_return_and_warns_outside_the_range(
    untrained_return_model):
  root, task = untrained_return_model
  weights = str(root / "weights")
  params = task.init(jax.random.key(1))
  opt = lopt.get("gpt", weights=weights, task=task, temperature=0.0, num_sampling_steps=2)
  update = jax.jit(opt.update)  # one compile for both calls
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # a return inside the range: no warning
    upd, _ = update(params, opt.init(params), params, loss=200.0)
    jax.effects_barrier()
  assert all(np.isfinite(np.asarray(u)).all() for u in jax.tree.leaves(upd))
  with pytest.warns(lopt.gpt.GPTWarning, match="outside the range"):
    update(params, opt.init(params), params, loss=-50.0)  # a loss passed as the return
    jax.effects_barrier()


def test_protocols_refuse_the_other_direction(untrained_return_model, tmp_path):
  root, _ = untrained_return_model
  weights = str(root / "weights")
  with pytest.raises(ValueError, match="protocol_return"):  # the loss protocol
    choose_settings(weights, str(tmp_path / "s.json"), num_inits=2, num_validation_inits=2,
                    num_align_nets=1)
  assert not (tmp_path / "s.json").exists()
  with pytest.raises(FileNotFoundError, match="validation_only"):  # no settings file
    evaluate_return_protocol(str(tmp_path / "missing.json"), str(tmp_path / "out"))
  assert not (tmp_path / "out").exists()
  ctx = ProtocolContext(weights)
  assert not ctx.lower_is_better and ctx.best == pytest.approx(500.0)


@pytest.mark.slow  # trains a model (about a minute on a loaded core)
def test_train_records_the_max_return_and_embeds_returns_linearly(tmp_path):
  task = tasks.get("cartpole", **TASK)
  _, ret = _write_return_dataset(tmp_path / "data", task)
  weights = train_gpt(str(tmp_path / "data"), str(tmp_path / "work"), CFG, log=lambda _: None)
  m = lopt.gpt.read_gpt_manifest(weights)
  held = set(json.loads((tmp_path / "work" / "split.json").read_text())["heldout_run_ids"])
  train = ret[[r not in held for r in range(len(ret))]]
  assert m["best_metric"] == pytest.approx(train.max()) and m["best_metric"] > 400
  assert m["metric_range"] == pytest.approx([train.min(), train.max()])
  assert m["config"]["log_metric"] is False and m["config"]["metric"] == "test_return"


TINY_RETURN = dict(num_inits=2, num_validation_inits=2, eval_episodes=2, repeats=1,
                   adam_lrs=(0.01,), adam_at=2, curve_episodes=2, num_align_nets=1,
                   num_prompts=2, spread_temperatures=(1.0,), num_spread_starts=1,
                   spread_samples=2, num_sampling_steps=2)


def test_return_protocol_refuses_an_unknown_split_and_another_splits_report(tmp_path):
  with pytest.raises(ValueError, match="unknown split 'train'; valid: validation, test"):
    evaluate_return_protocol(str(tmp_path / "s.json"), str(tmp_path / "out"), split="train")
  (tmp_path / "test_out").mkdir()  # a test report is not overwritten by a validation one
  (tmp_path / "test_out" / "report.json").write_text(json.dumps({"gpt": {}}))
  with pytest.raises(ValueError, match="report of another split"):
    evaluate_return_protocol(str(tmp_path / "s.json"), str(tmp_path / "test_out"),
                             split="validation")


@pytest.mark.slow  # the whole return protocol at toy size (15-30 s)
def test_return_protocol_split_validation_draws_validation_ids_only(
    untrained_return_model, tmp_path, monkeypatch):
  root, _ = untrained_return_model
  path = tmp_path / "s.json"
  doc = choose_return_settings(str(root / "weights"), str(path), temperatures=(0.0,),
                               target_fractions=(0.0,), guidances=(0.0,), log=lambda m: None,
                               **TINY_RETURN)
  drawn, inits = [], ProtocolContext.inits
  monkeypatch.setattr(ProtocolContext, "inits", lambda self, scheme, ids: drawn.append(
      np.asarray(ids)) or inits(self, scheme, ids))
  rep = evaluate_return_protocol(str(path), str(tmp_path / "val"), split="validation",
                                 log=lambda m: None)
  val = init_ids("validation", 2)
  # No test id is drawn (the wall-clock timing once drew one).
  assert drawn and all(np.isin(ids, val).all() for ids in drawn)
  assert rep["split"] == "validation" and rep["ids"] == doc["ids"]["validation"]
  md = (tmp_path / "val" / "report.md").read_text()
  assert md.splitlines()[0].endswith("on VALIDATION inits (for model selection; not a test "
                                     "figure)") and "2 validation inits" in md
  assert len(rep["gpt"]["median"]) == 2 and set(rep["targets"]) == {
      "one update: median return >= 400", "R^2 pooled >= 0.9"}
