"""Permutation-aligned distances between networks of one dense stack (novelty checks).

Permuting a hidden layer's units (the kernel's columns and bias of layer ``l`` and
the rows of layer ``l + 1``) leaves the function unchanged but moves the flat
parameter vector far away, so raw L2 distances overstate how new a network is.
:func:`align` permutes a network's hidden units to best match a reference, layer by
layer from the input: unit ``u``'s features are its incoming weights (after the
previous layer's permutation), its bias and its outgoing weights, and the
permutation solves the linear assignment of squared feature distances
(``scipy.optimize.linear_sum_assignment``). With one hidden layer this minimizes the
whole L2 distance exactly; with more it is the usual greedy forward pass (the
outgoing weights are compared before the next layer is permuted).

The nearest training checkpoint under alignment is searched among candidates: the
``k`` nearest by raw L2 and the ``k`` nearest after each network's units are sorted
by feature norm (a permutation-invariant form, so a permuted copy of a checkpoint is
always a candidate); the reported distance is the smallest aligned one among them,
an upper bound on the exact minimum over all checkpoints.

Reference: Ainsworth et al. 2023, "Git Re-Basin" (weight matching); Zeng et al. 2025.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax.numpy as jnp
import numpy as np
from scipy.optimize import linear_sum_assignment

from lopt.gpt import dense_stack
from meta_train.gpt._baselines import sq_dists

__all__ = ["UnitLayout", "align", "aligned_distance", "canonicalize", "nearest_aligned",
           "pairwise_aligned", "topk_nearest"]


class UnitLayout:
  """Flat indices of the hidden units of a dense stack ``spec`` (``param_spec`` rows)."""

  def __init__(self, spec: Sequence[dict[str, Any]]):
    layers = dense_stack(spec)
    if layers is None or len(layers) < 2:
      raise ValueError("permutation alignment needs a stack of at least two dense layers "
                       "(<Name>_<k>/kernel and .../bias leaves)")
    sizes = [int(np.prod(s["shape"])) for s in spec]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    self.num_params = int(offsets[-1])
    views = {i: np.arange(offsets[i], offsets[i + 1]).reshape(spec[i]["shape"])
             for i in range(len(spec))}
    #: per hidden layer: ``(in_idx (H, fan_in), bias_idx (H,), out_idx (H, fan_out))``
    self.hidden = [(views[k0].T, views[b0], views[k1])
                   for (k0, b0), (k1, _) in zip(layers, layers[1:])]

  def features(self, flats: np.ndarray, layer: int) -> np.ndarray:
    """``(..., H, F)``: each unit's incoming weights, bias and outgoing weights."""
    i, b, o = self.hidden[layer]
    return np.concatenate([flats[..., i], flats[..., b][..., None], flats[..., o]], axis=-1)

  def permute(self, flats: np.ndarray, layer: int, perm: np.ndarray) -> np.ndarray:
    """Moves unit ``perm[..., u]`` of ``layer`` to position ``u`` (same function).

    ``flats`` is ``(P,)`` with ``perm`` ``(H,)``, or ``(N, P)`` with ``perm`` ``(H,)``
    or ``(N, H)`` (one permutation per row).
    """
    flats = np.asarray(flats)
    x2 = np.atleast_2d(flats)
    p2 = np.broadcast_to(np.atleast_2d(perm), (x2.shape[0], np.shape(perm)[-1]))
    out = x2.copy()
    for idx in self.hidden[layer]:
      src = idx[p2].reshape(x2.shape[0], -1)  # flat indices moved to idx's positions
      dst = np.broadcast_to(idx.reshape(1, -1), src.shape)
      np.put_along_axis(out, dst, np.take_along_axis(x2, src, axis=1), axis=1)
    return out.reshape(flats.shape)


