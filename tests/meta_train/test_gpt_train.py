"""G.pt training: runs, resumes, skips non-finite steps, exports weights usable by lopt.get."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lopt
import tasks
from lopt.gpt import GPT, param_spec
from meta_train.gpt.evaluate import evaluate_gpt
from meta_train.gpt.train import _make_step, split_runs, train_gpt

CFG = {"steps": 4, "batch_size": 4, "holdout_runs": 2, "d_model": 16, "num_layers": 1,
       "num_heads": 2, "chunk_size": 64, "num_timesteps": 20, "warmup_steps": 1,
       "log_every": 2, "checkpoint_every": 4, "eval_every": 4}


def _write_dataset(path, task, runs=6, ckpts=3, final_step=0.0):
  """A synthetic dataset in the on-disk format (no training needed).

  Every run's loss goes from 2.3 to ``0.3 + final_step * run``.
  """
  spec = param_spec(task.init(jax.random.key(0)))
  n = sum(int(np.prod(s["shape"])) for s in spec)
  rng = np.random.default_rng(0)
  init = rng.normal(size=(runs, 1, n)).astype(np.float32) * 0.1
  params = init * np.linspace(1.0, 0.5, ckpts)[None, :, None]
  loss = np.linspace(2.3, 0.3 + final_step * np.arange(runs), ckpts).T.astype(np.float32)
  path.mkdir()
  np.savez(path / "shard_00000.npz", params=params, run_ids=np.arange(runs, dtype=np.int32),
           test_loss=loss, train_loss=loss)
  index = {"format_version": 1, "task": "digits_mlp", "task_config": {"hidden": [4]},
           "param_spec": spec, "num_params": n, "steps": list(range(ckpts)),
           "metrics": ["test_loss", "train_loss"], "seed": 0,
           "shards": [{"file": "shard_00000.npz", "optimizer": "adam", "runs": []}]}
  (path / "index.json").write_text(json.dumps(index))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  root = tmp_path_factory.mktemp("gpt_train")
  task = tasks.get("digits_mlp", hidden=(4,))
  _write_dataset(root / "data", task)
  logs = []
  weights = train_gpt(str(root / "data"), str(root / "work"), CFG, log=logs.append)
  return root, task, weights, logs


@pytest.fixture(scope="module")
def data_final(trained):
  """The trained model's runs, but their final losses differ (the target grid has two values)."""
  root, task, _, _ = trained
  _write_dataset(root / "data_final", task, final_step=0.2)
  return root / "data_final"


def test_trains_logs_and_exports(trained):
  root, _, weights, logs = trained
  lines = [json.loads(x) for x in (root / "work" / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in lines] == [2, 4] and "heldout_loss" in lines[-1]
  assert all(np.isfinite(r["loss"]) for r in lines)
  assert any("ETA" in msg for msg in logs)
  manifest = lopt.gpt.read_gpt_manifest(weights)
  assert manifest["best_metric"] == pytest.approx(0.3) and manifest["extra"]["steps"] == 4
  # What lopt.get("gpt", task=...) checks: the task's whole config, the start-metric range.
  assert manifest["task"] == {"name": "digits_mlp",
                              "config": tasks.get("digits_mlp", hidden=[4]).config()}
  assert manifest["metric_range"] == pytest.approx([0.3, 2.3])
  split = json.loads((root / "work" / "split.json").read_text())
  assert len(split["heldout_run_ids"]) == 2 and len(split["train_run_ids"]) == 4


@pytest.mark.slow
def test_resumes_from_checkpoint(trained):
  root, _, _, _ = trained
  logs = []
  train_gpt(str(root / "data"), str(root / "work"), {**CFG, "steps": 6}, log=logs.append)
  assert "resumed from step 4" in logs[0]
  text = (root / "work" / "metrics.jsonl").read_text()
  steps = [json.loads(x)["step"] for x in text.splitlines()]
  assert steps == [2, 4, 6]


def test_resume_keeps_config_and_cuts_metrics_back_to_the_checkpoint(trained, tmp_path):
  root, _, _, _ = trained
  work = tmp_path / "work"
  shutil.copytree(root / "work", work)
  config = (work / "config.json").read_text()
  with open(work / "metrics.jsonl", "a") as f:  # rows past checkpoint 4, then a kill mid-write
    f.write(json.dumps({"step": 6, "loss": 1.0}) + "\n" + '{"step": 8, "lo')
  logs = []
  train_gpt(str(root / "data"), str(work), {**CFG, "log_every": 1}, log=logs.append)
  assert "resumed from step 4" in logs[0]
  assert (work / "config.json").read_text() == config  # log_every may change; not rewritten
  steps = [json.loads(x)["step"] for x in (work / "metrics.jsonl").read_text().splitlines()]
  assert steps == [2, 4]
  assert sorted(p.name for p in work.iterdir()) == [
      "checkpoints", "config.json", "metrics.jsonl", "split.json", "weights"]
  with pytest.raises(ValueError, match="different config \\(d_model: 16 -> 32"):
    train_gpt(str(root / "data"), str(work), {**CFG, "d_model": 32})


def test_weights_work_as_optimizer_and_reject_other_trees(trained):
  _, task, weights, _ = trained
  params = task.init(jax.random.key(5))
  opt = lopt.get("gpt", weights=str(weights), task=task, num_sampling_steps=2)
  state = opt.init(params)
  updates, state = jax.jit(opt.update)(params, state, params, loss=jnp.float32(2.3))
  new = optax.apply_updates(params, updates)
  assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(new))
  other = tasks.get("digits_mlp", hidden=(5,)).init(jax.random.key(0))
  with pytest.raises(ValueError, match="Dense_0/bias.*\\(5,\\).*\\(4,\\)"):
    opt.init(other)


