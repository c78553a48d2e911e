"""G.pt as an optax optimizer: one update = one sample of new parameters.

``update(grads, state, params, loss=loss)`` tokenizes ``params``, samples new
parameters from the diffusion model conditioned on them, on ``loss`` (taken as
their value of the model's metric, e.g. test loss) and on the prompted
``target``, and returns ``new - params``. Gradients are ignored, except by
models trained with ``condition_grad``, which also condition on them. The sampling
key lives in the state, so ``update`` is pure, jit-able and deterministic given
the state. Prompting the model repeatedly (one update per step) refines further.

Reference: Peebles et al. 2022, arXiv 2209.12892, Sec. 5 (one-step training and
recursive prompting).
"""

from __future__ import annotations

import difflib
import math
import os
import pathlib
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from lopt.gpt._io import LoadedGPT, load_gpt

__all__ = ["GPTState", "gpt", "gpt_from_loaded", "pretrained_gpt_path"]

#: The shipped model, for the ``digits_mlp`` task with hidden=(32,).
PRETRAINED = "gpt_digits_mlp"


class GPTState(NamedTuple):
  """State of the G.pt optimizer: the sampling key and the number of samples taken."""
  key: jax.Array
  count: jax.Array


def pretrained_gpt_path(name: str = PRETRAINED) -> pathlib.Path:
  """The directory of shipped G.pt weights ``name`` (inside ``lopt/weights``)."""
  return pathlib.Path(__file__).resolve().parent.parent / "weights" / name


