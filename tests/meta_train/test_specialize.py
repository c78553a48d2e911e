"""Specializing layerwise_combo_lopt to one pretrained model: run, export, resume, refuse, CLI."""

import importlib
import json
import os
import shutil

import jax
import numpy as np
import pytest
from absl import flags

import lopt
import meta_train
import tasks
from meta_train._run import ConfigMismatch, WorkdirLocked, _acquire_lock

cli = importlib.import_module("meta_train.specialize")
TARGETS = ["rotate90"]   # one target: one compiled group (each target compiles its own)
SMALL = {"horizon": 4, "num_tasks": 2, "checkpoint_every": 1}


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
  """The digits MLP pretrained for 3 steps, saved where the fine-tuning tasks look for it."""
  root = tmp_path_factory.mktemp("pretrained")
  pre = tasks.pretrain_model("digits_mlp", "digits_0to4", seed=0, steps=3)
  return tasks.save_pretrained(tasks.pretrained_path("digits_mlp", "digits_0to4", 0, root), pre)


@pytest.fixture(scope="module")
def run(pretrained, tmp_path_factory):
  """A 2-outer-step specialization (one device), and what its callback saw."""
  workdir = tmp_path_factory.mktemp("spec") / "run"
  seen = []
  result = meta_train.specialize(pretrained=str(pretrained), targets=TARGETS, workdir=workdir,
                                 outer_steps=2, devices=jax.devices()[:1],
                                 callback=lambda s, m: seen.append(s), **SMALL)
  return result, workdir, seen


def test_exports_weights_whose_manifest_names_model_targets_and_command(run, pretrained):
  result, workdir, seen = run
  assert seen == [1, 2] and result.train.step == 2 and result.weights == workdir / "weights"
  m = json.loads((result.weights / "manifest.json").read_text())
  assert m["name"] == "layerwise_combo_lopt" and m["config"]["num_layers"] == 6
  spec = m["extra"]["specialized_to"]
  assert (spec["checkpoint"], spec["backbone"], spec["source"], spec["seed"]) == (
      str(pretrained), "digits_mlp", "digits_0to4", 0)
  assert spec["backbone_config"]["hidden"] == [64, 32] and spec["num_tensors"] == 6
  assert spec["param_tree"] == m["config"]["param_tree"]
  assert spec["param_tree"][0] == ["['Dense_0']['bias']", [64]]
  assert list(m["extra"]["targets"]) == TARGETS
  assert m["extra"]["targets"]["rotate90"]["transform"] == "rotate90"
  assert m["extra"]["command"].startswith("meta_train.specialize(pretrained=")
  config = json.loads((workdir / "config.json").read_text())
  assert config["task_family"] == f"specialize[{pretrained}: rotate90]"
  assert config["unroll"]["trunc_length"] == config["unroll"]["max_horizon"] == 4
  assert (config["estimator"]["name"], config["num_configs"]) == ("es", 1)
  jax.tree.map(np.testing.assert_array_equal, lopt.load_weights(result.weights, result.lo),
               result.train.meta_params)


def test_one_group_per_target_and_one_parameter_tree(pretrained, tmp_path):
  family = meta_train.TargetFamily("f", {"a": None, "b": None, "c": None})
  assert [c["target"] for c in family.group_configs(jax.random.key(0), 4)] == ["a", "b", "c", "a"]
  five = tasks.FineTuneDigits("digits_mlp", pretrained_dir=pretrained.parent)
  ten = tasks.FineTuneDigits("digits_mlp", classes=tuple(range(10)),
                             pretrained_dir=pretrained.parent)
  with pytest.raises(ValueError, match=r"must share one parameter tree: target 'five' and "
                                       r"target 'ten' differ at \['Dense_2'\]\['bias'\]"):
    meta_train.specialize(pretrained="my model", targets={"five": five, "ten": ten},
                          workdir=tmp_path / "w")
  assert not (tmp_path / "w").exists()


