"""No silent misuse of a G.pt model: its task, its start-loss range, any naming of its tree."""

import json
import shutil
import warnings

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lopt
import tasks
from lopt.gpt import GPTWarning, TaskMismatchError
from tests.lopt.gpt_tiny import TINY_TASK

SHIPPED_TASK = tasks.get("digits_mlp", hidden=(32,))


@pytest.fixture(scope="module")
def shipped():
  return lopt.gpt.load_gpt(lopt.gpt.pretrained_gpt_path())


@pytest.fixture(scope="module")
def ranged(tiny_weights, tmp_path_factory):
  """The tiny model with a recorded start-metric range of [1, 3]."""
  path, params = tiny_weights
  dst = tmp_path_factory.mktemp("ranged") / "w"
  shutil.copytree(path, dst)
  man = json.loads((dst / "manifest.json").read_text())
  man["metric_range"] = [1.0, 3.0]
  (dst / "manifest.json").write_text(json.dumps(man))
  return dst, params


def test_shipped_manifest_names_dataset_architecture_and_activation(shipped):
  t = lopt.gpt.trained_for()
  assert t == shipped.trained_for == lopt.gpt.trained_for(shipped)
  assert t["name"] == "digits_mlp"
  assert {k: t["config"][k] for k in ("dataset", "hidden", "activation", "layer_norm")} == {
      "dataset": "digits", "hidden": [32], "activation": "relu", "layer_norm": False}
  assert tasks.get(t["name"], **t["config"]).config() == t["config"]  # rebuilds the task
  lo, hi = shipped.manifest["metric_range"]
  assert lo == shipped.manifest["best_metric"] and 2.5 < hi < 10   # init losses are ~2.3


def test_another_task_is_refused_naming_both_unless_allowed(shipped):
  tanh = tasks.get("digits_mlp", hidden=(32,), activation="tanh")  # same shapes
  with pytest.raises(TaskMismatchError, match=r"trained for task digits_mlp\(dataset='digits'"
                                              r".*not digits_mlp.*activation: 'relu' vs 'tanh'"):
    lopt.get("gpt", weights=shipped, task=tanh)
  with pytest.raises(ValueError, match="allow_other_task=True"):   # a ValueError
    lopt.get("gpt", weights=shipped, task=tanh)
  permuted = tasks.from_functions(SHIPPED_TASK.init, SHIPPED_TASK.loss, SHIPPED_TASK.batch,
                                  name="permuted_digits")
  with pytest.raises(TaskMismatchError, match="name 'digits_mlp' vs 'permuted_digits'"):
    lopt.get("gpt", weights=shipped, task=permuted)
  with pytest.raises(TaskMismatchError, match="dataset: 'digits' vs not given"):
    lopt.get("gpt", weights=shipped, task={"name": "digits_mlp", "config": {"hidden": [32]}})
  with pytest.warns(GPTWarning, match="activation: 'relu' vs 'tanh'.*allow_other_task"):
    lopt.get("gpt", weights=shipped, task=tanh, allow_other_task=True)
  with pytest.raises(TypeError, match="task= must be a task"):
    lopt.get("gpt", weights=shipped, task="digits_mlp")


def test_its_own_task_passes_silently_and_no_task_warns(shipped):
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    lopt.get("gpt", weights=shipped, task=SHIPPED_TASK)
    lopt.get("gpt", weights=shipped, task=tasks.get("digits_mlp", hidden=[32], batch_size=64))
    lopt.get("gpt", weights=shipped, task=lopt.gpt.trained_for())
    lopt.get("gpt", weights=shipped, allow_other_task=True)   # the user's explicit opt-out
  with pytest.warns(GPTWarning, match=r"trained for task digits_mlp\(.*activation='relu'.*"
                                      r"cannot check"):
    lopt.get("gpt", weights=shipped)


