"""The benchmark passes each task to G.pt: its own task runs silently, another is not applicable."""

import numpy as np
import optax
import pytest

import benchmarks
import lopt
import tasks


def test_gpt_gets_the_task_and_another_task_is_not_applicable(capsys):
  spec = "gpt:pretrained"   # trained for digits_mlp(hidden=[32], ...)
  own = tasks.get("digits_mlp", hidden=(32,))
  opt = benchmarks.build_optimizer(spec, 10, task=own)   # no GPTWarning: warnings are errors
  assert isinstance(opt, optax.GradientTransformationExtraArgs)
  tanh = tasks.get("digits_mlp", hidden=(32,), activation="tanh")
  with pytest.raises(lopt.gpt.TaskMismatchError, match="activation"):
    benchmarks.build_optimizer(spec, 10, task=tanh)
  entry = benchmarks.SuiteTask("quad", "quadratic", {"dim": 3}, 4)
  results = benchmarks.run_benchmark([spec], [entry], num_seeds=1, tune=["adam"],
                                     learning_rates=np.array([0.1]), time_rounds=1)
  why = results["tasks"]["quad"]["not_applicable"][spec]
  assert "trained for task digits_mlp(" in why and "not quadratic(" in why
  assert f"note: {spec} does not apply to quad" in capsys.readouterr().out