@pytest.mark.slow  # 42 s: trains a second, gradient-conditioned model
def test_condition_grad_and_prompt_dropout_give_a_guidable_optimizer(trained):
  root, task, _, _ = trained
  weights = train_gpt(str(root / "data"), str(root / "work_grad"),
                      {**CFG, "steps": 2, "condition_grad": True, "prompt_dropout": 0.3},
                      log=lambda msg: None)
  m = lopt.gpt.load_gpt(weights)
  assert m.model.cfg["condition_grad"] and float(jnp.min(m.stats["grad_scale"])) > 0
  assert m.model.cfg["prompt_dropout"] == 0.3 and "null_target" in m.params
  params = task.init(jax.random.key(5))
  grads = jax.grad(task.loss)(params, jax.random.key(0), task.batch(jax.random.key(0)))
  opt = lopt.get("gpt", weights=str(weights), task=task, num_sampling_steps=2,
                 guidance=0.5)
  updates, _ = jax.jit(opt.update)(grads, opt.init(params), params, loss=jnp.float32(2.3))
  assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(updates))
  with pytest.raises(ValueError, match="prompt_dropout"):
    train_gpt(str(root / "data"), str(root / "work_bad"), {**CFG, "prompt_dropout": 1.5},
              log=lambda msg: None)
  assert not (root / "work_bad").exists()


@pytest.mark.slow
def test_nonfinite_step_is_skipped_and_counted():
  spec = [{"path": "Dense_0/bias", "shape": [3]}, {"path": "Dense_0/kernel", "shape": [2, 3]}]
  model = GPT(spec, chunk_size=4, d_model=8, num_layers=1, num_heads=1, num_timesteps=10)
  stats = {k: jnp.asarray(v) for k, v in model.compute_stats(
      np.ones((2, 2, 9), np.float32), np.ones((2, 2), np.float32)).items()}
  tx = optax.adam(1e-3)
  net = model.init(jax.random.key(0))
  state = {"params": net, "ema": net, "opt_state": tx.init(net),
           "step": jnp.zeros((), jnp.int32), "nonfinite": jnp.zeros((), jnp.int32)}
  step = _make_step(model, tx, 0.9)
  bad = (jnp.full((2, 9), jnp.nan), jnp.ones((2, 9)), jnp.ones(2), jnp.ones(2))
  new, m = step(state, stats, jax.random.key(0), bad)
  assert not bool(m["finite"]) and int(new["nonfinite"]) == 1 and int(new["step"]) == 1
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               new["params"], net)


def test_bad_dataset_and_split(tmp_path):
  with pytest.raises(FileNotFoundError, match="no G.pt checkpoint dataset"):
    train_gpt(str(tmp_path / "missing"), str(tmp_path / "w"), CFG)
  with pytest.raises(ValueError, match="unknown config"):
    train_gpt(str(tmp_path / "missing"), str(tmp_path / "w"), {"stepz": 1})
  tr, ho = split_runs(np.arange(10), 3, 0)
  assert len(ho) == 3 and not set(tr) & set(ho)
  with pytest.raises(ValueError, match="holdout_runs"):
    split_runs(np.arange(3), 3, 0)


