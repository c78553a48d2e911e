"""End to end: the vmapped runs, run_benchmark, its files, and the command line."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl import flags

import benchmarks
import lopt
import tasks
from benchmarks import run as run_cli

TINY = benchmarks.SuiteTask("quad", "quadratic", {"dim": 4, "condition": 10.0}, 25)
GRIDS = {"adam": np.array([1e-2, 3e-1, 1e30]), "momentum": np.array([1e-2, 1e-1])}


def test_vmapped_runs_match_tasks_train():
  task = TINY.build()
  keys = jax.random.split(jax.random.key(3), 2)
  runs = benchmarks.train_runs(task, lopt.get("momentum"), 25, keys, every=5)
  assert runs.losses.shape == (2, 25)
  ref = tasks.train(task, lopt.get("momentum"), 25, keys[1])
  np.testing.assert_allclose(runs.losses[1], ref.losses, rtol=1e-5)
  # Test metrics on the step grid: the last point is the final parameters' test loss.
  np.testing.assert_array_equal(runs.test_steps, [5, 10, 15, 20, 25])
  final = tasks.evaluate(task, jax.tree.map(lambda a: a[1], runs.params), jax.random.key(1))
  assert runs.test["loss"][1, -1] == pytest.approx(final["loss"], rel=1e-5)
  grid = benchmarks.grid_runs(task, lambda lr: optax.adam(lr), np.array([1e-2, 1e-1]), 25, keys)
  assert grid.losses.shape == (2, 2, 25) and grid.num_runs == 4
  ref = tasks.train(task, optax.adam(1e-1), 25, keys[1])
  # The traced learning rate is a float32 array: agreement to float32 rounding.
  np.testing.assert_allclose(grid.losses[1, 1], ref.losses, rtol=1e-4)
  assert benchmarks.eval_every(1000, 25) == 40 and benchmarks.eval_every(53, 25) == 1
  secs = benchmarks.time_per_step(task, {"sgd": lopt.get("sgd"), "adam": lopt.get("adam")},
                                  keys[0], block=5, rounds=2, min_seconds=0.001)
  assert set(secs) == {"sgd", "adam"} and all(s > 0 for s in secs.values())


@pytest.fixture(scope="module")
def results():
  # 1e30 makes Adam overflow: a diverged learning rate must be counted, not crash.
  return benchmarks.run_benchmark(
      ["sgd", "lion(learning_rate=3e-4)", "celo2_lopt:pretrained", "celo2_lopt:fresh"], [TINY],
      num_seeds=2, learning_rates=GRIDS, time_rounds=2, eval_points=5, verbose=False)


def test_run_benchmark_rows_and_speedups(results):
  t = results["tasks"]["quad"]
  assert t["baseline_steps"] == 100 and t["eval_every"] == 5
  adam = t["baselines"]["adam"]
  assert len(adam["envelope_full"]) == 100 and adam["test_steps"][-1] == 100
  assert adam["best_learning_rate"] == pytest.approx(0.3)
  assert adam["diverged_by_lr"][2] == 2 and adam["final_loss_by_lr"][2] is None
  rows = t["optimizers"]
  assert list(rows)[:2] == ["adam (tuned)", "momentum (tuned)"]
  assert rows["adam (tuned)"]["tuned"] and not rows["sgd"]["tuned"]
  assert rows["lion(learning_rate=3e-4)"]["settings"] == "learning_rate=0.0003"
  # Adam's own row is the envelope at its best rate: a speedup of at most 1.
  assert rows["adam (tuned)"]["speedup_steps"] <= 1.0
  for name, r in rows.items():
    assert len(r["speedup_steps_per_seed"]) == 2 and r["final_loss"] is not None, name
    assert len(r["test_curve"]["loss"]) == 5 and r["test_steps"][-1] == 25
    assert r["test"]["loss"] == pytest.approx(r["test_curve"]["loss"][-1], rel=1e-4)
    ratio = r["reference_seconds_per_step"] / r["seconds_per_step"]
    assert r["speedup_wallclock"] == pytest.approx(r["speedup_steps"] * ratio)
    # The step speedup is what the 4x envelope needs for the final loss, over 25 steps.
    env = np.array([np.inf if v is None else v for v in adam["envelope_full"]])
    s, lower = benchmarks.horizon_speedup(r["final_loss"], env, 25)
    assert r["speedup_steps"] == pytest.approx(float(s), rel=1e-6, abs=0.04), name
  s = results["summary"]
  assert s["adam (tuned)"]["tuned"] and not s["sgd"]["tuned"]
  for kind in ("steps", "test", "wallclock"):
    lo, hi = s["sgd"][kind]["ci95"]
    assert lo <= s["sgd"][kind]["iqm"] <= hi
  gain = results["meta_training"]["celo2_lopt:pretrained vs celo2_lopt:fresh"]
  pre = np.array(rows["celo2_lopt:pretrained"]["speedup_steps_per_seed"])
  fresh = np.array(rows["celo2_lopt:fresh"]["speedup_steps_per_seed"])
  assert gain["steps"]["iqm"] == pytest.approx(benchmarks.iqm(pre / fresh))


def test_files_markdown_and_reuse(results, tmp_path, capsys):
  paths = benchmarks.save_results(results, tmp_path)
  loaded = json.loads(paths["json"].read_text())
  assert loaded["tasks"]["quad"]["baselines"]["adam"]["learning_rates"][2] == 1e30
  md = paths["markdown"].read_text()
  assert "| sgd | no |" in md and "| adam (tuned) | tuned |" in md and "### quad" in md
  assert "Did meta-training help?" in md and "Rows marked *tuned*" in md
  assert sorted(p.name for p in paths["plots"]) == ["curves_quad.png", "speedup.png"]
  assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths["plots"])

  # Adding an optimizer reuses the baselines and every row whose weights are unchanged.
  more = benchmarks.run_benchmark(["momentum"], [TINY], num_seeds=2, learning_rates=GRIDS,
                                  time_rounds=2, eval_points=5, reuse=loaded)
  t2 = more["tasks"]["quad"]
  assert t2["baselines"] == loaded["tasks"]["quad"]["baselines"]
  for name in ("sgd", "celo2_lopt:pretrained", "adam (tuned)"):
    assert t2["optimizers"][name] == loaded["tasks"]["quad"]["optimizers"][name]
  assert "momentum" in t2["optimizers"]
  assert "adam grid (reused)" in capsys.readouterr().out
  with pytest.raises(ValueError, match="num_seeds"):
    benchmarks.run_benchmark(["momentum"], [TINY], num_seeds=3, learning_rates=GRIDS,
                             reuse=loaded)

  # A resumed run saves after every task; the reused file's tasks it has not reached yet
  # ride along ("pending_tasks"), so cutting it off there loses nothing already saved.
  other = benchmarks.SuiteTask("quad2", "quadratic", {"dim": 3, "condition": 5.0}, 25)
  saved = []
  benchmarks.run_benchmark([], [other, TINY], num_seeds=2, learning_rates=GRIDS, time_rounds=2,
                           eval_points=5, verbose=False, reuse=loaded,
                           on_task_done=lambda r: saved.append(json.loads(json.dumps(r))))
  assert saved[0]["pending_tasks"] == {"quad": loaded["tasks"]["quad"]}
  assert "pending_tasks" not in saved[1] and set(saved[1]["tasks"]) == {"quad", "quad2"}
  capsys.readouterr()
  again = benchmarks.run_benchmark([], [TINY], num_seeds=2, learning_rates=GRIDS,
                                   time_rounds=2, eval_points=5, reuse=saved[0])
  assert again["tasks"]["quad"]["baselines"] == loaded["tasks"]["quad"]["baselines"]
  assert "quad: adam grid (reused)" in capsys.readouterr().out
  with pytest.raises(ValueError, match="protocol version 1"):
    benchmarks.run_benchmark(["momentum"], [TINY], reuse={"config": {}})


def test_command_line_and_flag_errors(tmp_path, capsys):
  argv = ["run", "--optimizers=sgd(learning_rate=0.05)", "--tasks=quadratic_tiny", "--steps=10",
          "--seeds=1", "--num_lrs=2", "--lr_min=0.01", "--lr_max=0.1", "--tune=adam",
          "--baseline_horizon_mult=2", "--time_rounds=1", f"--out={tmp_path}"]
  fv = flags.FlagValues()
  run_cli.define_flags(fv)
  fv(argv)
  run_cli.run_from_flags(fv)
  out = capsys.readouterr().out
  assert "| sgd(learning_rate=0.05) | no |" in out and str(tmp_path) in out
  results = json.loads((tmp_path / "results.json").read_text())
  assert results["config"]["learning_rates"] == {"adam": [0.01, 0.1]}
  assert results["config"]["command"].startswith("python -m benchmarks.run --optimizers=sgd")
  assert (tmp_path / "curves_quadratic_tiny.png").exists()
  bad = {"--optimizers=adamm": "did you mean 'adam'", "--tasks=nosuch": "valid|suites",
         "--lr_min=-1": "non-negative", "--num_lrs=3": "give all of",
         "--tune=celo2_lopt": "only hand-designed", "--optimizers=celo2_lopt:/no/dir": "not found",
         "--reuse=/no/file.json": "no such file", "--baseline_horizon_mult=0": "positive"}
  for arg, match in bad.items():
    fv = flags.FlagValues()
    run_cli.define_flags(fv)
    with pytest.raises(flags.Error, match=match):
      fv(["run", arg])


def test_specs():
  s = benchmarks.parse_spec("sgd(learning_rate=0.1, momentum=0.9)")
  assert (s.name, s.weights, s.kwargs) == ("sgd", None, {"learning_rate": 0.1, "momentum": 0.9})
  for arg in ("unknown", "'unknown'"):   # unquoted, as typed on a command line, or quoted
    s = benchmarks.parse_spec(f"celo2_lopt:pretrained(num_steps={arg})")
    assert (s.name, s.weights, s.kwargs) == ("celo2_lopt", "pretrained",
                                             {"num_steps": lopt.UNKNOWN_HORIZON})
  assert benchmarks.split_specs("sgd(learning_rate=0.1,momentum=0.9),celo2_lopt:fresh") == [
      "sgd(learning_rate=0.1,momentum=0.9)", "celo2_lopt:fresh"]
  for bad, match in {"sgd(0.1)": "keyword", "sgd:pretrained": "takes no weights",
                     "sgd(learning_rate=x)": "literal", "1sgd": "malformed",
                     "celo2_lopt:fresh(num_steps=0)": "must be a positive int"}.items():
    with pytest.raises(ValueError, match=match):
      benchmarks.parse_spec(bad)
  with pytest.raises(ValueError, match="unbalanced"):
    benchmarks.split_specs("sgd(learning_rate=0.1")
  with pytest.raises(KeyError, match="valid names"):
    benchmarks.run_benchmark(["no_such_opt"], [TINY])
  with pytest.raises(ValueError, match="cannot be built"):
    benchmarks.run_benchmark(["sgd(learning_rat=0.1)"], [TINY])
  with pytest.raises(KeyError, match="only hand-designed"):
    benchmarks.run_benchmark(["sgd"], [TINY], tune=["celo2_lopt"])
  assert len(benchmarks.tune_grid("adam")) == 13      # 1e-4..1 at 3 per decade


def test_a_horizon_free_spec_builds_and_steps():
  """``num_steps=unknown`` reaches the optimizer as the string, not the benchmark's horizon."""
  text = "celo2_lopt:pretrained(num_steps=unknown)"
  assert lopt.has_pretrained("celo2_lopt")
  params = {"w": jnp.ones((4, 3)), "b": jnp.zeros((3,))}
  grads = jax.tree.map(lambda x: 0.1 * x + 0.05, params)

  def first_update(tx):
    return tx.update(grads, tx.init(params), params, loss=1.0)[0]

  free = first_update(benchmarks.build_optimizer(text, 50))
  assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(free))
  ref = first_update(lopt.get("celo2_lopt", weights="pretrained", num_steps="unknown"))
  jax.tree.map(np.testing.assert_array_equal, free, ref)
  with pytest.raises(ValueError, match="depends on the training horizon"):
    benchmarks.build_optimizer("celo2_lopt:fresh(num_steps=None)", 50)


