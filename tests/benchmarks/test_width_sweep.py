"""Width sweeps: per-width losses, the spread metric, the files and the command line."""

import json

import numpy as np
import pytest
from absl import flags

import benchmarks
from benchmarks import width_sweep


def test_width_spread_is_zero_for_identical_curves_and_grows_with_the_gap():
  curve = np.linspace(2.0, 0.1, 20)
  assert benchmarks.width_spread(np.stack([curve] * 3)) == 0.0
  assert benchmarks.width_spread([0.3, 0.3]) == 0.0
  assert benchmarks.width_spread([0.1, 1.0]) == pytest.approx(np.log(10) / 2)
  near = benchmarks.width_spread(np.stack([curve, curve * 1.1]))
  far = benchmarks.width_spread(np.stack([curve, curve * 2.0]))
  assert 0 < near < far and near == pytest.approx(np.log(1.1) / 2)
  assert benchmarks.width_spread([0.1, np.nan]) == np.inf
  with pytest.raises(ValueError, match="num_widths"):
    benchmarks.width_spread(0.5)


# One learned optimizer (it gets the horizon): each (optimizer, width) is one compilation.
SPECS = ["celo2_lopt:fresh(update_scaling='spectral')"]


@pytest.fixture(scope="module")
def results():
  return benchmarks.sweep_widths(SPECS, [16, 8], num_steps=20, num_seeds=2, depth=1,
                                 task_kwargs={"batch_size": 32}, verbose=False)


def test_sweep_gives_finite_losses_per_width_and_writes_its_files(results, tmp_path):
  r = results
  assert r["config"]["widths"] == [8, 16] and r["config"]["final_steps"] == 2
  for name in SPECS:
    row = r["optimizers"][name]
    assert len(row["final_loss"]) == 2 and np.all(np.isfinite(row["final_loss"]))
    assert np.all(np.isfinite(row["test_loss"])) and row["diverged"] == [0, 0]
    assert np.array(row["curve"]).shape == (2, 20)
    # The final loss is the mean of the last 10 % of the seed-mean curve.
    assert row["final_loss"][1] == pytest.approx(np.mean(row["curve"][1][-2:]))
    assert row["ratio"] == pytest.approx(row["final_loss"][1] / row["final_loss"][0])
    assert row["final_spread"] == pytest.approx(benchmarks.width_spread(row["final_loss"]))
    assert row["final_spread"] > 0 and row["curve_spread"] > 0
    loss, test = row["final_loss"], row["test_loss"]
    assert row["wider_is_better"] == {"train": loss[1] <= loss[0], "test": test[1] <= test[0]}
  paths = benchmarks.save_width_sweep(r, tmp_path)
  assert json.loads(paths["json"].read_text())["config"]["num_steps"] == 20
  md = paths["markdown"].read_text()
  assert f"| `{SPECS[0]}` |" in md and "w=16" in md
  assert paths["plot"].stat().st_size > 1000


def _flags(*args):
  fv = flags.FlagValues()
  width_sweep.define_flags(fv)
  fv(["width_sweep", *args])
  return fv


def test_cli_flag_errors_are_one_line():
  with pytest.raises(flags.IllegalFlagValueError, match="unknown optimizer 'adamm'.*valid names"):
    _flags("--optimizers=sgd,adamm")
  with pytest.raises(flags.IllegalFlagValueError, match="positive integers, got '32,-8'"):
    _flags("--widths=32,-8")
  with pytest.raises(flags.IllegalFlagValueError, match="positive integers"):
    _flags("--widths=32,x")
  with pytest.raises(flags.IllegalFlagValueError, match="repeats a width"):
    _flags("--widths=32,32")
  with pytest.raises(flags.IllegalFlagValueError, match="--out must not be empty"):
    _flags("--out=")
  with pytest.raises(flags.IllegalFlagValueError, match="empty"):
    _flags("--optimizers=,")
  fv = _flags("--widths=8, 16", "--optimizers=adam(learning_rate=0.01),sgd")
  assert width_sweep.parse_widths(fv.widths) == [8, 16]


def test_cli_passes_its_flags_and_records_its_command(results, tmp_path, capsys, monkeypatch):
  calls = []

  def fake_sweep(specs, widths, **kwargs):   # the sweep itself is tested above
    calls.append((specs, widths, kwargs))
    return {"config": dict(results["config"]), "optimizers": results["optimizers"]}

  monkeypatch.setattr(width_sweep, "sweep_widths", fake_sweep)
  fv = _flags(f"--optimizers={','.join(SPECS)}", "--widths=16,8", "--steps=20", "--depth=1",
              "--batch_size=32", f"--out={tmp_path}")
  r = width_sweep.run_from_flags(fv)
  assert calls == [(SPECS, [16, 8], {"num_steps": 20, "num_seeds": 2, "depth": 1,
                                     "task_kwargs": {"batch_size": 32}, "seed": 0})]
  assert r["config"]["command"] == (
      f"python -m benchmarks.width_sweep --optimizers={','.join(SPECS)} --widths=16,8 "
      f"--depth=1 --steps=20 --batch_size=32 --out={tmp_path}")
  assert (tmp_path / "width_sweep.png").exists() and "ratio" in capsys.readouterr().out
