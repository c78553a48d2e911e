"""G.pt checkpoint datasets: format (no pickle), determinism, resume, errors, augmentation,
and runs that start from a G.pt model's own samples (``start_from``)."""

import json

import jax
import numpy as np
import optax
import pytest
from absl import flags

import lopt
import tasks
from lopt.gpt import GPT, dense_stack, param_spec
from meta_train.gpt import dataset as dataset_cli
from meta_train.gpt._data import load_dataset
from meta_train.gpt._pairs import permutation_index, sample_pairs
from meta_train.gpt._protocol import weights_digest
from meta_train.gpt._start import START_KEY_SALT, load_start_from
from meta_train.gpt.dataset import define_flags, generate
from tests.lopt.gpt_tiny import TINY

ARGS = dict(task="digits_mlp", task_config={"hidden": [4]}, runs=4, runs_per_shard=2,
            checkpoints_per_run=3, steps_per_run=4, optimizers=("adam",), seed=3,
            log=lambda msg: None)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  out = tmp_path_factory.mktemp("gpt_data")
  generate(out, **ARGS)
  return out


def test_files_load_without_pickle(dataset):
  index = json.loads((dataset / "index.json").read_text())
  assert index["format_version"] == 1 and index["steps"] == [0, 2, 4]
  assert index["metrics"] == ["test_error", "test_loss", "train_error", "train_loss"]
  n = index["num_params"]
  assert n == 64 * 4 + 4 + 4 * 10 + 10
  for shard in index["shards"]:
    with np.load(dataset / shard["file"], allow_pickle=False) as z:
      assert z["params"].shape == (2, 3, n) and z["params"].dtype == np.float32
      assert z["test_loss"].shape == (2, 3)
      assert z["run_ids"].tolist() == [r["run_id"] for r in shard["runs"]]
  data = load_dataset(dataset)
  assert data.params.shape == (4, 3, n) and data.run_ids.tolist() == [0, 1, 2, 3]
  assert np.all(data.metrics["test_loss"][:, 0] > 1.0)  # untrained nets
  # The first checkpoint is the scaled initialization of the task.
  task = tasks.get("digits_mlp", hidden=(4,))
  assert index["param_spec"] == param_spec(task.init(jax.random.key(0)))


def test_resume_is_deterministic(dataset, tmp_path):
  shard = dataset / "shard_00001.npz"
  before = np.load(shard, allow_pickle=False)["params"]
  copy = tmp_path / "copy"
  copy.mkdir()
  (copy / "index.json").write_text((dataset / "index.json").read_text())
  (copy / "shard_00000.npz").write_bytes((dataset / "shard_00000.npz").read_bytes())
  with pytest.raises(FileNotFoundError, match="incomplete"):
    load_dataset(copy)
  assert load_dataset(copy, allow_partial=True).num_runs == 2
  logs = []
  generate(copy, **{**ARGS, "log": logs.append})
  assert "1 of 2 shards already done" in logs[0] and len(logs) == 2
  np.testing.assert_array_equal(np.load(copy / "shard_00001.npz", allow_pickle=False)["params"],
                                before)


def test_errors(dataset, tmp_path):
  with pytest.raises(FileNotFoundError, match="meta_train.gpt.dataset"):
    load_dataset(tmp_path / "nope")
  with pytest.raises(ValueError, match="different settings"):
    generate(dataset, **{**ARGS, "seed": 4})
  with pytest.raises(ValueError, match="multiple"):
    generate(tmp_path / "x", **{**ARGS, "steps_per_run": 5})


def test_comma_separated_datasets_concatenate(dataset, tmp_path):
  import shutil

  other = tmp_path / "other"
  shutil.copytree(dataset, other)
  one, both = load_dataset(dataset), load_dataset(f"{dataset},{other}")
  assert both.params.shape == (8,) + one.params.shape[1:]
  np.testing.assert_array_equal(both.params[4:], one.params)
  assert both.run_ids.tolist() == [0, 1, 2, 3, 1_000_000, 1_000_001, 1_000_002, 1_000_003]
  assert len(both.index["datasets"]) == 2
  index = json.loads((other / "index.json").read_text())
  index["task_config"] = {"hidden": [5]}
  (other / "index.json").write_text(json.dumps(index))
  with pytest.raises(ValueError, match="task_config"):
    load_dataset(f"{dataset},{other}")


