"""G.pt guidance: the extrapolation formula, the null prompt, the optimizer default."""

import functools
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lopt
from lopt.gpt import GPT, param_spec
from tests.lopt.gpt_tiny import TINY, TINY_TASK, save_tiny


@functools.partial(jax.jit, static_argnums=(0, 6))
def _gen_one_step(model, params, stats, start, m_start, m_target, w):
  return model.generate(params, stats, jax.random.key(0), start, m_start, m_target,
                        num_steps=1, temperature=0.0, guidance=w)


def _one_step(m, start, m_start, m_target, w, params=None):
  """One deterministic denoising step: the sample is the denoiser's x0 prediction."""
  return np.asarray(_gen_one_step(m.model, m.params if params is None else params, m.stats,
                                  start, jnp.full((1,), m_start), jnp.full((1,), m_target),
                                  float(w)))


def test_guidance_extrapolates_from_the_start_metric_prompt(tiny_weights):
  # Without a null prompt the reference is "prompt = the start's own metric".
  path, params = tiny_weights
  m = lopt.gpt.load_gpt(path)
  start = np.asarray(m.model.tokenizer.flatten(params))[None]
  cond = _one_step(m, start, 2.0, 0.5, 0.0) - start
  ref = _one_step(m, start, 2.0, 2.0, 0.0) - start
  guided = _one_step(m, start, 2.0, 0.5, 0.7) - start
  assert not np.allclose(cond, ref, atol=1e-4)
  np.testing.assert_allclose(guided, 1.7 * cond - 0.7 * ref, rtol=1e-4, atol=1e-5)
  with pytest.raises(ValueError, match="null prompt"):
    m.model.net.apply({"params": m.params}, *([jnp.zeros((1,) + m.model.mask.shape)] * 1),
                      jnp.zeros(1), jnp.zeros((1,) + m.model.mask.shape), jnp.zeros(1),
                      jnp.zeros(1), drop=jnp.ones((1,), bool))


def test_prompt_dropout_model_guides_against_its_null_prompt(tmp_path):
  _, params, _ = save_tiny(tmp_path / "w", prompt_dropout=0.2)
  m = lopt.gpt.load_gpt(tmp_path / "w")
  assert m.model.cfg["prompt_dropout"] == 0.2 and "null_target" in m.params
  start = np.asarray(m.model.tokenizer.flatten(params))[None]
  w = 0.5

  def null_pred(target, params=None):
    # Solve guided = (1 + w) cond - w null for the null prediction.
    cond = _one_step(m, start, 2.0, target, 0.0, params) - start
    return ((1 + w) * cond - (_one_step(m, start, 2.0, target, w, params) - start)) / w

  # The reference ignores the prompt (two prompts give the same null prediction) ...
  np.testing.assert_allclose(null_pred(0.5), null_pred(1.5), rtol=1e-3, atol=1e-5)
  # ... and is the learned null prompt's prediction. (A random change: the blocks'
  # LayerNorms ignore a constant shift of a token.)
  other = {**m.params,
           "null_target": jax.random.normal(jax.random.key(3), m.params["null_target"].shape)}
  assert not np.allclose(null_pred(0.5), null_pred(0.5, other), atol=1e-4)
  with pytest.raises(ValueError, match="prompt_dropout"):
    GPT(param_spec(params), **TINY, prompt_dropout=1.0)


def test_guidance_default_from_manifest_and_errors(tiny_weights, tmp_path):
  path, params = tiny_weights
  shutil.copytree(path, tmp_path / "w")
  man = json.loads((tmp_path / "w" / "manifest.json").read_text())
  man["extra"]["guidance"] = 0.5
  (tmp_path / "w" / "manifest.json").write_text(json.dumps(man))
  common = {"num_sampling_steps": 2, "temperature": 0.0, "target": 0.5}

  def upd(weights, **kw):
    opt = lopt.get("gpt", weights=str(weights), task=TINY_TASK, **common, **kw)
    return np.asarray(jax.jit(opt.update)(params, opt.init(params), params,
                                          loss=2.0)[0]["conv"])

  from_manifest, plain = upd(tmp_path / "w"), upd(path)
  np.testing.assert_allclose(from_manifest, upd(path, guidance=0.5), rtol=1e-5, atol=1e-7)
  assert not np.allclose(from_manifest, plain, atol=1e-5)
  np.testing.assert_allclose(upd(tmp_path / "w", guidance=0.0), plain, rtol=1e-5, atol=1e-7)
  with pytest.raises(ValueError, match="guidance"):
    lopt.get("gpt", weights=str(path), task=TINY_TASK, guidance=float("nan"))
