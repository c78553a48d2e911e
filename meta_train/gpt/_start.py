"""Runs that start from a G.pt model's own samples (``gpt.dataset --start_from``).

With ``start_from`` every run of a checkpoint dataset starts from one G.pt update of
its usual scaled init instead of the init itself: the init's value of the model's
metric (e.g. ``test_loss``, measured as checkpoint 0 would be) conditions one
sample prompted with ``prompt``, and training proceeds from the sample. A model
retrained on such data sees pairs that start where its own samples land, so it
can learn to improve its own outputs (repeated prompting should not get worse).

The update is the optimizer of :func:`lopt.gpt.gpt_from_loaded` at the model's
recorded settings (prompt ``extra.target``, else ``best_metric``; temperature and
guidance from ``extra``), with its sampling key drawn from the run's key
(``fold_in(run_key, START_KEY_SALT)``), so a dataset is deterministic given its
seed. An init whose metric is not finite is left as it is (the optimizer skips it).

``index.json`` records it as ``"start_from": {"weights", "digest", "prompt",
"temperature", "guidance", "num_sampling_steps", "metric"}``; datasets without the
field start from the raw inits.

Reference: Peebles et al. 2022, arXiv 2209.12892, Sec. 5 (recursive prompting).
"""

from __future__ import annotations

import math
import pathlib
from typing import Any, Mapping, NamedTuple

import jax
import optax

from lopt.gpt import gpt_from_loaded, load_gpt, read_gpt_manifest
from lopt.gpt._checks import describe_task, task_difference
from meta_train.gpt._protocol import weights_digest

__all__ = ["NUM_SAMPLING_STEPS", "START_KEY_SALT", "StartFrom", "check_start_from",
           "describe_start", "load_start_from", "sample_start"]

#: Salt folded into a run's key to draw its G.pt sampling key.
START_KEY_SALT = 0x6770
#: Diffusion sampling steps of the starting update (the optimizer's default).
NUM_SAMPLING_STEPS = 20


class StartFrom(NamedTuple):
  """A G.pt model that samples every run's start, and its ``index.json`` record.

  Attributes:
    tx: the G.pt optimizer at the recorded settings (one update = one sample).
    metric: the model's metric (``"test_loss"``, ``"test_return"``, ...).
    condition_grad: whether the model also conditions on a training gradient.
    record: the ``"start_from"`` entry of ``index.json``.
  """
  tx: optax.GradientTransformationExtraArgs
  metric: str
  condition_grad: bool
  record: dict[str, Any]


def check_start_from(weights: str | pathlib.Path,
                     task_info: Mapping[str, Any]) -> dict[str, Any]:
  """Reads the manifest of ``weights`` and checks it is a G.pt model of ``task_info``.

  Args:
    weights: a G.pt weights directory.
    task_info: ``{"name", "config"}`` of the dataset's task (``config()`` of the task).

  Returns:
    The manifest.

  Raises:
    ValueError: one line naming the path (no G.pt model there) or both tasks.
  """
  try:
    manifest = read_gpt_manifest(weights)
  except (FileNotFoundError, ValueError) as e:
    raise ValueError(f"start_from {str(weights)!r} is not a G.pt weights directory: {e}") from None
  trained = manifest.get("task")
  if not trained or not trained.get("name"):
    raise ValueError(f"start_from {str(weights)!r}: the G.pt manifest records no task, so it "
                     f"cannot be checked against task {describe_task(task_info)}")
  diff = task_difference(trained, task_info)
  if diff is not None:
    raise ValueError(f"start_from {str(weights)!r} is a G.pt model of task "
                     f"{describe_task(trained)}, not of the dataset's task (--task, --task_config) "
                     f"{describe_task(task_info)} (first difference: {diff})")
  return manifest


def load_start_from(weights: str | pathlib.Path, task_info: Mapping[str, Any], *,
                    metrics: list[str], prompt: float | None = None) -> StartFrom:
  """Loads the G.pt model that samples the runs' starts (see the module docstring).

  Args:
    weights: a G.pt weights directory, recorded as given.
    task_info: ``{"name", "config"}`` of the dataset's task.
    metrics: the dataset's metric names; the model's metric must be one of them.
    prompt: the prompted metric; None takes the manifest's ``extra.target``, else
      its ``best_metric``.

  Raises:
    ValueError: no G.pt model at ``weights``, another task, a metric the dataset
      lacks, or no finite prompt.
  """
  manifest = check_start_from(weights, task_info)
  extra = manifest.get("extra") or {}
  metric = str(manifest["config"].get("metric", "test_loss"))
  if metric not in metrics:
    raise ValueError(f"start_from {str(weights)!r} is prompted on {metric!r}, which the "
                     f"dataset does not measure ({metrics})")
  if prompt is None:
    prompt = extra.get("target", manifest.get("best_metric"))
    if prompt is None:
      raise ValueError(f"start_from {str(weights)!r}: the manifest records no target or "
                       f"best_metric; pass a start prompt")
  prompt = float(prompt)
  if not math.isfinite(prompt):
    raise ValueError(f"the start prompt must be finite, got {prompt}")
  temperature = float(extra.get("sampling_temperature", 1.0))
  guidance = float(extra.get("guidance", 0.0))
  loaded = load_gpt(weights)
  tx = gpt_from_loaded(loaded, target=prompt, num_sampling_steps=NUM_SAMPLING_STEPS,
                       temperature=temperature, guidance=guidance, task=dict(task_info))
  record = {"weights": str(weights), "digest": weights_digest(weights), "prompt": prompt,
            "temperature": temperature, "guidance": guidance,
            "num_sampling_steps": NUM_SAMPLING_STEPS, "metric": metric}
  return StartFrom(tx, metric, bool(loaded.model.cfg["condition_grad"]), record)


def sample_start(start: StartFrom, task: Any, params: Any, metrics: Mapping[str, jax.Array],
                 run_key: jax.Array) -> Any:
  """One G.pt update of ``params`` (whose metrics are ``metrics``); pure, jit- and vmap-able.

  Args:
    start: from :func:`load_start_from`.
    task: the dataset's task (a training gradient for ``condition_grad`` models).
    params: the scaled init.
    metrics: its ``{"<split>_<name>": value}`` metrics; ``metrics[start.metric]``
      conditions the sample.
    run_key: the run's key; the sampling key is ``fold_in(run_key, START_KEY_SALT)``.

  Returns:
    The sampled parameters (``params`` itself where the metric is not finite).
  """
  k_sample, k_grad = jax.random.split(jax.random.fold_in(run_key, START_KEY_SALT))
  grads = None
  if start.condition_grad:  # a minibatch gradient at the init, as a training loop gives
    grads = jax.grad(task.loss)(params, k_grad, task.batch(k_grad, "train"))
  state = start.tx.init(params)._replace(key=k_sample)
  updates, _ = start.tx.update(grads, state, params, loss=metrics[start.metric])
  return optax.apply_updates(params, updates)


def describe_start(record: Mapping[str, Any] | None) -> str:
  """``'w' (sha256 1a2b3c4d5e6f, prompt 0.014)``, or ``none (raw inits)``."""
  if not record:
    return "none (raw inits)"
  return (f"{record.get('weights')!r} (sha256 {str(record.get('digest'))[:12]}, prompt "
          f"{record.get('prompt')})")