def test_a_task_object_is_a_suite_entry():
  def loss(params, key, batch):
    del key
    return jnp.mean((batch[0] @ params["w"] - batch[1]) ** 2)

  x = jax.random.normal(jax.random.key(0), (64, 3))
  y = x @ jnp.array([1.0, -2.0, 0.5])
  mine = tasks.from_functions(lambda key: {"w": jnp.zeros(3)}, loss,
                              lambda key, split: (x, y), name="linreg")
  entry = benchmarks.SuiteTask("mine", mine, {}, 10)
  assert entry.build() is mine and entry.task_name == "linreg"
  r = benchmarks.run_benchmark(["sgd"], [entry], tune=["adam"], num_seeds=1, time_rounds=1,
                               learning_rates=np.array([0.1]), verbose=False)
  assert r["tasks"]["mine"]["optimizers"]["sgd"]["final_loss"] < float(loss({"w": jnp.zeros(3)},
                                                                          None, (x, y)))


def test_optimizer_tied_to_another_architecture_is_not_applicable():
  from benchmarks._benchmark import not_applicable_reason

  expected = {"x": np.zeros(3, np.float32)}
  base = optax.sgd(0.1)

  def init(params):  # like G.pt: only one parameter tree is accepted
    lopt.check_trees(params, expected, "params", "the model's parameters")
    return base.init(params)

  tied = optax.GradientTransformationExtraArgs(init, base.update)
  key = jax.random.key(0)
  assert not_applicable_reason(tied, tasks.get("quadratic", dim=3), key) is None
  why = not_applicable_reason(tied, tasks.get("quadratic", dim=5), key)
  assert "shape" in why


