"""A small character-level transformer language model on text a package ships."""

from __future__ import annotations

import functools
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from tasks._base import Task

__all__ = ["CharLM", "embedded_text"]

VOCAB_SIZE = 128  # ASCII; other characters become '?'


@functools.cache
def embedded_text() -> np.ndarray:
  """The text corpus, as uint8 ASCII codes: scikit-learn's bundled dataset descriptions.

  The ``.rst`` files under ``sklearn/datasets/descr`` (about 43k characters of
  English prose and tables) ship with scikit-learn, so this works offline.
  """
  import sklearn.datasets

  root = pathlib.Path(sklearn.datasets.__file__).parent / "descr"
  text = "\n".join(p.read_text(encoding="utf-8") for p in sorted(root.glob("*.rst")))
  codes = np.frombuffer(text.encode("ascii", errors="replace"), np.uint8).copy()
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

  The corpus is :func:`embedded_text`; its first 90 % is ``train`` and the rest
  ``test``. A batch is ``batch_size`` random windows of ``seq_len + 1`` chars.
  """

  def __init__(self, dim: int = 32, heads: int = 2, layers: int = 2, seq_len: int = 32,
               batch_size: int = 16):
    self.name = "char_lm"
    self.dim, self.heads, self.layers = int(dim), int(heads), int(layers)
    self.seq_len, self.batch_size = int(seq_len), int(batch_size)
    codes = embedded_text()
    n = int(0.9 * len(codes))
    self._splits = {"train": jnp.asarray(codes[:n], jnp.int32),
                    "test": jnp.asarray(codes[n:], jnp.int32)}
    self.model = _Transformer(self.dim, self.heads, self.layers, self.seq_len)
    self.loss_scale = float(np.log(VOCAB_SIZE))

  def config(self):
    return {"dim": self.dim, "heads": self.heads, "layers": self.layers,
            "seq_len": self.seq_len, "batch_size": self.batch_size}

  def init(self, key):
    return self.model.init(key, jnp.zeros((1, self.seq_len), jnp.int32))["params"]

  def batch(self, key, split="train"):
    if split not in self._splits:
      raise ValueError(f"unknown split {split!r}; valid splits: 'train', 'test'")
    data = self._splits[split]
    starts = jax.random.randint(key, (self.batch_size,), 0, data.shape[0] - self.seq_len - 1)
    return jax.vmap(lambda s: jax.lax.dynamic_slice(data, (s,), (self.seq_len + 1,)))(starts)

  def loss(self, params, key, batch):
    del key
    params = jax.tree.map(lambda p: p.astype(jnp.float32), params)
    logits = self.model.apply({"params": params}, batch[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch[:, 1:]).mean()

  def metrics(self, params, key, batch):
    loss = self.loss(params, key, batch)
    return {"loss": loss, "bits_per_char": loss / jnp.log(2.0)}
