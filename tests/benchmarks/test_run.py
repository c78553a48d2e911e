"""End to end: the vmapped runs, run_benchmark, its files, and the command line."""

import json

import jax
import numpy as np
import optax
import pytest
from absl import flags

import benchmarks
import lopt
import tasks
from benchmarks import run as run_cli

TINY = benchmarks.SuiteTask("quad", "quadratic", {"dim": 4, "condition": 10.0}, 25)


def test_vmapped_runs_match_tasks_train():
  task = TINY.build()
  keys = jax.random.split(jax.random.key(3), 2)
  runs = benchmarks.train_runs(task, lopt.get("momentum"), 25, keys)
  assert runs.losses.shape == (2, 25)
  ref = tasks.train(task, lopt.get("momentum"), 25, keys[1])
  np.testing.assert_allclose(runs.losses[1], ref.losses, rtol=1e-5)
  grid = benchmarks.adam_grid(task, np.array([1e-2, 1e-1]), 25, keys)
  assert grid.losses.shape == (2, 2, 25) and grid.num_runs == 4
  ref = tasks.train(task, optax.adam(1e-1), 25, keys[1])
  # The injected learning rate is a float32 array: agreement to float32 rounding.
  np.testing.assert_allclose(grid.losses[1, 1], ref.losses, rtol=1e-4)
  assert grid.ms_per_step > 0


def test_run_benchmark_writes_json_markdown_and_plots(tmp_path, capsys):
  # 1e30 makes Adam overflow: a diverged learning rate must be counted, not crash.
  results = benchmarks.run_benchmark(
      ["sgd", "lion", "mlp_lopt:pretrained"], [TINY], num_seeds=2,
      learning_rates=np.array([1e-2, 3e-1, 1e30]))
  out = capsys.readouterr().out
  assert "ETA" in out
  t = results["tasks"]["quad"]
  assert t["adam"]["best_learning_rate"] == pytest.approx(0.3)
  assert t["adam"]["diverged_by_lr"][2] == 2
  assert t["adam"]["final_loss_by_lr"][2] is None
  for name in ("sgd", "lion"):
    r = t["optimizers"][name]
    assert r["final_loss"] <= r["curve"][0]
    assert r["best_loss"] <= r["final_loss"]
    assert r["speedup"] > 0 and len(r["speedup_per_seed"]) == 2
    assert {"loss", "distance"} <= set(r["test"])
    assert r["loss_ratio"] == pytest.approx(
        r["final_loss"] / t["adam"]["envelope_full"][-1], rel=1e-5)
  if lopt.has_pretrained("mlp_lopt"):
    assert "mlp_lopt:pretrained" in t["optimizers"]
  else:
    assert "mlp_lopt:pretrained" in results["skipped"] and "note: skipping" in out
  s = results["summary"]
  assert set(s) >= {"adam (tuned)", "sgd", "lion"}
  assert s["sgd"]["ci95"][0] <= s["sgd"]["iqm_speedup"] <= s["sgd"]["ci95"][1]

  paths = benchmarks.save_results(results, tmp_path)
  loaded = json.loads(paths["json"].read_text())
  assert loaded["tasks"]["quad"]["adam"]["learning_rates"][2] == 1e30
  md = paths["markdown"].read_text()
  assert "| sgd |" in md and "IQM speedup" in md and "### quad" in md
  names = sorted(p.name for p in paths["plots"])
  assert names == ["curves_quad.png", "speedup.png"]
  assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths["plots"])

  # Adding an optimizer reuses tuned Adam and the hand-designed runs from the JSON.
  more = benchmarks.run_benchmark(["momentum"], [TINY], num_seeds=2,
                                  learning_rates=np.array([1e-2, 3e-1, 1e30]), reuse=loaded)
  t2 = more["tasks"]["quad"]
  assert t2["adam"] == loaded["tasks"]["quad"]["adam"]
  assert t2["optimizers"]["sgd"] == loaded["tasks"]["quad"]["optimizers"]["sgd"]
  # Learned optimizers are re-run (their weights may have changed), hand-designed reused.
  expected = ["sgd", "lion"] + (["mlp_lopt:pretrained"] if lopt.has_pretrained("mlp_lopt")
                                else []) + ["momentum"]
  assert list(t2["optimizers"]) == expected
  assert "adam (reused)" in capsys.readouterr().out
  with pytest.raises(ValueError, match="num_seeds"):
    benchmarks.run_benchmark(["momentum"], [TINY], num_seeds=3, reuse=loaded)


def test_command_line(tmp_path, capsys):
  argv = ["run", "--optimizers=sgd", "--tasks=quadratic_tiny", "--steps=20", "--seeds=1",
          "--num_lrs=3", f"--out={tmp_path}"]
  fv = flags.FlagValues()
  run_cli.define_flags(fv)
  fv(argv)
  run_cli.run_from_flags(fv)
  out = capsys.readouterr().out
  assert "| sgd |" in out and str(tmp_path) in out
  results = json.loads((tmp_path / "results.json").read_text())
  assert len(results["config"]["learning_rates"]) == 3
  assert results["config"]["command"].startswith("python -m benchmarks.run --optimizers=sgd")
  assert (tmp_path / "curves_quadratic_tiny.png").exists()


def test_bad_names_are_clear_errors():
  with pytest.raises(KeyError, match="valid names"):
    benchmarks.run_benchmark(["no_such_opt"], [TINY])
  with pytest.raises(KeyError, match="suites: "):
    benchmarks.parse_tasks("no_such_task")
  with pytest.raises(KeyError, match="valid suites"):
    benchmarks.suite("nope")


def test_suites_resolve():
  for name, entries in benchmarks.SUITES.items():
    assert entries, name
    assert len({e.label for e in entries}) == len(entries)
    for e in entries:
      assert e.task in tasks.available() and e.steps > 1
  assert [e.label for e in benchmarks.parse_tasks("digits_cnn,quadratic", steps=7)] == [
      "digits_cnn", "quadratic"]
  assert all(e.steps == 7 for e in benchmarks.parse_tasks("heldout", steps=7))
  # Checkpoints are chosen on "validation", so it must not share a task with "heldout".
  key = lambda e: (e.task, repr(sorted(e.cfg.items())))
  assert not {key(e) for e in benchmarks.suite("validation")} & {
      key(e) for e in benchmarks.suite("heldout")}


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
                    task={"name": "quadratic", "config": {"dim": 4}})
  spec = f"gpt:{tmp_path / 'w'}"
  results = benchmarks.run_benchmark([spec], [task4, task5], num_seeds=1,
                                     learning_rates=np.array([0.1]))
  assert spec in results["tasks"]["quad4"]["optimizers"]
  assert spec in results["tasks"]["quad5"]["not_applicable"]
  assert results["summary"][spec]["num_tasks"] == 1
  assert "n/a" in benchmarks.markdown(results)
  assert f"note: {spec} does not apply to quad5" in capsys.readouterr().out


def test_beats_tuned_adam_counts_lower_bounds():
  """A speedup Adam never reaches within the horizon (a lower bound >= 1) counts as faster."""
  from benchmarks._benchmark import beats_tuned_adam
  assert beats_tuned_adam({"speedup": 1.3, "speedup_is_lower_bound": False})
  assert beats_tuned_adam({"speedup": 1.0, "speedup_is_lower_bound": True})
  assert not beats_tuned_adam({"speedup": 1.0, "speedup_is_lower_bound": False})
  assert not beats_tuned_adam({"speedup": 0.8, "speedup_is_lower_bound": False})
