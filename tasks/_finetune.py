"""Offline fine-tuning tasks that start from pretrained parameters.

The tasks of "Narrowing the Focus: Learned Optimizers for Pretrained Models"
(Kristiansen et al. 2024, arXiv:2408.09310): one pretrained backbone, fine-tuned
on a family of related targets, so a learned optimizer can be specialized to it.

* :class:`FineTuneDigits` (``"finetune_digits"``; ``backbone="digits_mlp"`` for the MLP): a
  digits CNN or MLP pretrained on digits 0-4, fine-tuned on another class subset
  (a new head), the ten classes, transformed digits (rotated, shifted, noisy,
  inverted) or few-shot subsets (:func:`tasks.digits_variant`).
* :class:`FineTuneLM` (``"finetune_char_lm"``): the char-level transformer
  pretrained on the ``"sklearn_descr"`` corpus, fine-tuned on ``"python_stdlib"``
  (or a slice of it).

``init(key)`` returns the pretrained parameters as loaded; only a new
classification head (when the target's label set differs from the source's) is
drawn from ``key``, and noise is added only with ``init_noise > 0``.

Targets are split for specialization experiments: meta-train on
``SPECIALIZATION_TARGETS`` of the backbone pretrained with seed 0; evaluate on
``HELD_OUT_TARGETS`` and on every target of the backbones of seeds 1 and 2
(``HELD_OUT_SEEDS``, other initializations). ``tasks.get_family("finetune_digits")``
is the specialization set, ``"finetune_digits_held_out"`` the rest.

Checkpoints are read from ``pretrained_dir`` (default: the shipped
``tasks/pretrained``, rebuilt by ``python -m tasks.pretrain --all``); see
:mod:`tasks._pretrain` and docs/finetune.md.
"""

from __future__ import annotations

import inspect
import pathlib
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tasks._base import ChoiceFamily, Task, _canonical
from tasks._digit_variants import DIGIT_SOURCES, DigitsVariantTask, digits_variant
from tasks._image import ImageCNN, ImageMLP
from tasks._lm import CharLM, embedded_text
from tasks._pretrain import PRETRAIN_MODELS, load_pretrained, pretrained_path

__all__ = ["FINETUNE_TARGETS", "FineTuneDigits", "FineTuneLM", "HELD_OUT_SEEDS",
           "HELD_OUT_TARGETS", "SPECIALIZATION_SEEDS", "SPECIALIZATION_TARGETS",
           "finetune_configs", "finetune_family", "finetune_target"]

_IMAGE_CLASSES = {"digits_cnn": ImageCNN, "digits_mlp": ImageMLP}
#: ``FineTuneDigits.loss_scale`` measures the initial loss on this many training examples.
_SCALE_EXAMPLES = 256

#: Fine-tuning targets of a backbone pretrained on digits 0-4, by name. ``classes``
#: None keeps the source's classes (and its head).
FINETUNE_TARGETS: dict[str, dict[str, Any]] = {
    # specialization
    "classes_5to9": {"classes": (5, 6, 7, 8, 9)},
    "rotate90": {"transform": "rotate90"},
    "shift1": {"transform": "shift1"},
    "noise": {"transform": "noise"},
    "invert": {"transform": "invert"},
    "shots10": {"shots": 10},
    "classes_5to9_shots10": {"classes": (5, 6, 7, 8, 9), "shots": 10},
    "rotate90_shots10": {"transform": "rotate90", "shots": 10},
    # held out
    "classes_odd": {"classes": (1, 3, 5, 7, 9)},
    "classes_even": {"classes": (0, 2, 4, 6, 8)},
    "rotate180": {"transform": "rotate180"},
    "rotate30": {"transform": "rotate30"},
    "shift2": {"transform": "shift2"},
    "invert_noise": {"transform": "invert+noise"},
    "shots5": {"shots": 5},
    "classes_5to9_rotate90": {"classes": (5, 6, 7, 8, 9), "transform": "rotate90"},
    # another parameter tree (a 10-class head): no specialized optimizer of the
    # 5-class backbone applies to it
    "classes_0to9": {"classes": tuple(range(10))},
}
#: Targets to meta-train a specialized optimizer on (with the seed-0 backbone).
SPECIALIZATION_TARGETS = ("classes_5to9", "rotate90", "shift1", "noise", "invert", "shots10",
                          "classes_5to9_shots10", "rotate90_shots10")
