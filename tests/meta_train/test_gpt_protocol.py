"""The G.pt evaluation protocol: medians against medians at every step, aligned novelty,
disjoint seeds, init schemes, and settings fixed on validation before any test figure."""

import json
import math

import jax
import numpy as np
import pytest
from absl import flags

import lopt
from lopt.gpt import GPT
from meta_train.gpt import protocol, protocol_return
from meta_train.gpt._align import UnitLayout, aligned_distance, nearest_aligned, pairwise_aligned
from meta_train.gpt._context import ProtocolContext
from meta_train.gpt._inits import (
  INIT_KEY_SEED,
  INIT_SCHEMES,
  check_disjoint,
  check_scheme,
  init_ids,
  scheme_inits,
)
from meta_train.gpt._measures import alignment_r2, median_summary
from meta_train.gpt._pairs import permutation_index
from meta_train.gpt._zeng import aligned_stack, dominated

LRS = tuple(float(v) for v in np.geomspace(1e-3, 0.3, 15))


def test_steps_are_counted_on_the_median_curve_at_every_step():
  # Three inits: two reach 0.1 at step 7, one never leaves 10. The mean curve never gets
  # to 0.5; the median does at step 7 (not rounded to a multiple of 5).
  steps = np.arange(11)
  fast = np.where(steps >= 7, 0.1, 2.0)
  curves = np.stack([fast, fast, np.full(11, 10.0)])[None]
  assert curves.mean(1).min() > 0.5
  s = median_summary(curves, (0.01,), 0.5, at=5)
  assert s["steps_to_match"] == 7 and s["median_at"] == 2.0
  # A rate whose mean curve falls early (one lucky init) but whose median stays high loses
  # to a rate whose median falls: the best rate at step 5 is chosen on the median.
  lucky = np.stack([np.full(11, 0.0), np.full(11, 0.8), np.full(11, 0.8)])
  steady = np.full((3, 11), 0.6)
  s = median_summary(np.stack([lucky, steady]), (0.1, 0.2), 0.55, at=5)
  assert lucky.mean(0)[5] < steady.mean(0)[5]
  assert s["best_lr_at"] == 0.2 and s["median_at"] == pytest.approx(0.6)
  assert s["steps_to_match"] == "> 10" and s["best_lr_on_grid_edge"]


def test_alignment_r2_pooled_low_and_log():
  p = np.asarray([[0.1, 0.3, 2.0, 4.0], [0.1, 0.3, 2.0, 4.0]])
  r = alignment_r2(p, p.copy(), low_max=0.5)
  assert r["pooled"] == pytest.approx(1.0) and r["low"] == pytest.approx(1.0)
  assert r["log"] == pytest.approx(1.0) and r["num_low"] == 4
  off = p + np.asarray([0.2, 0.2, 0.0, 0.0])  # low prompts missed by a constant
  r = alignment_r2(p, off, low_max=0.5)
  assert r["pooled"] > 0.9 and r["low"] < 0 and r["log"] < r["pooled"]


def _spec(widths):
  """The ``param_spec`` of a dense stack with layer widths ``widths`` (input first)."""
  return [row for k, (a, b) in enumerate(zip(widths, widths[1:]))
          for row in ({"path": f"Dense_{k}/bias", "shape": [b]},
                      {"path": f"Dense_{k}/kernel", "shape": [a, b]})]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  """An untrained tiny G.pt for digits_mlp with hidden=(4,), and its protocol context."""
  weights = _tiny_model(tmp_path_factory.mktemp("gpt_protocol"))
  return weights, ProtocolContext(str(weights), num_sampling_steps=SMALL["num_sampling_steps"])