def test_rerun_resumes_and_other_settings_or_a_second_process_are_refused(run, pretrained):
  _, workdir, _ = run
  seen = []
  result = meta_train.specialize(pretrained=str(pretrained), targets=TARGETS, workdir=workdir,
                                 outer_steps=2, devices=jax.devices()[:1],
                                 callback=lambda s, m: seen.append(s), **SMALL)
  assert seen == [] and result.train.step == 2   # both steps came from the checkpoint
  rows = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == [1, 2]
  with pytest.raises(ConfigMismatch, match="task_family"):
    meta_train.specialize(pretrained=str(pretrained), targets=["shift1"], workdir=workdir,
                          outer_steps=2, devices=jax.devices()[:1], **SMALL)
  fd = _acquire_lock(workdir / "run.lock")   # another live run holds the workdir
  try:
    with pytest.raises(WorkdirLocked, match="in use by another run"):
      meta_train.specialize(pretrained=str(pretrained), targets=TARGETS, workdir=workdir,
                            outer_steps=2, devices=jax.devices()[:1], **SMALL)
  finally:
    os.close(fd)


def test_weights_run_on_the_model_and_refuse_another_tree(run, pretrained):
  result, _, _ = run
  task = tasks.FineTuneDigits("digits_mlp", classes=None, transform="invert",
                              pretrained_dir=pretrained.parent)
  opt = lopt.get("layerwise_combo_lopt", weights=str(result.weights), num_steps=5)
  losses = tasks.train(task, opt, 5, jax.random.key(0)).losses
  assert np.all(np.isfinite(losses))
  ten = tasks.FineTuneDigits("digits_mlp", classes=tuple(range(10)),
                             pretrained_dir=pretrained.parent)
  with pytest.raises(ValueError, match=r"specialized to another model: tensor 4 of 6 has "
                                       r"another shape: expected \['Dense_2'\]\['bias'\] "
                                       r"\(5,\), got \['Dense_2'\]\['bias'\] \(10,\)"):
    opt.init(ten.init(jax.random.key(0)))
  with pytest.raises(ValueError, match=r"expected 6 tensors \(the model it was specialized "
                                       r"to\), got 1"):
    opt.init({"w": np.zeros(3, np.float32)})


def _parse(args):
  fv = flags.FlagValues()
  cli.define_flags(fv)
  fv(["prog", *args])
  return fv


@pytest.mark.parametrize("args, expected", [
    (["--pretrained=nope"], "unknown pretrained model 'nope'.*shipped backbone: digits_cnn, "
     "digits_mlp"),
    (["--pretrained=/no/such/dir"], "no pretrained checkpoint at /no/such/dir"),
    (["--targets=rotate90,bogus"], "unknown target 'bogus'; valid: classes_5to9, rotate90"),
    (["--targets=rotate90,rotate90"], "give distinct target names"),
    (["--targets=classes_5to9,classes_0to9"], "must share one parameter tree.*classes_0to9: 10"),
    (["--horizon=0"], "flag --horizon=0: 0 is not a positive integer"),
    (["--num_tasks=-1"], "flag --num_tasks=-1"),
    (["--sigma=0"], "flag --sigma=0.0: sigma must be > 0"),
    (["--init_lr=-1"], "init_lr must be > 0"),
    (["--horizon=50", "--max_horizon=120", "--estimator=pes"], "multiple of horizon=50"),
    (["--horizon=50", "--max_horizon=100"], "need estimator='pes'"),
    (["--estimator=sgd"], "value should be one of <es|pes>"),
    (["--directions=sgd,muon"], "directions must be distinct names of"),
    (["--schedule=linear"], "value should be one of <constant|cosine>"),
    (["--meta_loss_split=valid"], "value should be one of <test|train>"),
])
def test_bad_flags_are_one_line_errors(args, expected):
  with pytest.raises(flags.IllegalFlagValueError, match=expected) as e:
    _parse(["--pretrained=digits_mlp", "--workdir=w", *args])
  assert "\n" not in str(e.value)