#: Targets held out of specialization: new transforms, label sets, shot counts, combinations.
HELD_OUT_TARGETS = ("classes_odd", "classes_even", "rotate180", "rotate30", "shift2",
                    "invert_noise", "shots5", "classes_5to9_rotate90")
#: Pretraining seeds of the backbone specialized on; the others are held-out initializations.
SPECIALIZATION_SEEDS = (0,)
HELD_OUT_SEEDS = (1, 2)


def finetune_target(name: str) -> dict[str, Any]:
  """The :class:`FineTuneDigits` arguments of a named target of ``FINETUNE_TARGETS``.

  Example::

    tasks.FineTuneDigits(pretrain_seed=1, **tasks.finetune_target("rotate90"))

  Returns:
    ``{"classes": tuple or None (the source's), "transform": str, "shots": int}``.

  Raises:
    KeyError: an unknown name; the message lists the valid ones.
  """
  if name not in FINETUNE_TARGETS:
    raise KeyError(f"unknown fine-tuning target {name!r}; valid: {', '.join(FINETUNE_TARGETS)}")
  t = FINETUNE_TARGETS[name]
  return {"classes": t.get("classes"), "transform": t.get("transform", "none"),
          "shots": t.get("shots", 0)}


def _pretrained(backbone: str, source: str, seed: int, pretrained_dir, kind: str):
  """Loads a checkpoint after checking ``backbone`` is a ``kind`` ("image"/"text") model."""
  valid = [m for m in PRETRAIN_MODELS if (m in _IMAGE_CLASSES) == (kind == "image")]
  if backbone not in valid:
    raise ValueError(f"unknown {kind} backbone {backbone!r}; valid: {', '.join(valid)}")
  if source not in PRETRAIN_MODELS[backbone].sources:
    raise ValueError(f"unknown source {source!r} for backbone {backbone!r}; valid: "
                     f"{', '.join(PRETRAIN_MODELS[backbone].sources)}")
  pre = load_pretrained(pretrained_path(backbone, source, seed, pretrained_dir))
  m = pre.manifest
  if (m["model"], m["source"], m["seed"]) != (backbone, source, seed):
    raise ValueError(f"the checkpoint for ({backbone}, {source}, seed {seed}) holds "
                     f"({m['model']}, {m['source']}, seed {m['seed']})")
  return pre


def _perturb(params: Any, key: jax.Array, scale: float, skip: str | None = None) -> Any:
  """A fresh copy of ``params``, plus ``scale`` times Gaussian noise except under ``skip``."""
  params = jax.tree.map(jnp.array, params)  # a copy: callers may donate their params
  if not scale:
    return params
  leaves, treedef = jax.tree.flatten_with_path(params)
  # One draw for every entry (one small program), cut into the leaves' shapes.
  noise = scale * jax.random.normal(key, (sum(x.size for _, x in leaves),))
  out, start = [], 0
  for path, x in leaves:
    if skip is None or path[0].key != skip:
      x = x + noise[start:start + x.size].reshape(x.shape).astype(x.dtype)
    out.append(x)
    start += x.size
  return jax.tree.unflatten(treedef, out)


