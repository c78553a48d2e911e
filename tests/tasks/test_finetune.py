"""Fine-tuning tasks: pretrained init, target transforms, few-shot subsets, family, CLI."""

import contextlib
import io
import json
import pathlib
import tomllib

import jax
import numpy as np
import pytest
from absl import flags

import tasks
from tasks import _digit_variants, _pretrain
from tasks import pretrain as pretrain_cli

ROOT = pathlib.Path(__file__).resolve().parents[2]
TINY_LM = {"dim": 8, "heads": 1, "layers": 1, "seq_len": 8, "batch_size": 4,
           "eval_batch_size": 8}


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
  """Checkpoints trained for 3 steps: the digits MLP with seed 0 (``tasks.pretrain_model``)
  and seed 1 (the command line; one compile for both), and an untrained tiny char LM.

  The MLP compiles several times faster than the CNN; the shipped CNN checkpoints are
  covered by the registry's contract tests.
  """
  root = tmp_path_factory.mktemp("pretrained")
  made = {0: tasks.pretrain_model("digits_mlp", "digits_0to4", seed=0, steps=3)}
  tasks.save_pretrained(tasks.pretrained_path("digits_mlp", "digits_0to4", 0, root), made[0])
  fv = flags.FlagValues()
  pretrain_cli.define_flags(fv)
  fv(["pretrain", "--model=digits_mlp", "--seed=1", "--steps=3", f"--out={root}"])
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    pretrain_cli.run_from_flags(fv)
  made["cli_output"] = out.getvalue()
  # The LM's pretraining is not what is tested here: save random parameters of its
  # shapes, drawn with NumPy (an eager flax init compiles many small programs).
  lm = _pretrain.source_task("char_lm", "sklearn_descr", TINY_LM)
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: rng.normal(0, 0.1, s.shape).astype(s.dtype),
                        jax.eval_shape(lm.init, jax.random.key(0)))
  made["lm"] = tasks.Pretrained(params, {
      "format": _pretrain.FORMAT, "model": "char_lm", "task": "char_lm", "config": lm.config(),
      "source": "sklearn_descr", "seed": 0, "steps": 0})
  tasks.save_pretrained(tasks.pretrained_path("char_lm", "sklearn_descr", 0, root), made["lm"])
  return root, made


def _mlp(root, **kw):
  """A fine-tuning task of the fixture's digits MLP."""
  return tasks.FineTuneDigits("digits_mlp", pretrained_dir=root, **kw)


def _leaves_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_init_is_the_pretrained_backbone_and_a_fresh_head_for_new_labels(pretrained):
  root, made = pretrained
  m = made[0].manifest
  assert (m["model"], m["task"], m["source"], m["seed"], m["steps"]) == (
      "digits_mlp", "digits_mlp", "digits_0to4", 0, 3)
  assert m["config"]["hidden"] == [64, 32] and np.isfinite(m["test_loss"] + m["train_loss"])
  loaded = tasks.load_pretrained(tasks.pretrained_path("digits_mlp", "digits_0to4", 0, root))
  _leaves_equal(loaded.params, made[0].params)   # saved and read back exactly
  same = _mlp(root, classes=None, transform="rotate90")
  assert not same.new_head and same.classes == (0, 1, 2, 3, 4)
  _leaves_equal(same.init(jax.random.key(7)), made[0].params)
  new = _mlp(root, classes=(5, 6, 7, 8, 9))
  assert new.new_head and new.head == "Dense_2"
  p1, p2 = new.init(jax.random.key(1)), new.init(jax.random.key(2))
  for p in (p1, p2):
    _leaves_equal({k: v for k, v in p.items() if k != "Dense_2"},
                  {k: v for k, v in made[0].params.items() if k != "Dense_2"})
  assert not np.allclose(p1["Dense_2"]["kernel"], p2["Dense_2"]["kernel"])
  assert not np.allclose(p1["Dense_2"]["kernel"], made[0].params["Dense_2"]["kernel"])
  ten = _mlp(root, classes=range(10))
  assert ten.init(jax.random.key(0))["Dense_2"]["kernel"].shape == (32, 10)
  noisy = _mlp(root, classes=None, init_noise=0.01)
  diff = np.asarray(noisy.init(jax.random.key(0))["Dense_0"]["kernel"]
                    - made[0].params["Dense_0"]["kernel"])
  assert 0 < np.abs(diff).max() < 0.1
  # Evaluation on the whole test split; the loss scale is at least chance's.
  x, y = new.eval_batch(None)
  assert x.shape[0] == np.isin(np.asarray(tasks.digits().test_y), [5, 6, 7, 8, 9]).sum()
  assert np.log(5) <= new.loss_scale < np.inf and ten.loss_scale >= np.log(10)