@pytest.mark.parametrize("widths", [(64, 8, 10), (64, 6, 5, 10)])
def test_permutation_alignment(widths):
  spec = _spec(widths)
  layout, rng = UnitLayout(spec), np.random.default_rng(0)
  a = rng.normal(size=layout.num_params).astype(np.float32)
  b = a[permutation_index(spec, rng)]  # the same network, hidden units permuted
  assert np.linalg.norm(a - b) > 1.0
  assert aligned_distance(a, b, layout) == pytest.approx(0.0, abs=1e-5)
  c = rng.normal(size=layout.num_params).astype(np.float32)
  assert aligned_distance(a, c, layout) > 1.0
  assert aligned_distance(a, c, layout) <= np.linalg.norm(a - c) + 1e-5
  # The nearest training checkpoint is found under permutation; pairwise diversity too.
  bank = np.stack([c, a, c + 1.0]).astype(np.float32)
  dist, idx = nearest_aligned(np.stack([b, a + 0.01]), bank, layout, num_candidates=1)
  assert idx.tolist() == [1, 1] and dist[0] == pytest.approx(0.0, abs=1e-4)
  assert pairwise_aligned(np.stack([a, b, c]), layout)[0] == pytest.approx(0.0, abs=1e-5)
  # An aligned average of a network and its permutation is the network.
  np.testing.assert_allclose(aligned_stack(np.stack([a, b]), layout).mean(0), a, atol=1e-5)
  with pytest.raises(ValueError, match="dense layers"):
    UnitLayout(spec[:2])


def test_test_seeds_are_disjoint_from_validation_and_training():
  val, test = init_ids("validation", 1000), init_ids("test", 1000)
  assert not set(val) & set(test)
  index = {"datasets": [{"seed": 0, "shards": [{"runs": [{"run_id": i} for i in range(4096)]}]},
                        {"seed": 1, "shards": [{"runs": [{"run_id": 5}]}]}]}
  check_disjoint(index, val, test)
  bad = {"seed": 0, "shards": [{"runs": [{"run_id": int(test[3])}]}]}
  with pytest.raises(ValueError, match="training runs"):
    check_disjoint(bad, val, test)
  with pytest.raises(ValueError, match="share"):
    check_disjoint(index, val, val[:2])
  with pytest.raises(ValueError, match="unknown split"):
    init_ids("train", 3)


def test_init_schemes(tiny):
  task = tiny[1].task
  ids = init_ids("test", SMALL["num_inits"])  # the end-to-end test's inits: one compilation
  draw = {s: scheme_inits(task, s, ids, init_scale_range=(0.5, 2.0)) for s in INIT_SCHEMES}
  like = task.init(jax.random.key(0))
  for s, p in draw.items():
    assert jax.tree.structure(p) == jax.tree.structure(like), s
    for x, y in zip(jax.tree.leaves(p), jax.tree.leaves(like)):
      assert x.shape == (len(ids), *y.shape) and np.isfinite(x).all(), s
  k = lambda p: np.asarray(p["Dense_0"]["kernel"])  # noqa: E731
  # "train" is drawn like dataset run n of seed INIT_KEY_SEED, times a factor in the range.
  base = task.init(jax.random.split(jax.random.fold_in(jax.random.key(INIT_KEY_SEED),
                                                       int(ids[0])), 3)[0])
  factor = k(draw["train"])[0] / np.asarray(base["Dense_0"]["kernel"])
  assert np.allclose(factor, factor.flat[0], rtol=1e-4) and 0.5 <= factor.flat[0] <= 2.0
  for s in (0.25, 0.5, 2, 4):
    np.testing.assert_allclose(k(draw[f"scale:{s:g}"]), s * k(draw["train"]), rtol=1e-6)
    assert k(draw[f"scale:{s:g}"]).std() == pytest.approx(s * k(draw["train"]).std(), rel=1e-5)
  w = k(draw["orthogonal"])[0]  # (64, 4): orthonormal columns
  np.testing.assert_allclose(w.T @ w, np.eye(4), atol=1e-5)
  fan = 64
  assert np.abs(k(draw["uniform"])).max() <= math.sqrt(3 / fan)
  assert k(draw["uniform"]).std() == pytest.approx(math.sqrt(1 / fan), rel=0.1)
  torch = draw["torch_default"]
  assert np.abs(k(torch)).max() <= 1 / math.sqrt(fan)
  assert np.abs(np.asarray(torch["Dense_0"]["bias"])).max() <= 1 / math.sqrt(fan)
  assert np.abs(np.asarray(torch["Dense_1"]["bias"])).max() <= 1 / math.sqrt(4)
  assert np.asarray(torch["Dense_0"]["bias"]).std() > 0
  assert not np.asarray(draw["uniform"]["Dense_0"]["bias"]).any()
  with pytest.raises(ValueError, match="valid: train, orthogonal, uniform, torch_default"):
    check_scheme("gaussian")
  with pytest.raises(ValueError, match="unknown init scheme 'scale:-1'"):
    check_scheme("scale:-1")


