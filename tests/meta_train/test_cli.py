"""The command lines of meta_train: flags derived from the configs, one-line errors, flagfiles."""

import importlib
import json
import os
import pathlib
import subprocess
import sys

import pytest
from absl import flags

import lopt
from meta_train import main as meta_main
from meta_train.gpt import dataset as gpt_dataset
from meta_train.gpt import evaluate as gpt_evaluate
from meta_train.gpt import train as gpt_train

ROOT = pathlib.Path(__file__).resolve().parents[2]
# the module (``from meta_train import specialize`` is the function)
specialize_cli = importlib.import_module("meta_train.specialize")
GPT_WEIGHTS = f"--weights={lopt.gpt.pretrained_gpt_path()}"


def _parse(module, args):
  fv = flags.FlagValues()
  module.define_flags(fv)
  fv(["prog", *args])
  return fv


@pytest.mark.parametrize("module, args, expected", [
    (meta_main, ['--lopt_config={"bogus": 1}'], "flag --lopt_config=.*unknown keys \\['bogus'\\] "
     "for mlp_lopt; valid keys: .*hidden"),
    (meta_main, ["--estimator=reinforce"], "value should be one of <es|pes|tbptt>"),
    (meta_main, ["--lopt=adam"], "mlp_lopt"),
    (meta_main, ["--param_scale_range=2,1"], "0 < lo <= hi"),
    (meta_main, ["--min_horizon=2000"], "flag --min_horizon=2000: need 1 <= min_horizon"),
    (meta_main, ["--sigma=0"], "flag --sigma=0.0: sigma must be > 0"),
    (meta_main, ["--init_weights=/no/such/dir"], "no weights directory at '/no/such/dir'"),
    (meta_main, ["--trainable=("], "flag --trainable=\\(: .*not a regular expression"),
    (meta_main, ["--trainable=nothing"], "matches no meta-parameter; their paths: .*mlp"),
    (gpt_dataset, ["--runs=0"], "flag --runs=0: 0 is not a positive integer"),
    (gpt_dataset, ["--steps_per_run=0"], "flag --steps_per_run=0: 0 is not a positive"),
    (gpt_dataset, ["--runs_per_shard=0"], "flag --runs_per_shard=0: 0 is not a positive"),
    (gpt_dataset, ["--init_scale_min=-1"], "0 < min <= max"),
    (gpt_dataset, ["--optimizers=adamm"], "no learning-rate range for optimizer 'adamm'"),
    (gpt_train, ["--batch_size=0"], "flag --batch_size=0: batch_size must be >= 1"),
    (gpt_train, ["--ema_decay=2"], "ema_decay must be in \\[0, 1\\)"),
    (gpt_train, ["--learning_rate=-1"], "learning_rate must be > 0"),
    (gpt_evaluate, [GPT_WEIGHTS, "--num_nets=0"], "num_nets must be >= 1"),
    (gpt_evaluate, [GPT_WEIGHTS, "--adam_lrs=0.1,-1"], "adam_lrs must be non-empty, each > 0"),
    (gpt_evaluate, ["--weights=/no/such/dir"], "G.pt weights directory"),
])
def test_bad_flags_stop_at_parsing(module, args, expected):
  required = {meta_main: ["--workdir=w"], gpt_dataset: ["--out=o"],
              gpt_train: ["--dataset=d", "--workdir=w"], gpt_evaluate: []}[module]
  with pytest.raises(flags.IllegalFlagValueError, match=expected):
    _parse(module, required + args)


def test_every_config_field_is_a_flag_and_every_flagfile_parses():
  fv = _parse(meta_main, ["--workdir=w", "--nostagger", "--nohorizon_aware", "--sigma=0.1",
                          "--estimator=es", "--max_to_keep=3"])
  cfg = meta_main.config_from_flags(fv)
  assert not cfg.unroll.stagger and not cfg.unroll.horizon_aware
  assert (cfg.estimator.name, cfg.estimator.sigma, cfg.max_to_keep) == ("es", 0.1, 3)
  for path in sorted((ROOT / "meta_train" / "configs").glob("*.flags")):
    module = (gpt_train if path.name.startswith("gpt_") else
              specialize_cli if path.name.startswith("specialize_") else meta_main)
    fv = _parse(module, [f"--flagfile={path}"])
    if module is meta_main:
      cfg = meta_main.config_from_flags(fv)
      assert fv["lopt"].present and fv["workdir"].present, path.name
      assert cfg.unroll.trunc_length == fv["trunc_length"].value, path.name
    elif module is specialize_cli:
      assert fv["pretrained"].present and fv["workdir"].present, path.name
    else:
      assert fv["steps"].present, path.name


def test_workdir_problems_are_one_line_errors_without_usage(tmp_path, monkeypatch):
  (tmp_path / "config.json").write_text(json.dumps({"lopt": "celo2_lopt"}))
  fv = _parse(meta_main, [f"--workdir={tmp_path}", "--nocompilation_cache", "--noplot"])
  monkeypatch.setattr(meta_main, "FLAGS", fv)
  with pytest.raises(SystemExit, match="^meta_train: .* holds a run with a different config"):
    meta_main.main(["prog"])


def test_old_command_names_run_the_new_modules(tmp_path):
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-m", "meta_train.gpt_train", "--dataset=d",
                        f"--workdir={tmp_path}", "--batch_size=0"], capture_output=True,
                       text=True, cwd=ROOT, env=env, timeout=120)
  assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
  assert "flag --batch_size=0: batch_size must be >= 1" in out.stderr
  from meta_train import gpt_eval
  assert gpt_eval.evaluate_gpt is gpt_evaluate.evaluate_gpt


def test_gpt_command_lines_run_without_runpy_warning(tmp_path):
  """``import meta_train.gpt`` leaves its command-line modules unimported (their names
  load on first use), so ``python -m meta_train.gpt.<module>`` prints no runpy warning."""
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-m",
                        "meta_train.gpt.protocol", f"--settings={tmp_path / 'none.json'}"],
                       capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
  assert "RuntimeWarning" not in out.stderr and "no protocol settings file" in out.stderr, (
      out.stderr[-2000:])
  from meta_train import gpt
  assert gpt.train_gpt.__module__ == "meta_train.gpt.train" and "train_gpt" in dir(gpt)
  with pytest.raises(AttributeError, match="no attribute 'nope'"):
    gpt.nope  # noqa: B018