def test_permutation_augmentation_keeps_the_function():
  task = tasks.get("digits_mlp", hidden=(6, 5))
  params = task.init(jax.random.key(0))
  spec = param_spec(params)
  assert dense_stack(spec) is not None
  flat = np.concatenate([np.ravel(x) for x in jax.tree.leaves(params)])
  idx = permutation_index(spec, np.random.default_rng(0))
  assert sorted(idx.tolist()) == list(range(flat.size)) and not np.array_equal(idx, np.arange(
      flat.size))
  perm_flat = flat[idx]
  leaves = jax.tree.leaves(params)
  offsets = np.cumsum([0] + [x.size for x in leaves])
  permuted = jax.tree.unflatten(jax.tree.structure(params), [
      perm_flat[a:b].reshape(x.shape) for a, b, x in zip(offsets[:-1], offsets[1:], leaves)])
  x, _ = task.full_batch("test")
  np.testing.assert_allclose(np.asarray(task._logits(params, x[:8])),
                             np.asarray(task._logits(permuted, x[:8])), rtol=1e-5, atol=1e-5)
  # Not a dense stack: identity.
  other = [{"path": "w", "shape": [3, 3]}]
  np.testing.assert_array_equal(permutation_index(other, np.random.default_rng(0)), np.arange(9))


def test_sample_pairs_ordered():
  r, i, j = sample_pairs(np.random.default_rng(0), 5, 7, 200, p_from_init=0.5)
  assert np.all(i <= j) and np.all((0 <= r) & (r < 5)) and np.mean(i == 0) > 0.4


# --- runs that start from a G.pt model's own samples (--start_from) ---

#: The recorded settings of the tiny model (prompt, temperature, guidance).
TINY_EXTRA = {"target": 0.3, "sampling_temperature": 0.5, "guidance": 0.2}


def _flat(params):
  return np.concatenate([np.ravel(x) for x in jax.tree.leaves(params)])


@pytest.fixture(scope="module")
def tiny_gpt(tmp_path_factory):
  """A tiny G.pt of ARGS' task (untrained: its samples differ from their starts)."""
  task = tasks.get(ARGS["task"], **ARGS["task_config"])
  params = task.init(jax.random.key(0))
  model = GPT(param_spec(params), **TINY)
  flat = _flat(params)
  stats = model.compute_stats(np.stack([flat, 0.5 * flat])[None].repeat(3, 0),
                              np.asarray([[2.3, 0.5]] * 3, np.float32))
  net = model.init(jax.random.key(0))
  net["dec"]["kernel"] = 0.1 * jax.random.normal(jax.random.key(1), net["dec"]["kernel"].shape)
  path = tmp_path_factory.mktemp("gpt_start") / "w"
  info = {"name": task.name, "config": task.config()}
  lopt.gpt.save_gpt(path, model, net, stats, task=info, best_metric=0.1,
                    metric_range=(1e-3, 100.0), extra=TINY_EXTRA)
  return path


@pytest.fixture(scope="module")
def self_dataset(tiny_gpt, tmp_path_factory):
  out = tmp_path_factory.mktemp("gpt_self_data")
  generate(out, **ARGS, start_from=str(tiny_gpt))
  return out


def _scaled_init(index, run):
  """The raw scaled init of ``run`` and its key, as the dataset draws them."""
  task = tasks.get(index["task"], **index["task_config"])
  key = jax.random.fold_in(jax.random.key(index["seed"]), run["run_id"])
  k_init, _, k_eval = jax.random.split(key, 3)
  init = jax.tree.map(lambda p: p * run["init_scale"], task.init(k_init))
  return task, init, key, k_eval