def test_noise_dominance():
  noise = {"0.1": {"distance": 1.0, "metric": 0.2}, "1": {"distance": 10.0, "metric": 2.0}}
  assert dominated(noise, 5.5, 0.5)["dominated"] is False
  assert dominated(noise, 5.5, 2.0)["dominated"] is True
  assert dominated(noise, 20.0, 0.5)["dominated"] is None


def _tiny_model(root):
  """A synthetic checkpoint dataset of digits_mlp (hidden=(4,)) and an untrained tiny G.pt."""
  spec = _spec((64, 4, 10))
  n = sum(int(np.prod(s["shape"])) for s in spec)
  rng = np.random.default_rng(0)
  runs, ckpts = 8, 3
  params = (rng.normal(size=(runs, 1, n)) * 0.3 * np.linspace(1.0, 0.5, ckpts)[None, :, None])
  loss = np.linspace(2.3, 0.3, ckpts)[None].repeat(runs, 0) + 0.05 * np.arange(runs)[:, None]
  data = root / "data"
  data.mkdir()
  np.savez(data / "shard_00000.npz", params=params.astype(np.float32),
           run_ids=np.arange(runs, dtype=np.int32), test_loss=loss.astype(np.float32),
           train_loss=loss.astype(np.float32))
  (data / "index.json").write_text(json.dumps({
      "format_version": 1, "task": "digits_mlp", "task_config": {"hidden": [4]},
      "param_spec": spec, "num_params": n, "steps": [0, 1, 2],
      "metrics": ["test_loss", "train_loss"], "seed": 0, "init_scale_range": [0.5, 2.0],
      "shards": [{"file": "shard_00000.npz", "optimizer": "adam",
                  "runs": [{"run_id": i} for i in range(runs)]}]}))
  gpt = GPT(spec, chunk_size=16, d_model=16, num_layers=1, num_heads=2, num_timesteps=20,
            layout="neuron")
  stats = gpt.compute_stats(params.astype(np.float32), loss.astype(np.float32))
  net = gpt.init(jax.random.key(0))
  net["dec"]["kernel"] = 0.1 * jax.random.normal(jax.random.key(1), net["dec"]["kernel"].shape)
  weights = root / "weights"
  lopt.gpt.save_gpt(weights, gpt, net, stats, best_metric=0.3,
                    task={"name": "digits_mlp", "config": {"hidden": [4]}},
                    extra={"dataset": str(data), "heldout_run_ids": [7]})
  return weights


SMALL = dict(num_inits=4, num_validation_inits=4, schemes=("train", "scale:2"), repeats=2,
             adam_lrs=LRS, adam_ceiling=6, adam_at=3, num_align_nets=2, num_prompts=3,
             num_sampling_steps=2, ensemble_sizes=(2,), noise_fractions=(0.1, 1.0), num_good=4,
             num_candidates=2)