@pytest.mark.slow  # ~25 s: compiles G.pt's sampler inside the training scan
def test_gpt_runs_on_its_architecture_and_is_not_applicable_elsewhere(tmp_path, capsys):
  # An untrained, tiny G.pt model for the 4-d quadratic's parameter tree.
  from lopt.gpt import GPT, param_spec

  task4 = benchmarks.SuiteTask("quad4", "quadratic", {"dim": 4}, 6)
  task5 = benchmarks.SuiteTask("quad5", "quadratic", {"dim": 5}, 6)
  params = task4.build().init(jax.random.key(0))
  gpt = GPT(param_spec(params), chunk_size=4, d_model=8, num_layers=1, num_heads=2,
            num_timesteps=20)
  flat = np.asarray(gpt.tokenizer.flatten(params))
  stats = gpt.compute_stats(np.stack([flat, 0.5 * flat])[None].repeat(2, axis=0),
                            np.asarray([[3.0, 1.0]] * 2, np.float32))
  lopt.gpt.save_gpt(tmp_path / "w", gpt, gpt.init(jax.random.key(1)), stats, best_metric=0.1,
                    task={"name": "quadratic", "config": {"dim": 4}},
                    metric_range=(0.1, 50.0))   # the quadratic's start losses (~15)
  spec = f"gpt:{tmp_path / 'w'}"
  results = benchmarks.run_benchmark([spec], [task4, task5], num_seeds=1, tune=["adam"],
                                     learning_rates=np.array([0.1]), time_rounds=1)
  assert spec in results["tasks"]["quad4"]["optimizers"]
  assert spec in results["tasks"]["quad5"]["not_applicable"]
  assert results["summary"][spec]["num_tasks"] == 1
  assert "n/a" in benchmarks.markdown(results)
  assert f"note: {spec} does not apply to quad5" in capsys.readouterr().out