class FineTuneDigits(DigitsVariantTask):
  """A pretrained digits classifier fine-tuned on a variant of the digits.

  The target is :func:`tasks.digits_variant` of (``classes``, ``transform``,
  ``shots``, ``shot_seed``). The backbone is the checkpoint
  ``<pretrained_dir>/<backbone>_<source>_seed<pretrain_seed>``; its architecture
  comes from the checkpoint's manifest. ``init(key)`` returns its parameters;
  when ``classes`` differ from the source's (another label set, even of the same
  size) the last Dense layer is replaced by a fresh one drawn from ``key``
  (weights ``N(0, 1 / fan_in)``, zero bias).
  ``loss_scale`` is the larger of ``log(len(classes))`` (the loss of chance) and
  the loss of ``init(jax.random.key(0))`` on the first 256 training examples, so a
  confident pretrained model on a shifted target still normalizes to about 1.

  Example::

    task = tasks.FineTuneDigits(classes=(5, 6, 7, 8, 9))          # new head
    task = tasks.FineTuneDigits(classes=None, transform="rotate90", shots=10)

  Args:
    backbone: "digits_cnn" or "digits_mlp" (keys of ``PRETRAIN_MODELS``).
    source: the classes it was pretrained on (a key of ``DIGIT_SOURCES``).
    pretrain_seed: the pretraining seed (0 specializes; 1, 2 are held out).
    classes: the target digits, relabelled in this order; None: the source's.
    transform: a key of ``DIGIT_TRANSFORMS`` (or several joined by ``+``).
    shots: training examples per class (0: all).
    shot_seed: seed of the few-shot subset.
    batch_size: training batch size.
    init_noise: std of Gaussian noise added to the pretrained parameters by ``init``.
    pretrained_dir: the directory of checkpoints (None: the shipped ``tasks/pretrained``).

  Raises:
    FileNotFoundError: the checkpoint is missing; the message names the command
      that builds it.
    ValueError, KeyError: a bad backbone, source, classes, shots or transform.
  """

  def __init__(self, backbone: str = "digits_cnn", source: str = "digits_0to4",
               pretrain_seed: int = 0, classes: Sequence[int] | None = (5, 6, 7, 8, 9),
               transform: str = "none", shots: int = 0, shot_seed: int = 0,
               batch_size: int = 64, init_noise: float = 0.0,
               pretrained_dir: str | None = None):
    pre = _pretrained(backbone, source, int(pretrain_seed), pretrained_dir, "image")
    self.backbone, self.source, self.pretrain_seed = backbone, source, int(pretrain_seed)
    self.classes = DIGIT_SOURCES[source] if classes is None else tuple(int(c) for c in classes)
    self.transform, self.shots, self.shot_seed = transform, int(shots), int(shot_seed)
    self.init_noise = float(init_noise)
    self.pretrained_dir = None if pretrained_dir is None else str(pretrained_dir)
    base = _IMAGE_CLASSES[backbone](**pre.manifest["config"])
    super().__init__(base, digits_variant(self.classes, transform, self.shots, self.shot_seed),
                     batch_size)
    self.name = "finetune_digits" if backbone == "digits_cnn" else f"finetune_{backbone}"
    self.new_head = self.classes != DIGIT_SOURCES[source]
    # The classifier head is the last Dense layer (Dense_0 of the CNN, Dense_<depth> of the MLP).
    self.head = max((k for k in pre.params if k.startswith("Dense_")),
                    key=lambda k: int(k.split("_")[1]))
    self._pretrained = pre.params
    # The first 256 training examples (cycled): one shape for every target, so the
    # eager ops compile once per process.
    x, y = self.data.split("train")
    idx = np.arange(_SCALE_EXAMPLES) % x.shape[0]
    start = float(self.loss(self.init(jax.random.key(0)), None, (x[idx], y[idx])))
    if np.isfinite(start):
      self.loss_scale = max(self.loss_scale, start)

  def config(self) -> dict[str, Any]:
    return {"backbone": self.backbone, "source": self.source,
            "pretrain_seed": self.pretrain_seed, "classes": list(self.classes),
            "transform": self.transform, "shots": self.shots, "shot_seed": self.shot_seed,
            "batch_size": self.batch_size, "init_noise": self.init_noise,
            "pretrained_dir": self.pretrained_dir}

  def init(self, key: jax.Array) -> Any:
    """The pretrained parameters; a fresh head from ``key`` when the label set is new."""
    k_head, k_noise = jax.random.split(key)
    params = dict(self._pretrained)
    if self.new_head:  # LeCun normal weights (untruncated: cheaper to compile), zero bias
      shape = (self._pretrained[self.head]["kernel"].shape[0], self.data.num_classes)
      params[self.head] = {"kernel": jax.random.normal(k_head, shape) / np.sqrt(shape[0]),
                           "bias": jnp.zeros(shape[1:])}
    return _perturb(params, k_noise, self.init_noise, self.head if self.new_head else None)

  def pretrained_params(self) -> Any:
    """The checkpoint's parameters as loaded (source head included)."""
    return self._pretrained


