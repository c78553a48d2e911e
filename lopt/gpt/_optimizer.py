"""G.pt as an optax optimizer: one update = one sample of new parameters.

``update(grads, state, params, loss=loss)`` tokenizes ``params``, samples new
parameters from the diffusion model conditioned on them, on ``loss`` (taken as
their value of the model's metric, e.g. test loss) and on the prompted
``target``, and returns ``new - params``. Gradients are ignored, except by
models trained with ``condition_grad``, which also condition on them. The sampling
key lives in the state, so ``update`` is pure, jit-able and deterministic given
the state. Prompting the model repeatedly (one update per step) refines further.

A model fits one task: ``task=`` is compared with the task its manifest names
and another task is refused (:class:`~lopt.gpt.TaskMismatchError`) unless
``allow_other_task=True``; the first update warns (:class:`~lopt.gpt.GPTWarning`)
when ``loss=`` lies outside the metric range the model was trained on (see
``lopt/gpt/_checks.py``).

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

from lopt.gpt._checks import StartCheck, check_task, describe_task, metric_range, task_info
from lopt.gpt._io import LoadedGPT, load_gpt, read_gpt_manifest

__all__ = ["PRETRAINED", "SHIPPED", "GPTState", "gpt", "gpt_from_loaded", "pretrained_gpt_path",
           "trained_for"]

#: The shipped model ``weights="pretrained"`` means without a task: ``digits_mlp``, hidden=(32,).
PRETRAINED = "gpt_digits_mlp"
#: Shipped models by the ``tasks.get`` name of the task they were trained for (each
#: manifest names the whole task config): ``weights="pretrained", task=...`` picks one.
SHIPPED: dict[str, str] = {"digits_mlp": "gpt_digits_mlp", "cartpole": "gpt_cartpole"}


class GPTState(NamedTuple):
  """State of the G.pt optimizer: the sampling key and the number of samples taken."""
  key: jax.Array
  count: jax.Array


def pretrained_gpt_path(name: str = PRETRAINED, *, task: Any = None) -> pathlib.Path:
  """The directory of shipped G.pt weights (inside ``lopt/weights``).

  Example::

    lopt.gpt.pretrained_gpt_path()                                  # .../gpt_digits_mlp
    lopt.gpt.pretrained_gpt_path(task=tasks.get("cartpole", ...))  # .../gpt_cartpole

  Args:
    name: a directory name (default :data:`PRETRAINED`, the digits MLP model).
    task: a task object or ``{"name", "config"}``: the model :data:`SHIPPED` for
      its name instead of ``name`` (a task no shipped model fits keeps ``name``;
      the optimizer then refuses it with :class:`~lopt.gpt.TaskMismatchError`).
  """
  if task is not None:
    name = SHIPPED.get(task_info(task)["name"], name)
  return pathlib.Path(__file__).resolve().parent.parent / "weights" / name


def gpt_from_loaded(loaded: LoadedGPT, *, target: float | None = None,
                    num_sampling_steps: int = 20, eta: float = 0.0,
                    temperature: float | None = None, guidance: float | None = None,
                    seed: int = 0, max_updates: int | None = None, task: Any = None,
                    allow_other_task: bool = False) -> optax.GradientTransformationExtraArgs:
  """Builds the optimizer from an already loaded model (see :func:`gpt`)."""
  check_task(loaded.trained_for, task, allow_other_task)
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

  trained = describe_task(loaded.trained_for)
  fits = (f"; this G.pt model fits the parameters of task {trained} (any tree with their "
          f"leaves' shapes in jax.tree order, whatever their names)")
  metric = str(model.cfg["metric"])
  start_check = StartCheck(*metric_range(loaded.manifest, stats, model.cfg["log_metric"]),
                           log_metric=bool(model.cfg["log_metric"]), metric=metric,
                           task=trained)

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
      raise ValueError(f"the G.pt optimizer needs loss=, the current {metric} of params (each "
                       f"sample is conditioned on it): call update(grads, state, params, "
                       f"loss=loss), or with nnx.Optimizer optimizer.update(model, grads, "
                       f"loss=loss)")
    if jnp.size(loss) != 1:
      raise ValueError(f"loss= must be one scalar, the {metric} of params; got shape "
                       f"{jnp.shape(loss)}")
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
    start_check(loss, state.count)   # warns if the first start is off the training range
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
        max_updates: int | None = None, task: Any = None, allow_other_task: bool = False,
        **unused: Any) -> optax.GradientTransformationExtraArgs:
  """The G.pt generative optimizer, ``lopt.get("gpt", ...)``.

  Example::

    task = tasks.get("digits_mlp", hidden=(32,))
    opt = lopt.get("gpt", weights="pretrained", task=task, target=0.05)
    state = opt.init(params)
    updates, state = opt.update(grads, state, params, loss=test_loss)
    params = optax.apply_updates(params, updates)   # a sampled network

  Args:
    weights: ``"pretrained"`` (the shipped model for ``task``, :data:`SHIPPED`;
      without a task the ``digits_mlp`` one), a directory
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
    task: the task the parameters belong to: a task object (``name`` and
      ``config()``, e.g. ``tasks.get("digits_mlp", hidden=(32,))``) or ``{"name",
      "config"}``. It is compared with the task the model was trained for
      (:func:`trained_for`): the name and every setting the manifest records
      (dataset, architecture, activation, ...; not ``batch_size``) must match.
      None skips the check with a :class:`~lopt.gpt.GPTWarning` (once per process).
    allow_other_task: use the model on another task anyway: a mismatch warns
      instead of raising, and no ``task`` gives no warning.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; ``update`` needs ``params``
    and ``loss=`` and raises ``ValueError`` for a parameter tree whose leaf
    shapes do not match the model's task (leaf names do not matter; the message
    names the task that fits). An update with a non-finite ``loss`` is skipped:
    zero updates and an unchanged state (``count`` counts samples taken). The
    first sample warns (:class:`~lopt.gpt.GPTWarning`) when ``loss`` lies outside
    the manifest's ``metric_range`` (widened by 10 % of its log-width on each
    side); under ``jit`` the warning comes from a ``jax.debug.callback`` that
    only an out-of-range first update calls.

  Raises:
    TaskMismatchError: ``task`` is not the one the model was trained for (a
      ``ValueError`` naming both; ``allow_other_task=True`` makes it a warning).
  """
  del num_steps
  if unused:
    raise TypeError(f"gpt() got unexpected arguments {sorted(unused)}")
  if prompt is not None:
    if target is not None:
      raise ValueError("give target= or its alias prompt=, not both")
    target = prompt
  return gpt_from_loaded(_load(weights, task), target=target, num_sampling_steps=num_sampling_steps,
                         eta=eta, temperature=temperature, guidance=guidance, seed=seed,
                         max_updates=max_updates, task=task, allow_other_task=allow_other_task)


def _weights_path(weights: Any, task: Any = None) -> str | os.PathLike:
  """The directory of ``weights`` (``"pretrained"`` or a path), with clear errors."""
  if weights is None:
    raise ValueError("G.pt has no meaningful fresh weights; pass weights='pretrained' "
                     "or a path written by meta_train.gpt_train")
  if isinstance(weights, str) and weights == "pretrained":
    path = pretrained_gpt_path(task=task)
    if not (path / "manifest.json").exists():
      raise FileNotFoundError(f"no pretrained G.pt weights are shipped at {path}; train "
                              f"one with `python -m meta_train.gpt_train` and pass its "
                              f"weights directory")
    return path
  if not isinstance(weights, (str, os.PathLike)):
    raise TypeError(f"weights must be 'pretrained', a path or a LoadedGPT, got "
                    f"{type(weights).__name__}")
  if isinstance(weights, str) and not os.path.exists(weights):
    close = difflib.get_close_matches(weights, ["pretrained"], n=1, cutoff=0.6)
    raise FileNotFoundError(f"no G.pt weights at {weights!r}"
                            + (f" (did you mean {close[0]!r}?)" if close else "")
                            + "; weights are 'pretrained', a directory written by "
                              "lopt.gpt.save_gpt, or a LoadedGPT")
  return weights


def _load(weights: Any, task: Any = None) -> LoadedGPT:
  return weights if isinstance(weights, LoadedGPT) else load_gpt(_weights_path(weights, task))


def trained_for(weights: Any = "pretrained") -> dict[str, Any] | None:
  """The task a G.pt model was trained for, as its manifest records it.

  Example::

    t = lopt.gpt.trained_for()   # {"name": "digits_mlp", "config": {"dataset": "digits",
                                 #  "hidden": [32], "activation": "relu", ...}}
    task = tasks.get(t["name"], **t["config"])
    opt = lopt.get("gpt", weights="pretrained", task=task)

  Args:
    weights: ``"pretrained"``, a weights directory or a :class:`~lopt.gpt.LoadedGPT`.

  Returns:
    ``{"name", "config"}`` (the task is ``tasks.get(name, **config)``), or None
    for a manifest that records no task.
  """
  if isinstance(weights, LoadedGPT):
    return weights.trained_for
  return read_gpt_manifest(_weights_path(weights)).get("task")
