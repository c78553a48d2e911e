"""Task families for meta-training, on top of the ones registered in :mod:`tasks`.

``"mixed"`` (the shipped ``mlp_lopt`` weights) is a diverse family: digits MLPs
of varied width, depth, activation (relu, tanh, gelu, elu, swish) and batch
size, plus noisy ill-conditioned quadratics. ``"mlp_quad"`` (the shipped
``celo2_lopt`` weights) is the same without elu/swish, so that every task of
the held-out benchmark suite lies outside it. ``"broad"`` adds CNNs, small
transformer LMs, autoencoders, normalized MLPs and rotated quadratics, every
kind of held-out task but RL at other sizes and settings (none of the held-out
configurations). :func:`get_family` resolves these names first, then
``tasks.get_family``.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp

import tasks

__all__ = ["MixtureFamily", "available_families", "get_family"]


class MixtureFamily(tasks.TaskFamily):
  """Samples a member family with the given probabilities, then a config from it.

  Configs carry the member's name under ``"family"``.

  Args:
    name: the family's name.
    members: ``(family, weight)`` pairs; weights need not sum to one.
  """

  def __init__(self, name: str, members: Sequence[tuple[tasks.TaskFamily, float]]):
    self.name = name
    self._members = {f.name: f for f, _ in members}
    total = float(sum(w for _, w in members))
    self._names = [f.name for f, _ in members]
    self._probs = jnp.asarray([w / total for _, w in members], jnp.float32)

  def sample(self, key: jax.Array) -> dict[str, Any]:
    k_pick, k_cfg = jax.random.split(key)
    i = int(jax.random.choice(k_pick, len(self._names), p=self._probs))
    return {"family": self._names[i], **self._members[self._names[i]].sample(k_cfg)}

  def task(self, cfg: Mapping[str, Any]) -> tasks.Task:
    cfg = dict(cfg)
    return self._members[cfg.pop("family")].task(cfg)

  def contains(self, task: tasks.Task) -> bool:
    """Whether any member family can draw ``task``."""
    return any(f.contains(task) for f in self._members.values())

  def __repr__(self) -> str:
    return f"MixtureFamily({self.name!r}, members={self._names})"


def _quadratics() -> tasks.TaskFamily:
  """Noisy, ill-conditioned quadratics of dimension 10-1000 (a member of both mixtures)."""
  return tasks.ChoiceFamily(
      "quadratic_wide", lambda **c: tasks.get("quadratic", **c),
      {"dim": [10, 100, 1000], "condition": [1.0, 10.0, 100.0, 1000.0],
       "noise": [0.0, 0.1, 1.0], "seed": list(range(16))})


def _mixed() -> tasks.TaskFamily:
  mlps = tasks.ChoiceFamily(
      "digits_mlp_wide", lambda **c: tasks.get("digits_mlp", **c),
      {"hidden": [(16,), (32,), (64,), (128,), (32, 32), (64, 32), (64, 64), (32, 32, 32),
                  (128, 64, 32)],
       "activation": ["relu", "tanh", "gelu", "elu", "swish"],
       "batch_size": [32, 64, 128]})
  return MixtureFamily("mixed", [(mlps, 3.0), (_quadratics(), 1.0)])


def _mlp_quad() -> tasks.TaskFamily:
  # Disjoint from benchmarks' held-out suite: no CNN, no LM, no elu/swish, and no
  # MLP wider than 128 units (the held-out MLPs are (256, 256, 128) and elu/swish).
  mlps = tasks.ChoiceFamily(
      "digits_mlp_narrow", lambda **c: tasks.get("digits_mlp", **c),
      {"hidden": [(16,), (32,), (64,), (128,), (32, 32), (64, 64), (32, 32, 32)],
       "activation": ["relu", "tanh", "gelu"],
       "batch_size": [32, 64, 128]})
  return MixtureFamily("mlp_quad", [(mlps, 3.0), (_quadratics(), 1.0)])


def _broad() -> tasks.TaskFamily:
  # Every kind of held-out task but RL, at other sizes and settings: each member
  # below excludes the held-out configurations (tests/benchmarks/test_suites.py
  # checks it), e.g. no (128, 64) or 6-deep or >= 256-wide MLP, no (16, 32) or
  # (8, 16, 32) CNN, no dim-32 / 2-layer LM, no (32, 8) autoencoder, no 256-d quadratic.
  mlps = tasks.ChoiceFamily(
      "digits_mlp_broad", lambda **c: tasks.get("digits_mlp", **c),
      {"hidden": [(32,), (64,), (128,), (32, 32), (64, 64), (96, 48), (32, 32, 32),
                  (48,) * 4],
       "activation": ["relu", "tanh", "gelu", "elu", "swish", "selu"],
       "layer_norm": [False, True],
       "batch_size": [32, 64, 128]})
  cnns = tasks.ChoiceFamily(
      "digits_cnn_broad", lambda **c: tasks.get("digits_cnn", **c),
      {"channels": [(8,), (8, 8), (4, 8), (8, 16), (16,)],
       "activation": ["relu", "tanh", "gelu"],
       "batch_size": [32, 128]})
  lms = tasks.ChoiceFamily(
      "char_lm_small", lambda **c: tasks.get("char_lm", **c),
      {"dim": [16, 24], "layers": [1], "seq_len": [16, 24], "batch_size": [8, 16],
       "corpus": ["sklearn_descr", "python_stdlib"]})
  autoencoders = tasks.ChoiceFamily(
      "digits_autoencoder_broad", lambda **c: tasks.get("digits_autoencoder", **c),
      {"hidden": [(16, 4), (64, 16), (48,), (32, 16, 8)],
       "activation": ["relu", "tanh", "gelu"],
       "batch_size": [64, 128]})
  quads = tasks.ChoiceFamily(
      "quadratic_rotated", lambda **c: tasks.get("quadratic", **c),
      {"dim": [16, 64, 128], "condition": [10.0, 100.0, 1000.0],
       "noise": [0.0, 0.1], "rotate": [True, False], "seed": list(range(8))})
  return MixtureFamily("broad", [(mlps, 3.0), (cnns, 2.0), (lms, 1.5), (autoencoders, 1.0),
                                 (quads, 1.0)])


_FAMILIES: dict[str, Callable[[], tasks.TaskFamily]] = {
    "broad": _broad, "mixed": _mixed, "mlp_quad": _mlp_quad}


def available_families() -> list[str]:
  """Names usable as ``TrainConfig.task_family``: these plus ``tasks.available_families()``."""
  return sorted(set(_FAMILIES) | set(tasks.available_families()))


def get_family(name: str) -> tasks.TaskFamily:
  """Resolves a family name (meta_train's own first, then the task zoo's).

  Raises:
    KeyError: unknown name; the message lists the valid names.
  """
  if name in _FAMILIES:
    return _FAMILIES[name]()
  if name in tasks.available_families():
    return tasks.get_family(name)
  raise KeyError(f"unknown task family {name!r}; valid names: {', '.join(available_families())}")
