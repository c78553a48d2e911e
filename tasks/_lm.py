"""A small character-level transformer language model on text a package ships."""

from __future__ import annotations

import functools
import pathlib
import sysconfig

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from tasks._base import Task

__all__ = ["CORPORA", "CharLM", "embedded_text"]

VOCAB_SIZE = 128  # ASCII; other characters become '?'
#: The text corpora :func:`embedded_text` can load; all ship with installed packages.
CORPORA = ("sklearn_descr", "python_stdlib")
_TASK_NAMES = {"sklearn_descr": "char_lm", "python_stdlib": "char_lm_python"}
#: The Python-source corpus keeps this many characters (about 3 MB).
PYTHON_STDLIB_CHARS = 3_000_000


def _sklearn_descr() -> str:
  import sklearn.datasets

  root = pathlib.Path(sklearn.datasets.__file__).parent / "descr"
  return "\n".join(p.read_text(encoding="utf-8") for p in sorted(root.glob("*.rst")))


def _python_stdlib() -> str:
  root = pathlib.Path(sysconfig.get_paths()["stdlib"])
  # Top-level modules only (no test suites or site-packages); the generated,
  # machine-specific _sysconfigdata file is left out.
  files = [p for p in sorted(root.glob("*.py")) if not p.name.startswith("_sysconfigdata")]
  parts, size = [], 0
  for p in files:
    if size >= PYTHON_STDLIB_CHARS:
      break
    parts.append(p.read_text(encoding="utf-8", errors="replace"))
    size += len(parts[-1]) + 1
  return "\n".join(parts)[:PYTHON_STDLIB_CHARS]


@functools.cache
def embedded_text(corpus: str = "sklearn_descr") -> np.ndarray:
  """A text corpus that ships with an installed package, as uint8 ASCII codes.

  Characters outside ASCII become ``'?'``. Both corpora work offline:

  * ``"sklearn_descr"``: the ``.rst`` dataset descriptions under
    ``sklearn/datasets/descr`` (about 43k characters of English prose and tables).
  * ``"python_stdlib"``: the source of the Python standard library's top-level
    ``.py`` modules (``sysconfig.get_paths()["stdlib"]``), concatenated in sorted
    file-name order and cut at ``PYTHON_STDLIB_CHARS`` (3M) characters. The
    text depends on the Python version.

  Example::

    codes = tasks.embedded_text("python_stdlib")
    print(codes.size, bytes(codes[:40]).decode())

  Args:
    corpus: one of ``CORPORA``.

  Returns:
    A 1-D uint8 array of character codes below 128.
  """
  loaders = {"sklearn_descr": _sklearn_descr, "python_stdlib": _python_stdlib}
  if corpus not in loaders:
    raise KeyError(f"unknown corpus {corpus!r}; valid: {sorted(loaders)}")
  codes = np.frombuffer(loaders[corpus]().encode("ascii", errors="replace"), np.uint8).copy()
  codes[codes >= VOCAB_SIZE] = ord("?")
  return codes


class _Block(nn.Module):
  dim: int
  heads: int

  @nn.compact
  def __call__(self, x):
    mask = nn.make_causal_mask(jnp.ones(x.shape[:2], jnp.int32))
    x = x + nn.MultiHeadDotProductAttention(self.heads, qkv_features=self.dim)(
        nn.LayerNorm()(x), mask=mask)
    h = nn.Dense(4 * self.dim)(nn.LayerNorm()(x))
    return x + nn.Dense(self.dim)(nn.gelu(h))


class _Transformer(nn.Module):
  dim: int
  heads: int
  layers: int
  seq_len: int

  @nn.compact
  def __call__(self, tokens):
    x = nn.Embed(VOCAB_SIZE, self.dim)(tokens)
    x = x + self.param("pos", nn.initializers.normal(0.02), (self.seq_len, self.dim))[None]
    for _ in range(self.layers):
      x = _Block(self.dim, self.heads)(x)
    return nn.Dense(VOCAB_SIZE)(nn.LayerNorm()(x))


class CharLM(Task):
  """Next-character prediction with a small causal transformer.

  The text is :func:`embedded_text` of ``corpus``; its first 90 % is ``train``
  and the rest ``test``. A batch is ``batch_size`` random windows of
  ``seq_len + 1`` chars; ``eval_batch`` is ``eval_batch_size`` windows drawn
  from its key (the same windows for the same key).

  Example::

    task = tasks.CharLM(corpus="python_stdlib", dim=64, layers=2, seq_len=64)

  Args:
    dim: model width.
    heads: attention heads.
    layers: transformer blocks.
    seq_len: characters the model sees (context length).
    batch_size: windows per training batch.
    corpus: one of ``CORPORA``.
    eval_batch_size: windows per evaluation batch.
  """

  def __init__(self, dim: int = 32, heads: int = 2, layers: int = 2, seq_len: int = 32,
               batch_size: int = 16, corpus: str = "sklearn_descr", eval_batch_size: int = 256):
    self.name = _TASK_NAMES.get(corpus, f"char_lm_{corpus}")
    self.dim, self.heads, self.layers = int(dim), int(heads), int(layers)
    self.seq_len, self.batch_size = int(seq_len), int(batch_size)
    self.corpus, self.eval_batch_size = corpus, int(eval_batch_size)
    codes = embedded_text(corpus)
    n = int(0.9 * len(codes))
    self._splits = {"train": jnp.asarray(codes[:n], jnp.int32),
                    "test": jnp.asarray(codes[n:], jnp.int32)}
    self.model = _Transformer(self.dim, self.heads, self.layers, self.seq_len)
    self.loss_scale = float(np.log(VOCAB_SIZE))

  def config(self):
    return {"dim": self.dim, "heads": self.heads, "layers": self.layers,
            "seq_len": self.seq_len, "batch_size": self.batch_size, "corpus": self.corpus,
            "eval_batch_size": self.eval_batch_size}

  def init(self, key):
    return self.model.init(key, jnp.zeros((1, self.seq_len), jnp.int32))["params"]

  def _windows(self, key, split, n):
    if split not in self._splits:
      raise ValueError(f"unknown split {split!r}; valid splits: 'train', 'test'")
    data = self._splits[split]
    starts = jax.random.randint(key, (n,), 0, data.shape[0] - self.seq_len - 1)
    return jax.vmap(lambda s: jax.lax.dynamic_slice(data, (s,), (self.seq_len + 1,)))(starts)

  def batch(self, key, split="train"):
    return self._windows(key, split, self.batch_size)

  def eval_batch(self, key, split="test"):
    """Returns ``eval_batch_size`` windows of ``split`` drawn from ``key``."""
    return self._windows(key, split, self.eval_batch_size)

  def loss(self, params, key, batch):
    del key
    params = jax.tree.map(lambda p: p.astype(jnp.float32), params)
    logits = self.model.apply({"params": params}, batch[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch[:, 1:]).mean()

  def metrics(self, params, key, batch):
    loss = self.loss(params, key, batch)
    return {"loss": loss, "bits_per_char": loss / jnp.log(2.0)}