class FineTuneLM(CharLM):
  """The pretrained char-level transformer fine-tuned on another corpus (or a slice).

  The text is ``embedded_text(corpus)[start:start + length]`` (``length=0``: to
  the end), split 90/10 into train and test like :class:`CharLM`; the
  architecture comes from the checkpoint's manifest. The vocabulary (ASCII) is
  shared, so every parameter, the output layer included, is pretrained.

  Example::

    task = tasks.FineTuneLM(corpus="python_stdlib", length=200_000)

  Args:
    backbone: "char_lm" (a key of ``PRETRAIN_MODELS``).
    source: the corpus it was pretrained on.
    pretrain_seed: the pretraining seed.
    corpus: the target corpus (one of ``CORPORA``).
    start, length: the slice of the target corpus (``length=0``: to the end).
    batch_size, eval_batch_size: windows per training / evaluation batch.
    init_noise: std of Gaussian noise added to the pretrained parameters by ``init``.
    pretrained_dir: the directory of checkpoints (None: the shipped ``tasks/pretrained``).

  Raises:
    FileNotFoundError: the checkpoint is missing; the message names the command
      that builds it.
  """

  def __init__(self, backbone: str = "char_lm", source: str = "sklearn_descr",
               pretrain_seed: int = 0, corpus: str = "python_stdlib", start: int = 0,
               length: int = 0, batch_size: int = 16, eval_batch_size: int = 256,
               init_noise: float = 0.0, pretrained_dir: str | None = None):
    pre = _pretrained(backbone, source, int(pretrain_seed), pretrained_dir, "text")
    arch = {k: pre.manifest["config"][k] for k in ("dim", "heads", "layers", "seq_len")}
    super().__init__(**arch, batch_size=batch_size, corpus=corpus,
                     eval_batch_size=eval_batch_size)
    self.backbone, self.source, self.pretrain_seed = backbone, source, int(pretrain_seed)
    self.start, self.length, self.init_noise = int(start), int(length), float(init_noise)
    self.pretrained_dir = None if pretrained_dir is None else str(pretrained_dir)
    self.name = "finetune_char_lm"
    codes = embedded_text(corpus)
    if self.start < 0 or self.length < 0 or self.start >= codes.size:
      raise ValueError(f"need 0 <= start < {codes.size} and length >= 0, got start="
                       f"{self.start}, length={self.length}")
    text = codes[self.start:self.start + self.length if self.length else None]
    n = int(0.9 * text.size)
    if text.size - n <= self.seq_len + 1:
      raise ValueError(f"the slice holds {text.size} characters; its 10 % test split must be "
                       f"longer than seq_len + 1 = {self.seq_len + 1}")
    self._splits = {"train": jnp.asarray(text[:n], jnp.int32),
                    "test": jnp.asarray(text[n:], jnp.int32)}
    self._pretrained = pre.params

  def config(self) -> dict[str, Any]:
    return {"backbone": self.backbone, "source": self.source,
            "pretrain_seed": self.pretrain_seed, "corpus": self.corpus, "start": self.start,
            "length": self.length, "batch_size": self.batch_size,
            "eval_batch_size": self.eval_batch_size, "init_noise": self.init_noise,
            "pretrained_dir": self.pretrained_dir}

  def init(self, key: jax.Array) -> Any:
    """The pretrained parameters (plus ``init_noise`` noise drawn from ``key``)."""
    return _perturb(self._pretrained, key, self.init_noise)

  def pretrained_params(self) -> Any:
    """The checkpoint's parameters as loaded."""
    return self._pretrained


