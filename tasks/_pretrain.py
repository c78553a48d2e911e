"""Pretrained backbones for the fine-tuning tasks: train on a source, save with orbax.

A checkpoint directory ``<pretrained_dir>/<model>_<source>_seed<k>/`` holds::

  manifest.json   the model (its task name and config), source, seed, steps, final losses
  params/         the parameters, written by orbax (no pickle)

The checkpoints the shipped fine-tuning tasks use live in ``tasks/pretrained/``
(``SHIPPED``); one command rebuilds all of them (a few minutes on one CPU core)::

  python -m tasks.pretrain --all

and one checkpoint at a time::

  python -m tasks.pretrain --model=digits_cnn --source=digits_0to4 --seed=0 --out=/tmp/pre
"""

from __future__ import annotations

import functools
import json
import pathlib
import time
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tasks._base import Task
from tasks._datasets import digits
from tasks._digit_variants import DIGIT_SOURCES, DigitsVariantTask, digits_variant
from tasks._image import ImageCNN, ImageMLP
from tasks._lm import CORPORA, CharLM
from tasks._train import train

__all__ = ["PRETRAIN_MODELS", "SHIPPED", "Pretrained", "PretrainSpec", "build_shipped",
           "load_pretrained", "pretrain_model", "pretrained_path", "save_pretrained"]

FORMAT = "lopt-pretrained/1"
MANIFEST = "manifest.json"
ARRAYS = "params"
#: Where the shipped checkpoints live (``pretrained_dir=None`` means this directory).
SHIPPED_DIR = pathlib.Path(__file__).resolve().parent / "pretrained"


class PretrainSpec(NamedTuple):
  """How a backbone is pretrained: its architecture (a registry task and config), Adam."""
  task: str
  config: Mapping[str, Any]
  sources: tuple[str, ...]
  steps: int
  learning_rate: float


_TASK_CLASSES: dict[str, Callable[..., Task]] = {
    "digits_cnn": ImageCNN, "digits_mlp": ImageMLP, "char_lm": CharLM}

#: Backbones by name: the task whose model they are, its config, valid sources, steps, Adam rate.
PRETRAIN_MODELS: dict[str, PretrainSpec] = {
    "digits_cnn": PretrainSpec("digits_cnn", {"channels": (8, 16), "batch_size": 64},
                               tuple(DIGIT_SOURCES), 1500, 3e-3),
    "digits_mlp": PretrainSpec("digits_mlp", {"hidden": (64, 32), "batch_size": 64},
                               tuple(DIGIT_SOURCES), 2000, 1e-3),
    "char_lm": PretrainSpec("char_lm", {"dim": 32, "heads": 2, "layers": 1, "seq_len": 32,
                                        "batch_size": 32}, CORPORA, 2000, 3e-3),
}

#: The checkpoints shipped in ``tasks/pretrained``: (model, source, seed).
SHIPPED: tuple[tuple[str, str, int], ...] = (
    *(("digits_cnn", "digits_0to4", s) for s in range(3)),
    *(("digits_mlp", "digits_0to4", s) for s in range(3)),
    ("char_lm", "sklearn_descr", 0),
)


class Pretrained(NamedTuple):
  """A pretrained backbone: its parameters and its manifest (a JSON-serializable dict)."""
  params: Any
  manifest: dict[str, Any]


def check_pretrain_args(model: str, source: str, seed: int = 0,
                        steps: int | None = None) -> None:
  """Raises ``ValueError`` (one line, naming the valid values) for a bad combination."""
  if model not in PRETRAIN_MODELS:
    raise ValueError(f"unknown model {model!r}; valid: {', '.join(PRETRAIN_MODELS)}")
  if source not in PRETRAIN_MODELS[model].sources:
    raise ValueError(f"unknown source {source!r} for model {model!r}; valid: "
                     f"{', '.join(PRETRAIN_MODELS[model].sources)}")
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
    raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
  if steps is not None and (isinstance(steps, bool) or not isinstance(steps, (int, np.integer))
                            or steps < 1):
    raise ValueError(f"steps must be an integer >= 1, got {steps!r}")