def gpt_from_loaded(loaded: LoadedGPT, *, target: float | None = None,
                    num_sampling_steps: int = 20, eta: float = 0.0,
                    temperature: float | None = None, guidance: float | None = None,
                    seed: int = 0, max_updates: int | None = None
                    ) -> optax.GradientTransformationExtraArgs:
  """Builds the optimizer from an already loaded model (see :func:`gpt`)."""
  model, net_params, stats = loaded.model, loaded.params, loaded.stats
  tok = model.tokenizer
  extra_info = loaded.manifest.get("extra", {})
  if target is None:
    target = extra_info.get("target", loaded.manifest.get("best_metric"))
    if target is None:
      raise ValueError("the G.pt manifest stores no target or best_metric; pass target=")
  target = float(target)
  if not math.isfinite(target):
    raise ValueError(f"target must be finite, got {target}")
  num_sampling_steps = int(num_sampling_steps)
  if temperature is None:
    temperature = extra_info.get("sampling_temperature", 1.0)
  temperature = float(temperature)
  if temperature < 0:
    raise ValueError(f"temperature must be >= 0, got {temperature}")
  guidance = float(extra_info.get("guidance", 0.0) if guidance is None else guidance)
  if not math.isfinite(guidance):
    raise ValueError(f"guidance must be finite, got {guidance}")

  task = loaded.manifest.get("task") or {}
  fits = (f"; this G.pt model fits the parameters of task {task['name']!r} with config "
          f"{task.get('config', {})} (any tree with their leaf shapes, whatever its names)"
          if task.get("name") else "")

  def check(tree, name="params"):
    try:
      tok.check(tree, name=name)
    except ValueError as e:
      raise ValueError(f"{e}{fits}") from None

  def init_fn(params):
    check(params)
    return GPTState(jax.random.key(seed), jnp.zeros((), jnp.int32))

  def update_fn(updates, state, params=None, *, loss=None, **extra):
    del extra
    if params is None:
      raise ValueError("the G.pt optimizer needs params: call update(grads, state, params, "
                       "loss=loss)")
    if loss is None:
      raise ValueError("the G.pt optimizer needs the current loss: call update(grads, state, "
                       "params, loss=loss)")
    check(params)
    grad_flat = None
    if model.cfg["condition_grad"]:
      if updates is None:
        raise ValueError("this G.pt model conditions on the gradient at params "
                         "(condition_grad): call update(grads, state, params, loss=loss)")
      check(updates, name="grads")
      grad_flat = tok.flatten(updates)[None].astype(jnp.float32)
    key, sub = jax.random.split(state.key)
    loss = jnp.reshape(jnp.asarray(loss, jnp.float32), ())

    def sample(_):
      start = tok.flatten(params)[None]
      m_start = jnp.reshape(loss, (1,))
      m_target = jnp.full((1,), target, jnp.float32)
      new = model.generate(net_params, stats, sub, start, m_start, m_target, grad_flat,
                           num_steps=num_sampling_steps, eta=eta,
                           temperature=temperature, guidance=guidance)[0]
      new_params = tok.unflatten(new, like=params)
      return jax.tree.map(lambda n, p: (n - p).astype(p.dtype), new_params, params)

    # A non-finite loss cannot condition the model: the update is skipped (zero
    # updates, state unchanged), so a later finite loss still gets its sample.
    run = jnp.isfinite(loss)
    if max_updates is not None:  # after max_updates samples params are left alone
      run = run & (state.count < max_updates)
    upd = jax.lax.cond(run, sample, lambda _: jax.tree.map(jnp.zeros_like, params), None)
    new_state = jax.lax.cond(run, lambda: GPTState(key, state.count + 1), lambda: state)
    return upd, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def gpt(weights: Any = "pretrained", target: float | None = None, *,
        num_sampling_steps: int = 20, eta: float = 0.0, temperature: float | None = None,
        guidance: float | None = None, seed: int = 0,
        prompt: float | None = None, num_steps: int | None = None,
        max_updates: int | None = None, **unused: Any) -> optax.GradientTransformationExtraArgs:
  """The G.pt generative optimizer, ``lopt.get("gpt", ...)``.

  Example::

    opt = lopt.get("gpt", weights="pretrained", target=0.05)
    state = opt.init(params)
    updates, state = opt.update(grads, state, params, loss=test_loss)
    params = optax.apply_updates(params, updates)   # a sampled network

  Args:
    weights: ``"pretrained"`` (the shipped ``digits_mlp`` model), a directory
      written by :func:`lopt.gpt.save_gpt` (e.g. ``gpt_train``'s
      ``<workdir>/weights``), or a :class:`~lopt.gpt.LoadedGPT`.
    target: the prompted value of the model's metric. Default: the value
      ``gpt_eval --save_settings`` chose on validation inits and recorded in the
      manifest (``extra.target``: the prompt whose one update got furthest), else
      the best value in the training data (``best_metric``).
    num_sampling_steps: diffusion sampling steps per update.
    eta: 0 for DDIM, 1 for DDPM sampling.
    temperature: noise scale of the sampler (:func:`lopt.gpt.sample`; 1 samples
      the model's distribution, 0 is deterministic). Default: the value
      ``gpt_eval --save_settings`` chose on validation runs and recorded in
      the manifest (``extra.sampling_temperature``), else 1.
    guidance: classifier-free guidance scale :math:`w` (see
      :meth:`lopt.gpt.GPT.generate`): each denoising step extrapolates the prompted
      prediction away from a reference one by ``w``; 0 turns it off, and each step
      then costs one network pass instead of two. Default: the value recorded in
      the manifest by ``gpt_eval --save_settings`` (``extra.guidance``), else 0.
    seed: seed of the sampling key kept in the state.
    prompt: an alias of ``target`` (give one of them).
    num_steps: accepted for symmetry with learned optimizers and ignored (each
      update is one sample, whatever the horizon).
    max_updates: sample only the first ``max_updates`` updates and return zero
      updates afterwards (``1``: the paper's one-update use inside a training
      loop, as ``benchmarks`` runs it); None samples at every update.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; ``update`` needs ``params``
    and ``loss=`` and raises ``ValueError`` for a parameter tree whose leaf
    shapes do not match the model's task (leaf names do not matter; the message
    names the task that fits). An update with a non-finite ``loss`` is skipped:
    zero updates and an unchanged state (``count`` counts samples taken).
  """
  del num_steps
  if unused:
    raise TypeError(f"gpt() got unexpected arguments {sorted(unused)}")
  if prompt is not None:
    if target is not None:
      raise ValueError("give target= or its alias prompt=, not both")
    target = prompt
  if isinstance(weights, LoadedGPT):
    loaded = weights
  else:
    if weights is None:
      raise ValueError("G.pt has no meaningful fresh weights; pass weights='pretrained' "
                       "or a path written by meta_train.gpt_train")
    if isinstance(weights, str) and weights == "pretrained":
      path = pretrained_gpt_path()
      if not (path / "manifest.json").exists():
        raise FileNotFoundError(f"no pretrained G.pt weights are shipped at {path}; train "
                                f"one with `python -m meta_train.gpt_train` and pass its "
                                f"weights directory")
      weights = path
    if not isinstance(weights, (str, os.PathLike)):
      raise TypeError(f"weights must be 'pretrained', a path or a LoadedGPT, got "
                      f"{type(weights).__name__}")
    if isinstance(weights, str) and not os.path.exists(weights):
      close = difflib.get_close_matches(weights, ["pretrained"], n=1, cutoff=0.6)
      raise FileNotFoundError(f"no G.pt weights at {weights!r}"
                              + (f" (did you mean {close[0]!r}?)" if close else "")
                              + "; weights are 'pretrained', a directory written by "
                                "lopt.gpt.save_gpt, or a LoadedGPT")
    loaded = load_gpt(weights)
  return gpt_from_loaded(loaded, target=target, num_sampling_steps=num_sampling_steps,
                         eta=eta, temperature=temperature, guidance=guidance, seed=seed,
                         max_updates=max_updates)