def test_char_lm_init_and_corpus_slice(pretrained):
  root, made = pretrained
  task = tasks.FineTuneLM(length=5000, start=100, batch_size=4, eval_batch_size=8,
                          pretrained_dir=root)
  assert task.dim == 8 and task.seq_len == 8 and task.corpus == "python_stdlib"
  _leaves_equal(task.init(jax.random.key(3)), made["lm"].params)
  text = tasks.embedded_text("python_stdlib")[100:5100]
  np.testing.assert_array_equal(task._splits["train"], text[:4500])
  np.testing.assert_array_equal(task._splits["test"], text[4500:])
  with pytest.raises(ValueError, match="test split"):
    tasks.FineTuneLM(length=50, pretrained_dir=root)


def test_transforms_do_what_they_say():
  img = np.zeros((1, 8, 8, 1), np.float32)
  img[0, 0, 0, 0] = 1.0  # top-left pixel
  rot = tasks.transform_images("rotate90", img)
  assert rot[0, 7, 0, 0] == 1.0 and rot.sum() == 1.0  # counterclockwise: to the bottom-left
  assert tasks.transform_images("rotate180", img)[0, 7, 7, 0] == 1.0
  assert tasks.transform_images("shift1", img)[0, 1, 1, 0] == 1.0
  assert tasks.transform_images("shift2", img)[0, 2, 2, 0] == 1.0
  np.testing.assert_array_equal(tasks.transform_images("invert", img), 1.0 - img)
  # 30 degrees turns the same way as 90: a pixel right of the centre moves up.
  dot = np.zeros((1, 9, 9, 1), np.float32)
  dot[0, 4, 8, 0] = 1.0
  r30 = tasks.transform_images("rotate30", dot)[0, ..., 0]
  row, col = np.unravel_index(np.argmax(r30), r30.shape)
  assert row < 4 and col > 4
  plain, x = tasks.digits_variant(), np.asarray(tasks.digits().train_x)
  np.testing.assert_array_equal(tasks.digits_variant(transform="rotate90").train_x,
                                np.rot90(np.asarray(plain.train_x), 1, axes=(1, 2)))
  np.testing.assert_array_equal(tasks.digits_variant(transform="invert").test_x,
                                1.0 - np.asarray(plain.test_x))
  noisy = tasks.transform_images("noise", x)
  np.testing.assert_array_equal(noisy, tasks.transform_images("noise", x))  # fixed
  assert noisy.min() >= 0 and noisy.max() <= 1
  assert 0.1 < np.std(noisy - x) < 0.25
  np.testing.assert_array_equal(tasks.transform_images("invert+noise", x),
                                tasks.transform_images("noise", 1.0 - x))
  with pytest.raises(KeyError, match="valid: .*rotate90"):
    tasks.digits_variant(transform="rotate45")


def test_class_subsets_and_few_shot_subsets():
  full = tasks.digits()
  data = tasks.digits_variant((5, 6, 7, 8, 9))
  keep = np.isin(np.asarray(full.train_y), [5, 6, 7, 8, 9])
  np.testing.assert_array_equal(data.train_x, np.asarray(full.train_x)[keep])
  np.testing.assert_array_equal(data.train_y, np.asarray(full.train_y)[keep] - 5)
  assert data.num_classes == 5
  few = tasks.digits_variant((0, 1, 2), "none", shots=4, shot_seed=3)
  assert few.train_x.shape == (12, 8, 8, 1)
  np.testing.assert_array_equal(np.bincount(np.asarray(few.train_y)), [4, 4, 4])
  np.testing.assert_array_equal(few.test_y, tasks.digits_variant((0, 1, 2)).test_y)
  # Deterministic (recomputed, not the cached arrays), and another seed picks others.
  _digit_variants._variant.cache_clear()
  again = tasks.digits_variant((0, 1, 2), "none", shots=4, shot_seed=3)
  np.testing.assert_array_equal(few.train_x, again.train_x)
  other = tasks.digits_variant((0, 1, 2), "none", shots=4, shot_seed=4)
  assert not np.array_equal(few.train_x, other.train_x)
  with pytest.raises(ValueError, match="shots=1000"):
    tasks.digits_variant((0,), shots=1000)
  with pytest.raises(ValueError, match="distinct digits"):
    tasks.digits_variant((1, 1))


