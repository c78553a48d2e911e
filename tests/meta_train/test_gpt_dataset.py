"""G.pt checkpoint datasets: format (no pickle), determinism, resume, errors, augmentation."""

import json

import jax
import numpy as np
import pytest

import tasks
from lopt.gpt import dense_stack, param_spec
from meta_train.gpt._data import load_dataset
from meta_train.gpt._pairs import permutation_index, sample_pairs
from meta_train.gpt.dataset import generate

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