def test_start_loss_outside_the_training_range_warns_on_the_first_update(ranged):
  path, params = ranged
  opt = lopt.get("gpt", weights=str(path), task=TINY_TASK, num_sampling_steps=1)
  state = opt.init(params)
  with pytest.warns(GPTWarning, match=r"starting test_loss loss=50 is outside .*1 \.\. 3"):
    _, after = opt.update(params, state, params, loss=50.0)            # eager: host check
  update = jax.jit(opt.update)                                         # jit: device flag

  def run(st, loss):
    jax.block_until_ready(update(params, st, params, loss=jnp.float32(loss)))
    jax.effects_barrier()                                              # the callback is done

  with pytest.warns(GPTWarning, match=r"loss=0\.01 is outside"):
    run(state, 0.01)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    run(state, 2.0)                                                    # inside
    run(state, 3.2)                                                    # inside the margin
    run(after, 50.0)                                                   # not the first update
    run(state, np.nan)                                                 # skipped, not flagged


def test_without_a_recorded_range_it_is_derived_from_the_stats(tiny_weights):
  path, params = tiny_weights    # stats from test losses 1 and 3: log-mean +- 3 std
  assert lopt.gpt.read_gpt_manifest(path)["metric_range"] is None
  opt = lopt.get("gpt", weights=str(path), task=TINY_TASK, num_sampling_steps=1)
  update = jax.jit(opt.update)
  state = opt.init(params)
  with pytest.warns(GPTWarning, match="outside"):
    update(params, state, params, loss=jnp.float32(1000.0))
    jax.effects_barrier()
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    update(params, state, params, loss=jnp.float32(5.0))
    jax.effects_barrier()


def test_missing_or_malformed_loss_is_a_clear_error(tiny_weights):
  path, params = tiny_weights
  opt = lopt.get("gpt", weights=str(path), task=TINY_TASK, num_sampling_steps=1)
  state = opt.init(params)
  with pytest.raises(ValueError, match=r"needs loss=, the current test_loss of params.*"
                                       r"optimizer.update\(model, grads, loss=loss\)"):
    opt.update(params, state, params)
  with pytest.raises(ValueError, match=r"one scalar.*shape \(3,\)"):
    opt.update(params, state, params, loss=jnp.ones(3))
  with pytest.raises(ValueError, match="metric_range"):
    lopt.gpt.save_gpt(path.parent / "bad", None, {}, {}, metric_range=(3.0, 1.0))


class _Hidden(nnx.Module):
  """The shipped model's MLP in Flax nnx: ``hidden`` and ``out``, not linen's ``Dense_k``."""

  def __init__(self, rngs, first="hidden", last="out"):
    setattr(self, first, nnx.Linear(64, 32, rngs=rngs))
    setattr(self, last, nnx.Linear(32, 10, rngs=rngs))


def test_nnx_names_fit_by_structure_and_a_mismatch_names_the_first_leaf(shipped):
  tok = shipped.model.tokenizer
  assert [s["path"] for s in tok.spec][:2] == ["Dense_0/bias", "Dense_0/kernel"]
  params = nnx.state(_Hidden(nnx.Rngs(0)), nnx.Param)
  opt = lopt.get("gpt", weights=shipped, task=SHIPPED_TASK)
  assert int(opt.init(params).count) == 0
  flat = tok.flatten(params)
  back = tok.unflatten(flat, like=params)
  assert jax.tree.structure(back) == jax.tree.structure(params)
  np.testing.assert_array_equal(np.asarray(tok.flatten(back)), np.asarray(flat))
  # The same shapes, but "classifier" sorts before "dense": refused, with a hint.
  swapped = nnx.state(_Hidden(nnx.Rngs(0), first="dense", last="classifier"), nnx.Param)
  with pytest.raises(ValueError, match=r"leaf 'classifier/bias.*\(10,\) where the model expects "
                                       r"'Dense_0/bias' with shape \(32,\).*another order"):
    opt.init(swapped)
  wide = {"hidden": {"bias": jnp.zeros(33), "kernel": jnp.zeros((64, 33))},
          "out": {"bias": jnp.zeros(10), "kernel": jnp.zeros((33, 10))}}
  with pytest.raises(ValueError, match=r"'hidden/bias' with shape \(33,\).*digits_mlp\(") as e:
    opt.init(wide)
  assert "another order" not in str(e.value)
