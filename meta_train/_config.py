"""TrainConfig: everything that defines a meta-training run, nesting the unroll's and
the estimator's own configs."""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any, Mapping

import jax

from meta_train._estimators import EstimatorConfig
from meta_train._unroll import UnrollConfig

__all__ = ["TrainConfig", "trainable_mask"]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Everything that defines a meta-training run (library code takes no flags).

  The unroll's settings live on :class:`~meta_train.UnrollConfig` and the
  estimator's on :class:`~meta_train.EstimatorConfig`; this config nests them.

  Example::

    TrainConfig(lopt="mlp_lopt", task_family="mixed",
                unroll=UnrollConfig(trunc_length=20, min_horizon=100, max_horizon=400),
                estimator=EstimatorConfig("pes", sigma=0.01), outer_steps=5000)

  Attributes:
    lopt: registered learned optimizer name (``lopt.available_learned()``).
    lopt_config: its constructor arguments.
    task_family: a family name (``meta_train.available_families()``).
    unroll: how task instances are unrolled (horizons, truncation, augmentation).
    estimator: the meta-gradient estimator and its options.
    num_tasks: task instances per group (divisible by the number of devices).
    num_configs: task configurations (groups), each compiled once, used in turn.
    outer_steps: total outer (meta) steps.
    learning_rate: Adam learning rate on meta-params.
    clip_norm: global-norm clipping of the meta-gradient before Adam.
    seed: the root of all randomness.
    checkpoint_every: outer steps between orbax checkpoints.
    max_to_keep: checkpoints kept.
    snapshot_every: every this many outer steps (and at step 0), the meta-params
      are also saved as loadable weights in ``<workdir>/snapshots/step_<N>/``
      (small; kept for choosing a checkpoint on validation tasks afterwards);
      0: none.
    init_weights: saved weights to start from (path), or None for fresh ones.
    trainable: a regular expression; only the meta-parameters whose path
      (``jax.tree_util.keystr``, e.g. ``['bias']`` or ``['net'][0]['w']``) it
      matches (``re.search``) are meta-trained, the rest keep their initial values
      (:func:`trainable_mask`); None: all of them. Fewer meta-parameters give a
      less noisy ES/PES estimate (docs/meta_training.md, "Signal or noise?").
    inject_nan_steps: outer steps whose meta-gradient is replaced by NaN
      (fault injection for tests of the skip logic).
  """

  lopt: str = "mlp_lopt"
  lopt_config: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  task_family: str = "digits_mlp"
  unroll: UnrollConfig = dataclasses.field(default_factory=UnrollConfig)
  estimator: EstimatorConfig = dataclasses.field(default_factory=EstimatorConfig)
  num_tasks: int = 8
  num_configs: int = 1
  outer_steps: int = 1000
  learning_rate: float = 1e-3
  clip_norm: float = 1.0
  seed: int = 0
  checkpoint_every: int = 100
  max_to_keep: int = 2
  snapshot_every: int = 0
  init_weights: str | None = None
  trainable: str | None = None
  inject_nan_steps: tuple[int, ...] = ()

  def __post_init__(self):
    for name, cls in (("unroll", UnrollConfig), ("estimator", EstimatorConfig)):
      if not isinstance(getattr(self, name), cls):
        raise TypeError(f"{name} must be a {cls.__name__}, got {getattr(self, name)!r}")
    if not isinstance(self.lopt_config, Mapping):
      raise ValueError(f"lopt_config must be a mapping, got {self.lopt_config!r}")
    for name in ("num_tasks", "num_configs", "outer_steps", "checkpoint_every", "max_to_keep"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
    if self.snapshot_every < 0:
      raise ValueError(f"snapshot_every must be >= 0, got {self.snapshot_every}")
    if not self.learning_rate > 0:
      raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
    if not self.clip_norm > 0:
      raise ValueError(f"clip_norm must be > 0, got {self.clip_norm}")
    if self.trainable is not None:
      try:
        re.compile(self.trainable)
      except re.error as e:
        raise ValueError(f"trainable={self.trainable!r} is not a regular expression ({e})"
                         ) from None

  def to_json(self) -> dict[str, Any]:
    """A JSON-ready dict (nested like the dataclasses); :meth:`from_json` inverts it."""
    d = dataclasses.asdict(self)
    d["lopt_config"] = dict(self.lopt_config)
    return json.loads(json.dumps(d))

  @classmethod
  def from_json(cls, d: Mapping[str, Any]) -> "TrainConfig":
    """Builds a config from :meth:`to_json`'s dict, or from an older flat one.

    Older runs saved the unroll fields and ``sigma`` at the top level and the
    estimator as a name; both forms give the same config.

    Raises:
      ValueError: unknown fields or invalid values.
    """
    d = dict(d)
    unroll_names = {f.name for f in dataclasses.fields(UnrollConfig)}
    unroll = dict(d.pop("unroll", None) or {})
    unroll.update({k: d.pop(k) for k in list(d) if k in unroll_names})
    for k in ("param_scale_range", "loss_scale_range"):
      if k in unroll:
        unroll[k] = tuple(unroll[k])
    est = d.pop("estimator", None) or {}
    est = {"name": est} if isinstance(est, str) else dict(est)
    if "sigma" in d:
      est["sigma"] = d.pop("sigma")
    if "inject_nan_steps" in d:
      d["inject_nan_steps"] = tuple(d["inject_nan_steps"])
    unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
      raise ValueError(f"unknown TrainConfig fields {sorted(unknown)}")
    try:
      return cls(unroll=UnrollConfig(**unroll), estimator=EstimatorConfig(**est), **d)
    except TypeError as e:
      raise ValueError(str(e)) from None


def trainable_mask(meta_params: Any, pattern: str | None) -> Any:
  """Which meta-parameters ``TrainConfig(trainable=pattern)`` trains.

  Args:
    meta_params: a learned optimizer's meta-parameters (arrays or shapes).
    pattern: a regular expression searched in each leaf's ``jax.tree_util.keystr``
      path, or None for every leaf.

  Returns:
    A pytree of bools shaped like ``meta_params``' leaves.

  Raises:
    ValueError: ``pattern`` matches no leaf (the message lists the paths).
  """
  paths = [jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_leaves_with_path(meta_params)]
  keep = [pattern is None or re.search(pattern, p) is not None for p in paths]
  if not any(keep):
    raise ValueError(f"trainable={pattern!r} matches no meta-parameter; their paths: "
                     f"{', '.join(paths)}")
  return jax.tree.unflatten(jax.tree.structure(meta_params), keep)
