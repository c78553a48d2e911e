"""The shipped CartPole G.pt (prompted on return): found by task, one update, refusals."""

import jax
import numpy as np
import optax
import pytest

import lopt
import tasks

#: The task the shipped model was trained for, as its manifest records it.
CONFIG = {"env_name": "CartPole-v1", "hidden": [8], "horizon": 500}


@pytest.fixture(scope="module")
def cartpole():
  return tasks.get("cartpole", **CONFIG, batch_size=8, eval_batch_size=8)


def test_pretrained_with_a_task_is_the_model_trained_for_it(cartpole):
  assert lopt.gpt.pretrained_gpt_path(task=cartpole).name == "gpt_cartpole"
  assert lopt.gpt.pretrained_gpt_path().name == "gpt_digits_mlp"   # no task: unchanged
  t = lopt.gpt.trained_for(lopt.gpt.pretrained_gpt_path(task=cartpole))
  assert t["name"] == "cartpole" and {k: t["config"][k] for k in CONFIG} == CONFIG
  m = lopt.gpt.read_gpt_manifest(lopt.gpt.pretrained_gpt_path(task=cartpole))
  assert m["config"]["metric"] == "test_return" and m["config"]["log_metric"] is False
  assert m["best_metric"] == pytest.approx(500.0) and m["metric_range"][1] == 500.0
  # The defaults the return protocol chose on validation inits (its settings file).
  assert {k: m["extra"][k] for k in ("target", "sampling_temperature", "guidance")} == {
      "target": 500.0, "sampling_temperature": 0.0, "guidance": 0.5}


def test_one_update_from_a_random_policy_raises_its_return(cartpole):
  opt = lopt.get("gpt", weights="pretrained", task=cartpole)
  params = cartpole.init(jax.random.key(3))
  batch = cartpole.eval_batch(jax.random.key(4))
  ret = jax.jit(lambda p: cartpole.metrics(p, None, batch)["return"])  # 8 episodes
  before = float(ret(params))
  updates, state = jax.jit(opt.update)(params, opt.init(params), params, loss=before)
  new = optax.apply_updates(params, updates)
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(new))
  after = float(ret(new))
  assert int(state.count) == 1 and after > before + 100, (before, after)


def test_refuses_other_tasks(cartpole):
  path = lopt.gpt.pretrained_gpt_path(task=cartpole)
  with pytest.raises(lopt.gpt.TaskMismatchError, match="cartpole"):
    lopt.get("gpt", weights=path, task=tasks.get("digits_mlp", hidden=(32,)))
  with pytest.raises(lopt.gpt.TaskMismatchError, match="hidden"):
    lopt.get("gpt", weights="pretrained", task={"name": "cartpole",
                                                "config": {**CONFIG, "hidden": [16]}})
  # The digits model stays what "pretrained" means for the digits task.
  with pytest.raises(lopt.gpt.TaskMismatchError, match="digits_mlp"):
    lopt.get("gpt", weights=lopt.gpt.pretrained_gpt_path(), task=cartpole)


def test_shipped_weights_are_those_the_protocol_evaluated():
  """The shipped model is the one whose settings file and test report are in docs/."""
  import json
  import pathlib

  from meta_train.gpt._protocol import weights_digest
  docs = pathlib.Path(__file__).resolve().parents[2] / "docs" / "results" / "gpt"
  doc = json.loads((docs / "cartpole_v2_protocol_settings.json").read_text())
  path = lopt.gpt.pretrained_gpt_path(task={"name": "cartpole", "config": CONFIG})
  assert weights_digest(path) == doc["settings"]["weights_sha256"]
  extra = lopt.gpt.read_gpt_manifest(path)["extra"]
  assert (extra["sampling_temperature"], extra["guidance"], extra["target"]) == (
      doc["settings"]["temperature"], doc["settings"]["guidance"], doc["settings"]["target"])