@pytest.fixture(scope="module")
def chosen(tiny, tmp_path_factory):
  """The tiny model's settings file, chosen on validation inits: its path and document."""
  weights, ctx = tiny
  path = tmp_path_factory.mktemp("gpt_protocol_settings") / "settings.json"
  doc = protocol.choose_settings(str(weights), str(path), temperatures=(0.0,),
                                 target_fractions=(0.0, 0.5), guidances=(0.5,), **SMALL,
                                 log=lambda msg: None, context=ctx)
  return path, doc


def _record_inits(ctx, monkeypatch):
  """Makes ``ctx.inits`` record the ids of every call; returns the list of them."""
  drawn, inits = [], ctx.inits
  monkeypatch.setattr(ctx, "inits", lambda scheme, ids: drawn.append(np.asarray(ids))
                      or inits(scheme, ids))
  return drawn


def test_settings_fixed_on_validation_before_any_test_figure(tiny, chosen, tmp_path,
                                                             monkeypatch):
  weights, ctx = tiny
  path, doc = chosen
  quiet = dict(log=lambda msg: None, context=ctx)  # one loaded model: fewer compilations
  with pytest.raises(FileNotFoundError, match="settings fixed on validation"):
    protocol.evaluate_protocol(str(tmp_path / "none.json"), str(tmp_path / "out"), **quiet)
  s = doc["settings"]
  assert json.loads(path.read_text()) == doc and doc["created_utc"].endswith("+00:00")
  assert set(doc["selection"]["by_guidance"]) == {"0", "0.5"}
  assert s["guidance"] == doc["selection"]["chosen"]["guidance"]
  assert doc["ids"]["test"][0] == int(init_ids("test", 1)[0])
  with pytest.raises(FileExistsError, match="written once"):
    protocol.choose_settings(str(weights), str(path), **SMALL, **quiet)
  with pytest.raises(ValueError, match="num_inits: given 8, file 4"):
    protocol.evaluate_protocol(str(path), str(tmp_path / "out"), num_inits=8, **quiet)
  drawn = _record_inits(ctx, monkeypatch)
  rep = protocol.evaluate_protocol(str(path), str(tmp_path / "out"), num_inits=4, **quiet)
  test = init_ids("test", SMALL["num_inits"])
  assert drawn and all(np.array_equal(ids, test) for ids in drawn)  # the default split: test
  assert rep["split"] == "test" and rep["ids"] == doc["ids"]["test"]
  assert rep["settings_created_utc"] == doc["created_utc"] <= rep["test_started_utc"]
  assert doc["created_utc"] in (tmp_path / "out" / "report.md").read_text()
  for name in ("train", "scale:2"):
    r = rep["schemes"][name]
    assert len(r["gpt_median"]) == 3 and len(r["adam_median_curve_best_lr"]) == 7
    assert r["adam"]["best_lr_at"] in LRS and np.isfinite(r["novelty"]["nearest_ratio"])
  assert rep["compute"]["adam_steps_per_update"] > 0
  assert set(rep["prompt_alignment"]["r2"]) >= {"pooled", "low", "log", "per_net_mean"}
  assert set(rep["baselines"]["ensembles"]["2"]) == {"metric", "unaligned_metric"}
  assert len(rep["targets"]) == 6
  # Other weights than those the settings were chosen for are refused.
  (weights / "state" / "extra_file").write_text("x")
  try:
    with pytest.raises(ValueError, match="not those the settings file"):
      protocol.evaluate_protocol(str(path), str(tmp_path / "out2"), **quiet)
  finally:
    (weights / "state" / "extra_file").unlink()