def test_start_from_checkpoint0_is_the_models_sample(tiny_gpt, self_dataset):
  index = json.loads((self_dataset / "index.json").read_text())
  data = load_dataset(self_dataset)
  assert data.run_ids.tolist() == [0, 1, 2, 3]
  task = tasks.get(index["task"], **index["task_config"])
  # A direct call of the optimizer at the model's recorded settings.
  opt = lopt.get("gpt", weights=str(tiny_gpt), task=task)

  @jax.jit
  def one_update(init, key, loss):
    state = opt.init(init)._replace(
        key=jax.random.split(jax.random.fold_in(key, START_KEY_SALT))[0])
    updates, _ = opt.update(None, state, init, loss=loss)
    return optax.apply_updates(init, updates)

  for shard in index["shards"]:
    for run in shard["runs"]:
      task, init, key, k_eval = _scaled_init(index, run)
      loss = task.metrics(init, k_eval, task.eval_batch(k_eval, "test"))["loss"]
      sample = _flat(one_update(init, key, loss))
      got = data.params[run["run_id"], 0]
      np.testing.assert_allclose(got, sample, rtol=1e-5, atol=1e-5)
      assert np.abs(got - _flat(init)).max() > 1e-2  # not the raw init
  # The runs train from the sample on: later checkpoints move away from it.
  assert np.all(np.abs(data.params[:, 1] - data.params[:, 0]).max(axis=1) > 0)


def test_without_start_from_checkpoint0_is_the_raw_init(dataset):
  index = json.loads((dataset / "index.json").read_text())
  assert "start_from" not in index
  data = load_dataset(dataset)
  assert data.start_from is None
  for shard in index["shards"]:
    for run in shard["runs"]:
      _, init, _, _ = _scaled_init(index, run)
      # jit and eager draws of task.init differ in the last bit
      np.testing.assert_allclose(data.params[run["run_id"], 0], _flat(init), rtol=1e-6,
                                 atol=1e-7)


def test_index_records_start_from_and_loader_reads_old_and_new(tiny_gpt, self_dataset,
                                                                dataset):
  index = json.loads((self_dataset / "index.json").read_text())
  rec = index["start_from"]
  assert rec["weights"] == str(tiny_gpt)
  assert rec["digest"] == weights_digest(tiny_gpt) and len(rec["digest"]) == 64
  assert (rec["prompt"], rec["temperature"], rec["guidance"]) == (0.3, 0.5, 0.2)
  assert rec["metric"] == "test_loss" and rec["num_sampling_steps"] == 20
  new, old = load_dataset(self_dataset), load_dataset(dataset)
  assert new.start_from == rec and old.start_from is None
  both = load_dataset(f"{dataset},{self_dataset}")
  assert both.num_runs == 8 and both.start_from is None
  assert [d.get("start_from") for d in both.index["datasets"]] == [None, rec]
  # An explicit prompt is recorded (and only the prompt changes).
  task = tasks.get(ARGS["task"], **ARGS["task_config"])
  start = load_start_from(str(tiny_gpt), {"name": task.name, "config": task.config()},
                          metrics=index["metrics"], prompt=0.05)
  assert start.record == {**rec, "prompt": 0.05}


