"""Blind checkpoint choice: the rule, and a real (tiny) run scored on a suite."""

import json

import jax
import numpy as np
import pytest

import lopt
from meta_train import EstimatorConfig, TrainConfig, UnrollConfig, train
from meta_train.select import candidates, choose, export, select


def test_rule_prefers_steps_then_test_within_the_tie_then_the_earlier_step():
  assert choose({0: {"steps": 1.0, "test": 9.0}, 250: {"steps": 1.2, "test": 0.5}}) == 250
  # 500 is within 0.05 of the best on steps and better on test.
  assert choose({250: {"steps": 1.20, "test": 0.5}, 500: {"steps": 1.16, "test": 0.9}}) == 500
  assert choose({250: {"steps": 1.2, "test": 0.9}, 500: {"steps": 1.2, "test": 0.9}}) == 250
  with pytest.raises(ValueError, match="no candidates"):
    choose({})


def test_test_rule_prefers_test_above_the_steps_floor():
  s = {0: {"steps": 2.8, "test": 1.6}, 100: {"steps": 2.6, "test": 2.1},
       200: {"steps": 1.8, "test": 2.9}, 300: {"steps": 2.62, "test": 2.08}}
  assert choose(s) == 0                                          # steps first
  assert choose(s, rule="test", steps_floor=2.0) == 300          # 200 is under the floor
  assert choose(s, rule="test", steps_floor=1.5) == 200
  assert choose(s, rule="test", steps_floor=3.0) == 0            # none at the floor: "steps"
  with pytest.raises(ValueError, match="unknown rule 'fast'; rules: steps, test"):
    choose(s, rule="fast")


def test_select_scores_snapshots_on_the_suite_and_exports_the_choice(tmp_path):
  cfg = TrainConfig(lopt="celo2_lopt", lopt_config={"hidden_size": 4}, task_family="quadratic",
                    unroll=UnrollConfig(trunc_length=4, min_horizon=8, max_horizon=8),
                    estimator=EstimatorConfig("es"), num_tasks=4, outer_steps=2,
                    snapshot_every=2, checkpoint_every=100)
  run = tmp_path / "run"
  train(cfg, run)
  assert [s for s, _ in candidates(run)] == [0, 2]
  record = select(run, num_seeds=1, tasks="smoke", verbose=False)
  assert set(record["candidates"]) == {"0", "2"} and record["chosen"] in (0, 2)
  assert json.loads((run / "validation" / "selection.json").read_text()) == record
  for s in record["candidates"].values():
    assert np.isfinite(s["steps"]) and "hidden_size=4" in s["spec"]
  out = export(run, record, tmp_path / "shipped", "python -m meta_train.main ...")
  manifest = json.loads((out / "manifest.json").read_text())
  assert manifest["extra"]["meta_training"]["outer_step"] == record["chosen"]
  lo = lopt.learned("celo2_lopt", hidden_size=4)
  chosen = lopt.load_weights(run / "snapshots" / f"step_{record['chosen']:06d}", lo)
  jax.tree.map(np.testing.assert_array_equal, lopt.load_weights(out, lo), chosen)
  with pytest.raises(FileNotFoundError, match="--snapshot_every"):
    candidates(tmp_path)