def align(ref: np.ndarray, x: np.ndarray, layout: UnitLayout) -> np.ndarray:
  """``x`` (flat) with its hidden units permuted to best match ``ref``; see the module doc."""
  x = np.asarray(x, np.float64)
  ref = np.asarray(ref, np.float64)
  for layer in range(len(layout.hidden)):
    fr, fx = layout.features(ref, layer), layout.features(x, layer)
    cost = (np.sum(fr ** 2, 1)[:, None] - 2.0 * fr @ fx.T + np.sum(fx ** 2, 1)[None, :])
    _, perm = linear_sum_assignment(cost)
    x = layout.permute(x, layer, perm)
  return x


def aligned_distance(ref: np.ndarray, x: np.ndarray, layout: UnitLayout) -> float:
  """L2 distance between ``ref`` and ``x`` after aligning ``x``'s hidden units to ``ref``."""
  return float(np.linalg.norm(align(ref, x, layout) - np.asarray(ref, np.float64)))


def canonicalize(flats: np.ndarray, layout: UnitLayout, chunk: int = 4096) -> np.ndarray:
  """Rows of ``flats`` with every hidden layer's units sorted by feature norm."""
  flats = np.asarray(flats, np.float32)
  out = np.empty_like(flats)
  for s in range(0, len(flats), chunk):
    x = flats[s:s + chunk]
    for layer in range(len(layout.hidden)):
      norms = np.linalg.norm(layout.features(x, layer), axis=-1)
      x = layout.permute(x, layer, np.argsort(norms, axis=-1, kind="stable"))
    out[s:s + chunk] = x
  return out


def topk_nearest(x: np.ndarray, bank: np.ndarray, k: int, chunk: int = 32768) -> np.ndarray:
  """``(len(x), k)`` indices of the ``k`` rows of ``bank`` nearest to each row of ``x`` (L2)."""
  x = jnp.asarray(np.asarray(x, np.float32))
  k = min(int(k), len(bank))
  best_d = np.full((x.shape[0], 0), np.inf, np.float32)
  best_i = np.zeros((x.shape[0], 0), np.int64)
  for s in range(0, len(bank), chunk):
    b = jnp.asarray(np.asarray(bank[s:s + chunk], np.float32))
    d = np.asarray(sq_dists(x, b, jnp.sum(b ** 2, axis=1)))
    d = np.concatenate([best_d, d], axis=1)
    i = np.concatenate([best_i, s + np.arange(d.shape[1] - best_i.shape[1])[None].repeat(
        len(d), 0)], axis=1)
    top = np.argpartition(d, min(k, d.shape[1]) - 1, axis=1)[:, :k]
    best_d, best_i = np.take_along_axis(d, top, 1), np.take_along_axis(i, top, 1)
  return best_i


def nearest_aligned(x: np.ndarray, bank: np.ndarray, layout: UnitLayout, *,
                    num_candidates: int = 32, bank_canonical: np.ndarray | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
  """Aligned L2 distance from each row of ``x`` to its nearest row of ``bank``.

  Candidates: the ``num_candidates`` nearest by raw L2 and as many nearest in
  canonical form (:func:`canonicalize`; pass ``bank_canonical`` to reuse it).

  Returns:
    ``(distances (len(x),), indices into bank (len(x),))``.
  """
  x = np.asarray(x, np.float32)
  if bank_canonical is None:
    bank_canonical = canonicalize(bank, layout)
  cand = np.concatenate([topk_nearest(x, bank, num_candidates),
                         topk_nearest(canonicalize(x, layout), bank_canonical, num_candidates)],
                        axis=1)
  dist, idx = np.empty(len(x)), np.empty(len(x), np.int64)
  for r in range(len(x)):
    ds = [(aligned_distance(bank[c], x[r], layout), c) for c in np.unique(cand[r])]
    dist[r], idx[r] = min(ds)
  return dist, idx


def pairwise_aligned(x: np.ndarray, layout: UnitLayout) -> np.ndarray:
  """Aligned L2 distances of all pairs ``i < j`` of rows of ``x`` (``j`` aligned to ``i``)."""
  x = np.asarray(x, np.float32)
  return np.asarray([aligned_distance(x[i], x[j], layout)
                     for i in range(len(x)) for j in range(i + 1, len(x))])
