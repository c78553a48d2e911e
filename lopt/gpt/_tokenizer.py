"""Parameter trees <-> fixed-size tokens: each leaf flattened and split into chunks.

G.pt (Peebles et al. 2022, arXiv 2209.12892, Sec. 3) turns a network into a
sequence by flattening every layer's weights and biases and cutting them into
chunks of ``chunk_size`` values; a leaf whose size is not a multiple of
``chunk_size`` has its last chunk zero-padded. A chunk never mixes two leaves,
so token position ``i`` always holds the same part of the same layer, and the
model can give each position its own linear encoder and decoder.

The structure is described by a JSON-able *spec*, a list of
``{"path": "Dense_0/kernel", "shape": [64, 32]}`` in ``jax.tree`` leaf order,
so a tokenizer can be rebuilt from a saved manifest without the task.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["Tokenizer", "param_spec"]


def _key_name(k: Any) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def param_spec(params: Any) -> list[dict[str, Any]]:
  """Returns the JSON-able structure spec of a parameter pytree.

  Example::

    param_spec({"Dense_0": {"bias": b, "kernel": w}})
    # [{"path": "Dense_0/bias", "shape": [32]}, {"path": "Dense_0/kernel", "shape": [64, 32]}]
  """
  out = []
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    out.append({"path": "/".join(_key_name(k) for k in path),
                "shape": [int(d) for d in np.shape(leaf)]})
  return out


class Tokenizer:
  """Maps a parameter pytree of a fixed structure to ``(num_tokens, chunk_size)``.

  ``flatten``/``unflatten`` convert between the tree and one flat vector (leaves
  concatenated in spec order); ``tokenize``/``detokenize`` between the flat
  vector and tokens. Both round trips are exact (gathers, no arithmetic), and
  all four work on leading batch dimensions of the flat vector / tokens.

  Example::

    tok = Tokenizer.from_params(params, chunk_size=128)
    tokens = tok.tokenize(tok.flatten(params))      # (tok.num_tokens, 128)
    params2 = tok.unflatten(tok.detokenize(tokens))  # == params

  Args:
    spec: a structure spec from :func:`param_spec` (or a loaded manifest).
    chunk_size: values per token.
  """

  def __init__(self, spec: Sequence[dict[str, Any]], chunk_size: int):
    if chunk_size < 1:
      raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    self.spec = [{"path": str(s["path"]), "shape": [int(d) for d in s["shape"]]} for s in spec]
    self.chunk_size = int(chunk_size)
    self.sizes = [int(np.prod(s["shape"], dtype=np.int64)) for s in self.spec]
    self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)
    self.num_params = int(self.offsets[-1])
    gather, leaf_of_token = [], []
    for li, (off, size) in enumerate(zip(self.offsets[:-1], self.sizes)):
      n = -(-size // self.chunk_size)
      idx = np.full((n * self.chunk_size,), -1, np.int64)
      idx[:size] = np.arange(off, off + size)
      gather.append(idx.reshape(n, self.chunk_size))
      leaf_of_token += [li] * n
    self._gather = np.concatenate(gather) if gather else np.zeros((0, chunk_size), np.int64)
    #: ``(num_tokens, chunk_size)`` bool: which token entries hold a parameter (not padding).
    self.mask = self._gather >= 0
    #: ``(num_tokens,)`` index of the spec leaf each token belongs to.
    self.leaf_of_token = np.asarray(leaf_of_token, np.int32)
    self.num_tokens = int(self._gather.shape[0])
    self._safe_gather = np.where(self.mask, self._gather, 0)
    self._scatter = np.flatnonzero(self.mask.reshape(-1))  # flat param i -> token entry

  @classmethod
  def from_params(cls, params: Any, chunk_size: int) -> "Tokenizer":
    """Builds the tokenizer of ``params``'s structure."""
    return cls(param_spec(params), chunk_size)

  def config(self) -> dict[str, Any]:
    """JSON-able constructor arguments."""
    return {"spec": self.spec, "chunk_size": self.chunk_size}

  def check(self, params: Any, name: str = "params") -> None:
    """Raises ValueError naming the first leaf where ``params`` differs from the spec."""
    got = param_spec(params)
    if len(got) != len(self.spec):
      raise ValueError(
          f"{name} do not match the G.pt model's task: {len(got)} leaves vs {len(self.spec)} "
          f"expected ({[s['path'] for s in got][:6]} vs {[s['path'] for s in self.spec][:6]})")
    for g, s in zip(got, self.spec):
      if g["path"] != s["path"] or g["shape"] != s["shape"]:
        raise ValueError(
            f"{name} do not match the G.pt model's task: leaf {g['path']!r} with shape "
            f"{tuple(g['shape'])} where the model expects {s['path']!r} with shape "
            f"{tuple(s['shape'])}")

  def flatten(self, params: Any) -> jax.Array:
    """Concatenates the leaves of ``params`` (spec order) into one ``(num_params,)`` vector."""
    self.check(params)
    leaves = jax.tree.leaves(params)
    return jnp.concatenate([jnp.ravel(x).astype(jnp.float32) for x in leaves])

  def unflatten(self, flat: jax.Array, like: Any = None) -> Any:
    """Splits a ``(num_params,)`` vector back into a tree.

    Args:
      flat: the flat vector.
      like: a tree of the same structure whose treedef and dtypes are used; when
        None, nested dicts are built from the spec paths (float32 leaves).
    """
    parts = [flat[o:o + n].reshape(s["shape"])
             for o, n, s in zip(self.offsets[:-1], self.sizes, self.spec)]
    if like is not None:
      self.check(like)
      leaves = jax.tree.leaves(like)
      parts = [p.astype(leaf.dtype) for p, leaf in zip(parts, leaves)]
      return jax.tree.unflatten(jax.tree.structure(like), parts)
    tree: dict[str, Any] = {}
    for p, s in zip(parts, self.spec):
      node = tree
      keys = s["path"].split("/")
      for k in keys[:-1]:
        node = node.setdefault(k, {})
      node[keys[-1]] = p
    return tree

  def tokenize(self, flat: jax.Array) -> jax.Array:
    """``(..., num_params)`` -> ``(..., num_tokens, chunk_size)``, padding with zeros."""
    xp = np if isinstance(flat, np.ndarray) else jnp
    tokens = flat[..., self._safe_gather]
    mask = self.mask.reshape((1,) * (tokens.ndim - 2) + self.mask.shape)
    return xp.where(mask, tokens, xp.zeros((), flat.dtype))

  def detokenize(self, tokens: jax.Array) -> jax.Array:
    """``(..., num_tokens, chunk_size)`` -> ``(..., num_params)``; padding is dropped."""
    lead = tokens.shape[:-2]
    return tokens.reshape(lead + (-1,))[..., self._scatter]