def source_task(model: str, source: str, model_config: Mapping[str, Any] | None = None) -> Task:
  """The task a backbone is pretrained on: ``model``'s architecture on ``source``.

  The same arguments give the same task object, so pretraining several seeds
  compiles once.
  """
  check_pretrain_args(model, source)
  return _source_task(model, source, json.dumps(dict(model_config or {}), sort_keys=True))


@functools.cache
def _source_task(model: str, source: str, model_config: str) -> Task:
  spec = PRETRAIN_MODELS[model]
  cfg = {**spec.config, **json.loads(model_config)}
  if spec.task == "char_lm":
    return CharLM(**{**cfg, "corpus": source})
  base = _TASK_CLASSES[spec.task](**{**cfg, "dataset": "digits"})
  return DigitsVariantTask(base, digits_variant(DIGIT_SOURCES[source]))


def pretrained_path(model: str, source: str, seed: int,
                    pretrained_dir: str | pathlib.Path | None = None) -> pathlib.Path:
  """The checkpoint directory ``<pretrained_dir>/<model>_<source>_seed<seed>``.

  ``pretrained_dir=None`` is the shipped directory ``tasks/pretrained``.
  """
  root = SHIPPED_DIR if pretrained_dir is None else pathlib.Path(pretrained_dir).expanduser()
  return root / f"{model}_{source}_seed{int(seed)}"


def pretrain_model(model: str = "digits_cnn", source: str = "digits_0to4", *, seed: int = 0,
                   steps: int | None = None, model_config: Mapping[str, Any] | None = None,
                   learning_rate: float | None = None) -> Pretrained:
  """Trains backbone ``model`` on ``source`` with ``optax.adam`` from seed ``seed``.

  Example::

    pre = tasks.pretrain_model("digits_cnn", "digits_0to4", seed=0, steps=200)
    tasks.save_pretrained("/tmp/pre/digits_cnn_digits_0to4_seed0", pre)
    task = tasks.get("finetune_digits", pretrained_dir="/tmp/pre")

  Args:
    model: a key of ``PRETRAIN_MODELS``.
    source: one of the model's sources (``PRETRAIN_MODELS[model].sources``).
    seed: initialization and batch seed.
    steps: Adam steps (default: the model's).
    model_config: overrides of the model's task config (a smaller architecture).
    learning_rate: Adam's rate (default: the model's).

  Returns:
    :class:`Pretrained`: the parameters and a manifest with the model's task
    name and full config, the source, seed, steps, learning rate, wall-clock
    seconds and the final train/test metrics (whole splits for digits; 256
    windows for text).

  Raises:
    ValueError: unknown model or source (the message lists the valid ones), bad seed or steps.
  """
  check_pretrain_args(model, source, seed, steps)
  spec = PRETRAIN_MODELS[model]
  steps = spec.steps if steps is None else int(steps)
  lr = spec.learning_rate if learning_rate is None else float(learning_rate)
  task = source_task(model, source, model_config)
  start = time.perf_counter()
  params = jax.block_until_ready(train(task, _adam(lr), steps, jax.random.key(seed)).params)
  seconds = time.perf_counter() - start
  config = task.config() if spec.task == "char_lm" else task.base_config
  manifest = {
      "format": FORMAT, "model": model, "task": spec.task, "config": config,
      "source": source, "seed": int(seed), "steps": steps, "learning_rate": lr,
      "num_classes": getattr(getattr(task, "data", None), "num_classes", None),
      "seconds": round(seconds, 2),
  }
  key = jax.random.key(seed)
  for split in ("train", "test"):
    for name, value in _metrics(task)(params, key, task.eval_batch(key, split)).items():
      manifest[f"{split}_{name}"] = float(value)
  return Pretrained(jax.tree.map(jnp.asarray, params), json.loads(json.dumps(manifest)))


@functools.cache
def _adam(learning_rate: float) -> optax.GradientTransformation:
  return optax.adam(learning_rate)  # one object per rate: ``train`` compiles once per rate


@functools.cache
def _metrics(task: Task):
  return jax.jit(task.metrics)