def test_family_samples_members_and_keeps_held_out_targets_out(pretrained):
  root, _ = pretrained
  spec = tasks.get_family("finetune_digits", backbone="digits_mlp", pretrained_dir=root)
  held = tasks.get_family("finetune_digits_held_out", backbone="digits_mlp", pretrained_dir=root)
  assert not set(tasks.SPECIALIZATION_TARGETS) & set(tasks.HELD_OUT_TARGETS)
  assert set(tasks.SPECIALIZATION_TARGETS) | set(tasks.HELD_OUT_TARGETS) == set(
      tasks.FINETUNE_TARGETS) - {"classes_0to9"}   # another tree (a 10-class head)
  spec_cfgs = {json.dumps(c, sort_keys=True) for c in spec.configs()}
  held_cfgs = {json.dumps(c, sort_keys=True) for c in held.configs()}
  all_cfgs = tasks.finetune_configs("all", backbone="digits_mlp", pretrained_dir=root)
  assert not spec_cfgs & held_cfgs and len(spec_cfgs | held_cfgs) == len(all_cfgs)
  cfgs = [spec.sample(k) for k in jax.random.split(jax.random.key(0), 6)]
  assert len({json.dumps(c, sort_keys=True) for c in cfgs}) > 1
  assert all(json.dumps(c, sort_keys=True) in spec_cfgs for c in cfgs)
  task = spec.task(cfgs[0])
  assert spec.contains(task) and not held.contains(task)
  rotated = _mlp(root, classes=None, transform="rotate90")
  assert spec.contains(rotated)
  for outside in (_mlp(root, classes=None, transform="rotate180"),
                  _mlp(root, classes=None, transform="rotate90", pretrain_seed=1)):
    assert not spec.contains(outside) and held.contains(outside)
  shipped = tasks.FineTuneDigits("digits_mlp", classes=None, transform="rotate90")
  assert not spec.contains(shipped)  # another checkpoint directory
  with pytest.raises(ValueError, match="valid: specialization, held_out, all"):
    tasks.finetune_configs("test")


def test_missing_checkpoint_names_the_pretraining_command(tmp_path):
  with pytest.raises(FileNotFoundError, match=(
      "python -m tasks.pretrain --model=digits_cnn --source=digits_0to4 --seed=2 "
      f"--out={tmp_path}")):
    tasks.FineTuneDigits(pretrain_seed=2, pretrained_dir=tmp_path)
  with pytest.raises(FileNotFoundError, match="--model=char_lm --source=sklearn_descr"):
    tasks.get("finetune_char_lm", pretrained_dir=str(tmp_path))
  with pytest.raises(ValueError, match="valid: digits_cnn, digits_mlp"):
    tasks.FineTuneDigits(backbone="char_lm", pretrained_dir=tmp_path)


def test_config_round_trips_through_the_registry(pretrained):
  root, _ = pretrained
  for name, cfg in [("finetune_digits", dict(backbone="digits_mlp", classes=(0, 2, 4, 6, 8),
                                             transform="shift1+noise",
                                             shots=3, shot_seed=1, init_noise=0.01)),
                    ("finetune_char_lm", dict(length=20_000, batch_size=4))]:
    task = tasks.get(name, pretrained_dir=root, **cfg)
    config = json.loads(json.dumps(task.config()))
    assert tasks.get(name, **config).config() == task.config()
    assert config["pretrained_dir"] == str(root)


def test_shipped_checkpoints_exist_and_are_package_data():
  for model, source, seed in _pretrain.SHIPPED:
    manifest = json.loads((tasks.pretrained_path(model, source, seed) / "manifest.json")
                          .read_text())
    assert (manifest["model"], manifest["source"], manifest["seed"]) == (model, source, seed)
  package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
      "package-data"]
  assert "pretrained/**/*" in package_data["tasks"]


@pytest.mark.parametrize("args, expected", [
    (["--model=resnet"], "unknown model 'resnet'; valid: digits_cnn, digits_mlp, char_lm"),
    (["--model=digits_cnn", "--source=python_stdlib"],
     "unknown source 'python_stdlib' for model 'digits_cnn'; valid: digits_0to4"),
    (["--model=char_lm", "--source=digits_0to4"], "valid: sklearn_descr, python_stdlib"),
    (["--seed=-1"], "not a non-negative integer|-1 is not"),
    (["--steps=0"], "0 is not a positive integer"),
    (["--learning_rate=0"], "learning_rate must be > 0"),
    (["--out="], "--out must name a directory"),
])
def test_pretrain_cli_rejects_bad_flags(args, expected):
  fv = flags.FlagValues()
  pretrain_cli.define_flags(fv)
  with pytest.raises(flags.IllegalFlagValueError, match=expected):
    fv(["pretrain", *args])


def test_pretrain_cli_writes_a_checkpoint(pretrained):
  root, made = pretrained
  path = root / "digits_mlp_digits_0to4_seed1"
  assert made["cli_output"].startswith(f"{path}: 3 steps in ")
  manifest = json.loads((path / "manifest.json").read_text())
  assert (manifest["seed"], manifest["steps"], manifest["config"]["hidden"]) == (1, 3, [64, 32])
  seed0 = tasks.load_pretrained(tasks.pretrained_path("digits_mlp", "digits_0to4", 0, root))
  seed1 = tasks.load_pretrained(path)
  assert not np.allclose(seed0.params["Dense_0"]["kernel"], seed1.params["Dense_0"]["kernel"])
