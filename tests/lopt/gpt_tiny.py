"""A tiny saved G.pt model for the G.pt test files (``test_gpt``, ``test_gpt_guidance``)."""

import jax
import numpy as np
import pytest

import lopt
from lopt.gpt import GPT, param_spec
from tests.lopt.contract import make_params

TINY = {"chunk_size": 16, "d_model": 16, "num_layers": 1, "num_heads": 2,
        "num_timesteps": 50}
#: The task ``save_tiny`` records in the manifest (``task=`` of ``lopt.get("gpt", ...)``).
TINY_TASK = {"name": "contract", "config": {}}


def save_tiny(path, **config):
  """Saves a tiny G.pt (decoder perturbed) for ``make_params()``; returns path, params, stats.

  Its stats come from two fake checkpoints (and, with ``condition_grad``, fake gradients).
  """
  params = make_params()
  gpt = GPT(param_spec(params), **TINY, **config)
  flat = np.asarray(gpt.tokenizer.flatten(params))
  ckpts = np.stack([flat, flat * 0.5], axis=0)[None].repeat(3, axis=0)
  metric = np.asarray([[3.0, 1.0]] * 3, np.float32)
  if gpt.cfg["condition_grad"]:
    with pytest.raises(ValueError, match="grads"):
      gpt.compute_stats(ckpts, metric)
  grads = 2.0 * ckpts if gpt.cfg["condition_grad"] else None
  stats = gpt.compute_stats(ckpts, metric, grads)
  assert set(stats) == set(gpt.stats_keys)
  net = gpt.init(jax.random.key(0))  # the decoder is zero-initialized: perturb it
  net["dec"]["kernel"] = 0.1 * jax.random.normal(jax.random.key(1), net["dec"]["kernel"].shape)
  lopt.gpt.save_gpt(path, gpt, net, stats, best_metric=0.1,
                    task=TINY_TASK)
  return path, params, stats
