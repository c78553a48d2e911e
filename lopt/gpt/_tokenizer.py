"""Parameter trees <-> fixed-size tokens: each leaf flattened and split into chunks.

G.pt (Peebles et al. 2022, arXiv 2209.12892, Sec. 3) turns a network into a
sequence by flattening every layer's weights and biases and cutting them into
chunks of ``chunk_size`` values; a leaf whose size is not a multiple of
``chunk_size`` has its last chunk zero-padded. A chunk never mixes two leaves,
so token position ``i`` always holds the same part of the same layer, and the
model can give each position its own linear encoder and decoder.

With ``layout="neuron"`` (dense stacks only) a token is one hidden unit instead:
its incoming weights and bias and, for the last hidden layer, its outgoing
weights; the output layer's bias forms the last token(s). Tokens of one hidden
layer then form a *group* that a model can treat as exchangeable (shared
encoder, decoder and position embedding), which makes it exactly equivariant to
the permutation symmetry of hidden units instead of learning it from
augmentation.

The structure is described by a JSON-able *spec*, a list of
``{"path": "Dense_0/kernel", "shape": [64, 32]}`` in ``jax.tree`` leaf order,
so a tokenizer can be rebuilt from a saved manifest without the task.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["LAYOUTS", "Tokenizer", "dense_stack", "param_spec"]

#: Token layouts: fixed-size chunks of each leaf, or one token per hidden unit.
LAYOUTS = ("chunk", "neuron")


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


def dense_stack(spec: Sequence[dict[str, Any]]) -> list[tuple[int, int]] | None:
  """``[(kernel_leaf, bias_leaf), ...]`` in layer order if ``spec`` is a dense stack, else None.

  A dense stack has leaves ``<Name>_<k>/kernel`` (2-D) and ``<Name>_<k>/bias``
  whose shapes chain: the output width of layer ``k`` is the input of ``k + 1``.
  """
  layers: dict[int, dict[str, int]] = {}
  for i, s in enumerate(spec):
    m = re.fullmatch(r"(?:.*/)?[A-Za-z]+_(\d+)/(kernel|bias)", s["path"])
    if m is None:
      return None
    layers.setdefault(int(m.group(1)), {})[m.group(2)] = i
  out = []
  for k in sorted(layers):
    if set(layers[k]) != {"kernel", "bias"}:
      return None
    out.append((layers[k]["kernel"], layers[k]["bias"]))
  for kk, bb in out:
    if len(spec[kk]["shape"]) != 2 or list(spec[bb]["shape"]) != [spec[kk]["shape"][1]]:
      return None
  for (k0, _), (k1, _) in zip(out, out[1:]):
    if spec[k0]["shape"][1] != spec[k1]["shape"][0]:
      return None
  return out or None


def _neuron_tokens(spec, offsets) -> tuple[list[list[int]], list[int]]:
  """Flat-index lists and group ids of the tokens of the ``neuron`` layout."""
  layers = dense_stack(spec)
  if layers is None:
    raise ValueError("layout='neuron' needs a stack of dense layers (<Name>_<k>/kernel and "
                     f"/bias); got leaves {[s['path'] for s in spec][:6]}")
  toks, groups = [], []
  n_hidden = max(len(layers) - 1, 1)
  for layer in range(n_hidden):
    k, b = layers[layer]
    fan_in, width = spec[k]["shape"]
    for j in range(width):
      idx = [int(offsets[k]) + i * width + j for i in range(fan_in)] + [int(offsets[b]) + j]
      if layer == len(layers) - 2:  # the last hidden layer also carries its outgoing weights
        k2 = layers[-1][0]
        out = spec[k2]["shape"][1]
        idx += [int(offsets[k2]) + j * out + o for o in range(out)]
      toks.append(idx)
      groups.append(layer)
  if len(layers) > 1:
    b = layers[-1][1]
    width = max(len(t) for t in toks)
    size = spec[b]["shape"][0]
    for c in range(0, size, width):
      toks.append(list(range(int(offsets[b]) + c, int(offsets[b]) + min(c + width, size))))
      groups.append(n_hidden + c // width)
  return toks, groups


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
    chunk_size: values per token (``layout="chunk"``); ignored by the
      ``neuron`` layout, whose token width is the longest unit's.
    layout: ``"chunk"`` or ``"neuron"`` (see the module docstring).
  """

  def __init__(self, spec: Sequence[dict[str, Any]], chunk_size: int, layout: str = "chunk"):
    if layout not in LAYOUTS:
      raise ValueError(f"unknown token layout {layout!r}; valid: {LAYOUTS}")
    if chunk_size < 1:
      raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    self.spec = [{"path": str(s["path"]), "shape": [int(d) for d in s["shape"]]} for s in spec]
    self.layout = layout
    self.sizes = [int(np.prod(s["shape"], dtype=np.int64)) for s in self.spec]
    self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)
    self.num_params = int(self.offsets[-1])
    leaf_of_entry = np.repeat(np.arange(len(self.sizes)), self.sizes)
    if layout == "chunk":
      self.chunk_size = int(chunk_size)
      gather, groups = [], []
      for off, size in zip(self.offsets[:-1], self.sizes):
        n = -(-size // self.chunk_size)
        idx = np.full((n * self.chunk_size,), -1, np.int64)
        idx[:size] = np.arange(off, off + size)
        gather.append(idx.reshape(n, self.chunk_size))
      self._gather = (np.concatenate(gather) if gather
                      else np.zeros((0, self.chunk_size), np.int64))
      groups = list(range(self._gather.shape[0]))
    else:
      toks, groups = _neuron_tokens(self.spec, self.offsets)
      self.chunk_size = max(len(t) for t in toks)
      self._gather = np.full((len(toks), self.chunk_size), -1, np.int64)
      for r, t in enumerate(toks):
        self._gather[r, :len(t)] = t
      if sorted(self._gather[self._gather >= 0].tolist()) != list(range(self.num_params)):
        raise AssertionError("neuron layout does not cover every parameter exactly once")
    #: ``(num_tokens, chunk_size)`` bool: which token entries hold a parameter (not padding).
    self.mask = self._gather >= 0
    #: ``(num_tokens,)`` index of the spec leaf of each token's first entry.
    self.leaf_of_token = leaf_of_entry[self._gather[:, 0]].astype(np.int32)
    #: ``(num_tokens,)`` group of each token: tokens of one group are exchangeable
    #: (``chunk``: every token its own group; ``neuron``: one group per hidden layer).
    self.token_group = np.asarray(groups, np.int32)
    self.num_groups = int(self.token_group.max()) + 1 if len(groups) else 0
    self.num_tokens = int(self._gather.shape[0])
    self._safe_gather = np.where(self.mask, self._gather, 0)
    entries = np.flatnonzero(self.mask.reshape(-1))
    # flat param i -> its token entry
    self._scatter = entries[np.argsort(self._gather.reshape(-1)[entries], kind="stable")]

  @classmethod
  def from_params(cls, params: Any, chunk_size: int, layout: str = "chunk") -> "Tokenizer":
    """Builds the tokenizer of ``params``'s structure."""
    return cls(param_spec(params), chunk_size, layout)

  def config(self) -> dict[str, Any]:
    """JSON-able constructor arguments."""
    return {"spec": self.spec, "chunk_size": self.chunk_size, "layout": self.layout}

  def check(self, params: Any, name: str = "params") -> None:
    """Raises ValueError naming the first leaf where ``params`` differs from the spec.

    Leaves are matched in ``jax.tree`` order by shape; their names do not matter,
    so the same network written with other module names (a Flax ``nnx`` model's
    ``hidden/kernel`` for linen's ``Dense_0/kernel``) fits. A tree whose leaves
    have the right shapes in another order (dict keys sort, so ``{"out", "dense"}``
    puts the output layer first) is refused with a hint to rename.
    """
    got = param_spec(params)
    if len(got) != len(self.spec):
      raise ValueError(
          f"{name} do not match the G.pt model's task: {len(got)} leaves vs {len(self.spec)} "
          f"expected ({[s['path'] for s in got][:6]} vs {[s['path'] for s in self.spec][:6]})")
    for g, s in zip(got, self.spec):
      if g["shape"] != s["shape"]:
        same = sorted(x["shape"] for x in got) == sorted(x["shape"] for x in self.spec)
        raise ValueError(
            f"{name} do not match the G.pt model's task: leaf {g['path']!r} with shape "
            f"{tuple(g['shape'])} where the model expects {s['path']!r} with shape "
            f"{tuple(s['shape'])}" + (
                " (the tree has the model's shapes in another order: leaves are matched in "
                "jax.tree order, which sorts dict keys, so name the layers to sort in "
                "order, e.g. layer_0, layer_1)" if same else ""))

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