def save_pretrained(path: str | pathlib.Path, pretrained: Pretrained) -> pathlib.Path:
  """Writes ``pretrained`` to the directory ``path`` (orbax arrays + ``manifest.json``).

  An existing checkpoint at ``path`` is replaced. Returns the absolute path.
  """
  import orbax.checkpoint as ocp

  path = pathlib.Path(path).expanduser().resolve()
  path.mkdir(parents=True, exist_ok=True)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(path / ARRAYS, jax.tree.map(np.asarray, pretrained.params), force=True)
    ckptr.wait_until_finished()
  (path / MANIFEST).write_text(json.dumps(pretrained.manifest, indent=1) + "\n")
  return path


def _command(model: str, source: str, seed: int, out: pathlib.Path) -> str:
  return (f"python -m tasks.pretrain --model={model} --source={source} --seed={seed}"
          + ("" if out == SHIPPED_DIR else f" --out={out}"))


def read_pretrained_manifest(path: str | pathlib.Path) -> dict[str, Any]:
  """The manifest of checkpoint directory ``path``.

  Raises:
    FileNotFoundError: no checkpoint at ``path``; the message names the command
      that builds it when ``path`` is named ``<model>_<source>_seed<k>``.
    ValueError: a malformed manifest.
  """
  path = pathlib.Path(path).expanduser()
  f = path / MANIFEST
  if not f.is_file():
    hint = ""
    for model, spec in PRETRAIN_MODELS.items():
      for source in spec.sources:
        prefix = f"{model}_{source}_seed"
        seed = path.name[len(prefix):]
        if path.name.startswith(prefix) and seed.isdigit():
          command = _command(model, source, int(seed), path.parent.resolve())
          hint = f"; build it with `{command}`"
    raise FileNotFoundError(f"no pretrained checkpoint at {path} (no {MANIFEST}){hint}")
  try:
    manifest = json.loads(f.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{f}: not valid JSON ({e})") from None
  missing = [k for k in ("format", "model", "config", "source", "seed")
             if not isinstance(manifest, dict) or k not in manifest]
  if missing or manifest["format"] != FORMAT:
    raise ValueError(f"{f}: not a {FORMAT} manifest (missing {missing or 'the format'})")
  return manifest


@functools.lru_cache(maxsize=32)
def _load(path: str, stamp: int) -> Pretrained:
  del stamp  # part of the cache key: a rewritten checkpoint is read again
  import orbax.checkpoint as ocp

  manifest = read_pretrained_manifest(path)
  task = source_task(manifest["model"], manifest["source"], manifest["config"])
  target = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype),
                        jax.eval_shape(task.init, jax.random.key(0)))
  with ocp.StandardCheckpointer() as ckptr:
    params = ckptr.restore(pathlib.Path(path) / ARRAYS, target)
  return Pretrained(jax.tree.map(jnp.asarray, params), manifest)


def load_pretrained(path: str | pathlib.Path) -> Pretrained:
  """Reads the checkpoint at ``path`` (cached; read again when its manifest changes).

  Raises:
    FileNotFoundError: no checkpoint there; the message names the pretraining command.
    ValueError: a malformed manifest, or arrays that do not fit the manifest's model.
  """
  path = pathlib.Path(path).expanduser().resolve()
  if not (path / MANIFEST).is_file():
    read_pretrained_manifest(path)  # raises FileNotFoundError naming the command
  return _load(str(path), (path / MANIFEST).stat().st_mtime_ns)


def build_shipped(out: str | pathlib.Path | None = None, *,
                  log: Callable[[str], None] = print) -> list[pathlib.Path]:
  """Pretrains and saves every checkpoint of ``SHIPPED`` under ``out`` (default: shipped dir)."""
  digits()  # load once before timing
  paths = []
  for model, source, seed in SHIPPED:
    pre = pretrain_model(model, source, seed=seed)
    paths.append(save_pretrained(pretrained_path(model, source, seed, out), pre))
    log(summary(pre, paths[-1]))
  return paths


def summary(pre: Pretrained, path: pathlib.Path) -> str:
  """One line: the checkpoint, its steps, time and final metrics."""
  m = pre.manifest
  metrics = ", ".join(f"{k}={m[k]:.4f}" for k in sorted(m)
                      if k.startswith(("train_", "test_")))
  return f"{path}: {m['steps']} steps in {m['seconds']:.1f}s, {metrics}"