def test_misnamed_checkpoint_is_refused(pretrained, tmp_path):
  shutil.copy(pretrained / "manifest.json", tmp_path / "manifest.json")
  with pytest.raises(flags.IllegalFlagValueError,
                     match="must be named 'digits_mlp_digits_0to4_seed0'"):
    _parse([f"--pretrained={tmp_path}", "--workdir=w"])


def test_flags_give_the_call_and_the_module_stays_callable(monkeypatch):
  fv = _parse(["--pretrained=digits_mlp", "--workdir=w", "--targets=invert", "--horizon=7"])
  got = {}
  monkeypatch.setattr(cli, "specialize", lambda **kw: got.update(kw))
  cli.run_from_flags(fv)
  assert (got["pretrained"], got["targets"], got["horizon"]) == ("digits_mlp", ["invert"], 7)
  assert (got["max_horizon"], got["estimator"]) == (None, "es")
  assert got["directions"] == list(lopt.BASE_DIRECTIONS) and got["schedule"] == "constant"
  assert got["meta_loss_split"] == "test"
  fv = _parse(["--pretrained=digits_mlp", "--workdir=w", "--meta_loss_split=train"])
  cli.run_from_flags(fv)
  assert got["meta_loss_split"] == "train"
  assert callable(meta_train.specialize)   # the package attribute, now this module


def test_mixed_horizons_unroll_truncations_of_one_horizon_with_pes():
  """--max_horizon: runs of K, 2K, ... steps, truncations of K, PES; the default is one run."""
  kw = dict(family_name="f", param_tree=(("w", (3,)),), num_targets=2, outer_steps=4,
            num_tasks=2, seed=0, sigma=0.1, learning_rate=0.01, init_lr=0.01, hidden_size=4,
            checkpoint_every=2)
  mixed = meta_train._specialize.specialize_config(horizon=50, max_horizon=150,
                                                   estimator="pes", **kw)
  u = mixed.unroll
  assert (u.trunc_length, u.min_horizon, u.max_horizon, u.horizon_aware) == (50, 50, 150, True)
  assert (u.min_truncs, u.max_truncs, mixed.estimator.name) == (1, 3, "pes")
  whole = meta_train._specialize.specialize_config(horizon=100, **kw).unroll
  assert (whole.trunc_length, whole.min_horizon, whole.max_horizon) == (100, 100, 100)
  with pytest.raises(ValueError, match="need estimator='pes'"):
    meta_train._specialize.specialize_config(horizon=50, max_horizon=100, **kw)
  # directions: recorded only when not the default four (older runs resume unchanged)
  assert "directions" not in meta_train._specialize.specialize_config(
      horizon=100, directions=list(lopt.BASE_DIRECTIONS), **kw).lopt_config
  orth = meta_train._specialize.specialize_config(
      horizon=100, directions=[*lopt.BASE_DIRECTIONS, "orth"], **kw)
  assert orth.lopt_config["directions"] == (*lopt.BASE_DIRECTIONS, "orth")
  assert "schedule" not in orth.lopt_config   # likewise the schedule
  cos = meta_train._specialize.specialize_config(horizon=100, schedule="cosine", **kw)
  assert cos.lopt_config["schedule"] == "cosine"
  # the meta-loss: the targets' test batch by default, or the training batch
  assert (cos.unroll.meta_loss_split, whole.meta_loss_split) == ("test", "test")
  train = meta_train._specialize.specialize_config(horizon=100, meta_loss_split="train", **kw)
  assert train.unroll.meta_loss_split == "train"
  with pytest.raises(ValueError, match="meta_loss_split must be 'train' or 'test'"):
    meta_train._specialize.specialize_config(horizon=100, meta_loss_split="valid", **kw)