def test_beats_tuned_adam_counts_lower_bounds():
  """A speedup Adam never reaches within its longer runs (a lower bound >= 1) counts."""
  row = lambda s, lower: {"speedup_steps": s, "speedup_steps_is_lower_bound": lower}
  assert benchmarks.beats_tuned_adam(row(1.3, False))
  assert benchmarks.beats_tuned_adam(row(4.0, True))
  assert not benchmarks.beats_tuned_adam(row(1.0, False))
  assert not benchmarks.beats_tuned_adam(row(0.8, False))


def test_head_to_head_breaks_ties_at_the_cap_by_the_final_loss():
  """Higher speedup wins; equal speedups (both capped) go to the lower final loss."""
  def row(speedup, final, test=1.0):
    return {"speedup_steps": speedup, "final_loss": final, "test": {"loss": test},
            "speedup_test": 1.0}
  results = {"tasks": {
      "a": {"optimizers": {"x": row(2.0, 0.5), "y": row(1.0, 0.1)}},     # faster wins
      "b": {"optimizers": {"x": row(4.0, 0.20), "y": row(4.0, 0.10)}},   # capped: lower loss
      "c": {"optimizers": {"x": row(4.0, 0.100), "y": row(4.0, 0.1005)}},  # within 1 %
      "d": {"optimizers": {"x": row(1.0, 0.1, test=0.2), "y": row(1.0, 0.1, test=0.3)}},
      "e": {"optimizers": {"x": row(3.0, 0.1)}}}}                         # y did not run
  got = benchmarks.head_to_head(results, "x", "y")
  assert got["per_task"] == {"a": "win", "b": "loss", "c": "tie", "d": "tie"}
  assert (got["wins"], got["ties"], got["losses"], got["num_tasks"]) == (1, 2, 1, 4)
  assert benchmarks.head_to_head(results, "x", "y", kind="test")["per_task"]["d"] == "win"
  with pytest.raises(KeyError, match="no row 'z' in these results; rows: x, y"):
    benchmarks.head_to_head(results, "x", "z")