def test_start_from_errors(tiny_gpt, self_dataset, dataset, tmp_path):
  for bad in (tmp_path / "nope", tmp_path):  # missing; a directory without a manifest
    with pytest.raises(ValueError, match=f"start_from '{bad}' is not a G.pt weights"):
      generate(tmp_path / "out", **ARGS, start_from=str(bad))
  (tmp_path / "manifest.json").write_text(json.dumps({"format": "lopt/1", "name": "adam",
                                                      "config": {}}))
  with pytest.raises(ValueError, match="is not a G.pt weights directory.*not a G.pt"):
    generate(tmp_path / "out", **ARGS, start_from=str(tmp_path))
  with pytest.raises(ValueError, match=r"of task digits_mlp\(.*hidden=\[4\].*, not of the "
                     r"dataset's task \(--task, --task_config\) digits_mlp\(.*hidden=\[5\]"):
    generate(tmp_path / "out", **{**ARGS, "task_config": {"hidden": [5]}},
             start_from=str(tiny_gpt))
  assert not (tmp_path / "out").exists()  # refused before anything was written
  with pytest.raises(ValueError, match="start_prompt needs start_from"):
    generate(tmp_path / "out", **ARGS, start_prompt=0.1)
  # Resuming with another start_from is refused, both ways.
  with pytest.raises(ValueError, match="written with start_from none .raw inits., not '"):
    generate(dataset, **ARGS, start_from=str(tiny_gpt))
  with pytest.raises(ValueError, match=r"written with start_from '.*' \(sha256 \w{12}, prompt "
                     r"0.3\), not none \(raw inits\)"):
    generate(self_dataset, **ARGS)
  with pytest.raises(ValueError, match=r"prompt 0.3\), not '.*' \(sha256 \w{12}, prompt 0.05\)"):
    generate(self_dataset, **ARGS, start_from=str(tiny_gpt), start_prompt=0.05)


def _parse(args):
  fv = flags.FlagValues()
  define_flags(fv)
  fv(["prog", "--out=o", *args])
  return fv


def test_start_from_flags(tiny_gpt, tmp_path):
  fv = _parse(["--init_scale_min=0.25", "--init_scale_max=4"])
  assert (fv.init_scale_min, fv.init_scale_max, fv.start_from) == (0.25, 4.0, "")
  task = ['--task_config={"hidden": [4]}']
  fv = _parse([*task, f"--start_from={tiny_gpt}", "--start_prompt=0.2"])
  assert (fv.start_from, fv.start_prompt) == (str(tiny_gpt), 0.2)
  for args, expected in (
      ([f"--start_from={tmp_path / 'nope'}"], f"start_from '{tmp_path / 'nope'}' is not a G.pt"),
      ([f"--start_from={tiny_gpt}"], r"hidden: \[4\] vs \[32\]"),
      ([*task, "--start_prompt=0.2"], "--start_prompt needs --start_from")):
    with pytest.raises(flags.IllegalFlagValueError, match=expected):
      _parse(args)


def test_lr_ranges_flag_sets_the_plans_learning_rates(tmp_path, monkeypatch):
  fv = _parse(["--optimizers=adam,lion", "--lr_ranges=adam:1e-4:2e-4,lion:1e-3:1e-3"])
  calls = []
  monkeypatch.setattr(dataset_cli, "generate", lambda out, **kw: calls.append(kw))
  monkeypatch.setattr(dataset_cli.flags, "FLAGS", fv)
  dataset_cli.main(["prog"])
  assert calls[0]["lr_ranges"] == {"adam": (1e-4, 2e-4), "lion": (1e-3, 1e-3)}
  shards = dataset_cli._plan(4, 1, ["adam", "lion"], 0, (1.0, 1.0), calls[0]["lr_ranges"])
  lrs = [(s["optimizer"], s["runs"][0]["learning_rate"]) for s in shards]
  assert all(1e-4 <= lr <= 2e-4 for o, lr in lrs if o == "adam")
  assert [lr for o, lr in lrs if o == "lion"] == pytest.approx([1e-3, 1e-3])
  for args, expected in (
      (["--lr_ranges=adam:1e-3"], "'adam:1e-3' is not optimizer:min:max"),
      (["--lr_ranges=adam:1e-2:1e-3"], "must satisfy 0 < min <= max"),
      (["--lr_ranges=adamm:1e-3:1e-2"], "unknown optimizer 'adamm'; known: adafac_mlp_lopt"),
      (["--optimizers=lion"], "no learning-rate range for optimizer 'lion'")):
    with pytest.raises(flags.IllegalFlagValueError, match=expected):
      _parse(args)