@pytest.mark.slow
def test_eval_writes_report_and_plots(trained, data_final):
  root, _, weights, _ = trained
  rep = evaluate_gpt(str(weights), str(data_final), str(root / "eval"), num_nets=1,
                     num_prompts=3, num_inits=2, recursive_steps=2, num_sampling_steps=2,
                     adam_steps=10, adam_lrs=(1e-2,), noise_levels=(0.1, 1.0),
                     temperatures=(1.0, 0.0), guidances=(0.5,), target_fractions=(0.0, 0.5),
                     save_settings=True, log=lambda msg: None)
  # Temperature and target: the pair of the grid whose one update from the validation
  # inits got furthest. Guidance: chosen on the held-out run not used for the figures, and
  # only if it does not hurt that one update. All three are recorded in the manifest, and
  # the reported one update uses them (the best prompt is reported beside it).
  sel, gsel = rep["setting_selection"], rep["guidance_selection"]
  grid = [rep["best_prompt"] + f * (sel["reference_metric"] - rep["best_prompt"])
          for f in (0.0, 0.5)]
  table = sel["one_update_median_by_temperature_and_target"]
  assert len(set(grid)) == 2 and list(table) == ["1", "0"]
  assert all(list(row) == [f"{t:.6g}" for t in grid] for row in table.values())
  flat = [(v, float(tp), grid[i]) for tp, row in table.items()
          for i, v in enumerate(row.values())]
  assert min(flat, key=lambda x: x[0])[1:] == (sel["chosen"]["temperature"],
                                               sel["chosen"]["target"])
  by = gsel["by_guidance"]
  assert gsel["validation_nets"] == 1 and set(by) == {0.0, 0.5} and gsel["chosen"] in by
  assert (by[gsel["chosen"]]["one_update_median_at_target"]
          <= by[0.0]["one_update_median_at_target"])
  manifest = lopt.gpt.read_gpt_manifest(weights)
  assert manifest["extra"]["sampling_temperature"] == sel["chosen"]["temperature"] \
      == rep["temperature"]
  assert manifest["extra"]["target"] == sel["chosen"]["target"] == rep["target"]
  assert manifest["extra"]["guidance"] == gsel["chosen"] == rep["guidance"]
  assert rep["one_update"]["target"] == rep["target"]
  assert np.isfinite(rep["one_update"]["at_best_prompt_median"])
  assert set(rep["targets"]) == {"prompt_alignment_r2>=0.9", "adam_steps_to_match>=100",
                                 "not_dominated_by_noisy_retrieval"}
  assert len(rep["recursive"]["median"]) == 3
  for f in rep["plots"] + ["report.json"]:
    assert (root / "eval" / f).stat().st_size > 0


def test_eval_validation_only_reports_no_test_figures(trained, data_final, tmp_path):
  root, _, weights, _ = trained
  manifest = (weights / "manifest.json").read_text()
  kw = dict(num_nets=1, num_prompts=3, num_inits=2, num_sampling_steps=2,
            log=lambda msg: None, validation_only=True)
  chosen = evaluate_gpt(str(weights), str(data_final), str(tmp_path / "a"),
                        temperatures=(0.0,), guidances=(0.0,), target_fractions=(0.3,), **kw)
  given = evaluate_gpt(str(weights), str(data_final), str(tmp_path / "b"),
                       temperature=0.0, guidance=0.0, target=chosen["target"], **kw)
  # Chosen or given, the same settings give the same validation figures.
  assert chosen["validation"] == given["validation"]
  assert set(chosen["validation"]) == {"validation_nets", "validation_inits", "r2",
                                       "one_update_median", "one_update_median_at_target"}
  assert chosen["target"] != chosen["best_prompt"]
  assert np.isfinite(chosen["validation"]["one_update_median"])
  for rep in (chosen, given):
    assert not {"prompt_alignment", "one_update", "adam", "baselines"} & set(rep)
  assert json.loads((tmp_path / "b" / "report.json").read_text())["validation"] == \
      given["validation"]
  assert (weights / "manifest.json").read_text() == manifest  # not asked to save
  with pytest.raises(ValueError, match="held-out runs"):
    evaluate_gpt(str(weights), str(root / "data"), str(tmp_path / "c"), **{**kw, "num_nets": 2},
                 temperature=0.0, guidance=0.0, target=1.0)


def test_baseline_helpers():
  from meta_train.gpt._baselines import (
    knn_average,
    nearest_distance,
    r_squared,
    retrieve,
    steps_to_reach,
  )
  rng = np.random.default_rng(0)
  bank, x = rng.normal(size=(50, 7)).astype(np.float32), rng.normal(size=(5, 7))
  ref = np.sqrt(((x[:, None] - bank[None]) ** 2).sum(-1)).min(1)
  np.testing.assert_allclose(nearest_distance(x, bank, chunk=2), ref, rtol=1e-4, atol=1e-4)
  assert r_squared([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]) == pytest.approx(1.0)
  assert r_squared([1.0, 2.0, 3.0], [3.0, 2.0, 1.0]) < 0
  metric = np.asarray([0.1, 0.5, 0.9])
  assert retrieve(metric, np.asarray([0.45, 1.0]))[:, 0].tolist() == [1, 2]
  np.testing.assert_allclose(knn_average(np.eye(3), metric, np.asarray([0.2]), k=2),
                             [[0.5, 0.5, 0.0]])
  assert steps_to_reach(np.asarray([3.0, 2.0, 1.0]), 1.5, every=5) == 10
  assert steps_to_reach(np.asarray([3.0, 2.0]), 0.5, every=5) is None