def test_tuned_adams_own_row_is_never_faster_than_its_envelope(results):
  # Its seed-mean final loss is the envelope's value at the horizon (stored to 9 digits).
  row = results["tasks"]["quad"]["optimizers"]["adam (tuned)"]
  assert row["speedup_steps"] <= 1.0 and not row["speedup_steps_is_lower_bound"]
  assert not benchmarks.beats_tuned_adam(row)


def test_trained_weights_are_paired_with_the_init_their_run_started_from(tmp_path):
  """A manifest recording lopt_config={'init_kind': 'adam', ...} pairs the weights with
  that :fresh(...) row, not with plain :fresh (a random init); none matching: no pair."""
  import jax

  import lopt

  lo = lopt.learned("mlp_lopt", learned_schedule=True)
  start = {"init_kind": "adam", "init_lr": 0.003, "learned_schedule": True}
  lopt.save_weights(tmp_path / "w", lo, lo.init(jax.random.key(0)),
                    extra={"meta_training": {"config": {"lopt": "mlp_lopt",
                                                        "lopt_config": start}}})
  trained = f"mlp_lopt:{tmp_path / 'w'}"
  prior = "mlp_lopt:fresh(init_kind='adam',init_lr=0.003,learned_schedule=True)"
  spec = benchmarks.untrained_init_spec("mlp_lopt", str(tmp_path / "w"))
  assert benchmarks.parse_spec(spec).kwargs == start   # the spec to run next to them
  assert benchmarks.untrained_init_spec("celo2_lopt") == "celo2_lopt:fresh"   # run from defaults
  row = lambda s: {"speedup_steps_per_seed": [s, s], "speedup_test_per_seed": [s, s]}
  results = {"tasks": {t: {"optimizers": {trained: row(2.0), prior: row(1.0),
                                          "mlp_lopt:fresh": row(0.01)}} for t in "ab"}}
  results["summary"] = {n: {} for n in results["tasks"]["a"]["optimizers"]}
  gain = benchmarks.meta_training_gain(results, num_bootstrap=10)
  assert list(gain) == [f"{trained} vs {prior}"]
  assert gain[f"{trained} vs {prior}"]["steps"]["iqm"] == pytest.approx(2.0)
  del results["summary"][prior]
  assert benchmarks.meta_training_gain(results, num_bootstrap=10) == {}
  # A snapshot run with settings pairs with ':fresh' of exactly those settings.
  snap = f"mlp_lopt:{tmp_path / 'w'}(init_kind='adam',init_lr=0.003,learned_schedule=True)"
  other = "mlp_lopt:fresh(init_kind='adam',init_lr=0.01,learned_schedule=True)"
  results = {"tasks": {t: {"optimizers": {snap: row(3.0), prior: row(1.5), other: row(0.1)}}
                       for t in "ab"}}
  results["summary"] = {n: {} for n in results["tasks"]["a"]["optimizers"]}
  gain = benchmarks.meta_training_gain(results, num_bootstrap=10)
  assert list(gain) == [f"{snap} vs {prior}"]
  assert gain[f"{snap} vs {prior}"]["steps"]["iqm"] == pytest.approx(2.0)