def test_split_validation_draws_validation_ids_only(tiny, chosen, tmp_path, monkeypatch):
  weights, ctx = tiny
  path, doc = chosen
  quiet = dict(log=lambda msg: None, context=ctx)
  drawn = _record_inits(ctx, monkeypatch)
  with pytest.raises(ValueError, match="unknown split 'train'; valid: validation, test"):
    protocol.evaluate_protocol(str(path), str(tmp_path / "out"), split="train", **quiet)
  (tmp_path / "test_out").mkdir()  # a test report is not overwritten by a validation one
  (tmp_path / "test_out" / "report.json").write_text(json.dumps({"schemes": {}}))
  with pytest.raises(ValueError, match="report of another split"):
    protocol.evaluate_protocol(str(path), str(tmp_path / "test_out"), split="validation",
                               **quiet)
  assert not drawn
  out = tmp_path / "val_out"
  rep = protocol.evaluate_protocol(str(path), str(out), split="validation", **quiet)
  val = init_ids("validation", SMALL["num_validation_inits"])
  assert drawn and all(np.array_equal(ids, val) for ids in drawn)  # no test id is drawn
  # The ids the settings were chosen on, recorded in the report and said in its title.
  assert rep["split"] == "validation" and rep["ids"] == doc["ids"]["validation"]
  assert json.loads((out / "report.json").read_text())["split"] == "validation"
  md = (out / "report.md").read_text()
  assert md.splitlines()[0].endswith(
      "on VALIDATION inits (for model selection; not a test figure)")
  assert "4 validation inits per scheme" in md and "test inits" not in md
  assert set(rep["schemes"]) == {"train", "scale:2"}
  assert all(len(r["gpt_median"]) == 3 for r in rep["schemes"].values())
  assert set(rep["prompt_alignment"]["r2"]) >= {"pooled", "low", "log"}


@pytest.mark.parametrize("module, step", [(protocol, "evaluate_protocol"),
                                          (protocol_return, "evaluate_return_protocol")])
def test_split_flag_reaches_the_test_step(module, step, tmp_path, monkeypatch):
  calls = []
  monkeypatch.setattr(module, step, lambda *a, **kw: calls.append(kw))
  for args in ([], ["--split=validation"]):
    fv = flags.FlagValues()
    module.define_flags(fv)
    fv(["prog", f"--settings={tmp_path / 's.json'}", *args])
    module.main(["prog"], fv)
  assert [kw["split"] for kw in calls] == ["test", "validation"]
  fv = flags.FlagValues()
  module.define_flags(fv)
  fv(["prog", f"--settings={tmp_path / 's.json'}", "--validation_only", "--split=validation"])
  with pytest.raises(SystemExit, match="--split is a test-step flag"):
    module.main(["prog"], fv)
  with pytest.raises(flags.IllegalFlagValueError, match="split=train"):
    fv2 = flags.FlagValues()
    module.define_flags(fv2)
    fv2(["prog", "--settings=s.json", "--split=train"])


@pytest.mark.parametrize("args, expected", [
    (["--schemes=train,gaussian"], "unknown init scheme 'gaussian'; valid: train"),
    (["--adam_lrs=0.1,0.2"], "adam_lrs needs >= 15 values"),
    (["--adam_at=300"], "adam_at must be below --adam_ceiling"),
    (["--num_inits=0"], "num_inits=0"),
    (["--schemes=train", "--novelty_schemes=scale:2"], "novelty_schemes must be among"),
    (["--split=train"], "split=train: value should be one of <validation|test>"),
])
def test_bad_flags_stop_at_parsing(args, expected):
  fv = flags.FlagValues()
  protocol.define_flags(fv)
  with pytest.raises(flags.IllegalFlagValueError, match=expected):
    fv(["prog", "--settings=s.json", *args])


def test_test_step_refuses_validation_flags_and_a_missing_file(tmp_path):
  fv = flags.FlagValues()
  protocol.define_flags(fv)
  fv(["prog", f"--settings={tmp_path / 'none.json'}", "--temperature=0"])
  with pytest.raises(SystemExit, match="validation setting"):
    protocol.main(["prog"], fv)
  fv = flags.FlagValues()
  protocol.define_flags(fv)
  fv(["prog", f"--settings={tmp_path / 'none.json'}"])
  with pytest.raises(SystemExit, match="no protocol settings file"):
    protocol.main(["prog"], fv)