def finetune_configs(split: str = "specialization", *, backbone: str = "digits_cnn",
                     source: str = "digits_0to4",
                     pretrained_dir: str | pathlib.Path | None = None) -> list[dict[str, Any]]:
  """The :class:`FineTuneDigits` configs of a target split.

  * ``"specialization"``: ``SPECIALIZATION_TARGETS`` with the ``SPECIALIZATION_SEEDS`` backbone;
  * ``"held_out"``: ``HELD_OUT_TARGETS`` with that backbone, and the specialization and
    held-out targets with the ``HELD_OUT_SEEDS`` backbones (other initializations);
  * ``"all"``: the targets of both splits with every seed (``classes_0to9``, a
    10-class head and so another parameter tree, is in no split).

  Returns:
    Full configs (``classes`` explicit), in a fixed order.
  """
  seeds = SPECIALIZATION_SEEDS + HELD_OUT_SEEDS
  pairs = {"specialization": [(t, s) for s in SPECIALIZATION_SEEDS
                              for t in SPECIALIZATION_TARGETS],
           "held_out": ([(t, s) for s in SPECIALIZATION_SEEDS for t in HELD_OUT_TARGETS]
                        + [(t, s) for s in HELD_OUT_SEEDS
                           for t in SPECIALIZATION_TARGETS + HELD_OUT_TARGETS]),
           "all": [(t, s) for s in seeds for t in SPECIALIZATION_TARGETS + HELD_OUT_TARGETS]}
  if split not in pairs:
    raise ValueError(f"unknown split {split!r}; valid: {', '.join(pairs)}")
  if source not in DIGIT_SOURCES:
    raise ValueError(f"unknown source {source!r}; valid: {', '.join(DIGIT_SOURCES)}")
  configs = []
  for target, seed in pairs[split]:
    t = finetune_target(target)
    configs.append({"backbone": backbone, "source": source, "pretrain_seed": seed,
                    "classes": list(t["classes"] or DIGIT_SOURCES[source]),
                    "transform": t["transform"], "shots": t["shots"], "shot_seed": 0,
                    "pretrained_dir": None if pretrained_dir is None else str(pretrained_dir)})
  return configs


class _ConfigListFamily(ChoiceFamily):
  """A family drawing uniformly from an explicit list of configs."""

  def __init__(self, name: str, builder, configs: Sequence[Mapping[str, Any]]):
    super().__init__(name, builder, {})
    self._configs = [dict(c) for c in configs]

  def sample(self, key: jax.Array) -> dict[str, Any]:
    return dict(self._configs[int(jax.random.randint(key, (), 0, len(self._configs)))])

  def configs(self) -> list[dict[str, Any]]:
    return [dict(c) for c in self._configs]

  def contains(self, task: Task) -> bool:
    """Whether ``task`` has the builder's class and the config of a member.

    Like :meth:`ChoiceFamily.contains`, but the defaults of the fields the configs
    leave out come from the builder's signature, so no member is built (which
    would load a checkpoint and compile).
    """
    if type(task) is not self._builder:
      return False
    defaults = {k: p.default for k, p in inspect.signature(self._builder).parameters.items()}
    target = _canonical(task.config())
    return any(_canonical({**defaults, **c}) == target for c in self._configs)

  def __repr__(self) -> str:
    return f"{type(self).__name__}({self.name!r}, {len(self._configs)} configs)"


def finetune_family(split: str = "specialization", *, backbone: str = "digits_cnn",
                    source: str = "digits_0to4",
                    pretrained_dir: str | pathlib.Path | None = None) -> ChoiceFamily:
  """The family of :class:`FineTuneDigits` tasks of a target split (:func:`finetune_configs`).

  ``family.contains(task)`` is true exactly for tasks with one of these configs
  (other fields at their defaults), so held-out targets can be kept out of
  meta-training.

  Example::

    family = tasks.get_family("finetune_digits")               # specialization targets
    held_out = tasks.get_family("finetune_digits", split="held_out")
    task = held_out.task(held_out.sample(jax.random.key(0)))
    assert not family.contains(task)
  """
  name = "finetune_digits" + ("" if split == "specialization" else f"_{split}")
  configs = finetune_configs(split, backbone=backbone, source=source,
                             pretrained_dir=pretrained_dir)
  return _ConfigListFamily(name, FineTuneDigits, configs)

