"""``celo2_lopt``: a tiny normalized per-parameter MLP with Newton-Schulz orthogonalization.

After Celo (Moudgil et al., "Learning Versatile Optimizers on a Compute Diet",
arXiv 2501.12670) and Celo2 (Moudgil, Knyazev, Belilovsky, "Celo2: Towards
Learned Optimization Free Lunch", arXiv 2602.19142), written from the papers'
description in this project's style.

Per step, for every scalar parameter:

1. Accumulators: momenta ``m_k`` at decays ``(0.9, 0.99, 0.999)`` and a
   squared-gradient average ``v`` (decay 0.95).
2. Features: ``g``, ``clip(g, +-0.1)``, ``p``, ``m_k``, ``v``, ``m_k / sqrt(v)``,
   ``g / sqrt(v)``, each divided by its root-mean-square over the tensor.
3. A tiny MLP (``11 -> 8 -> 8 -> 1``, ReLU) gives a direction ``d``, which is
   divided by its root-mean-square over the tensor (Celo2's per-step output
   normalization).
4. Matrices (``ndim >= 2``): ``u = sqrt(max(r, c)) * NS(D)`` where ``D`` is ``d``
   reshaped to ``(r, c) = (prod(shape[:-1]), shape[-1])`` -- Flax's
   ``(fan_in, fan_out)`` for dense and convolution kernels alike -- and ``NS`` is
   five steps of Muon's quintic Newton-Schulz iteration (:func:`newton_schulz`).
   The factor makes an orthogonal ``D`` have unit root-mean-square, like the
   elementwise path. Vectors, scalars (biases, norms) and everything when
   ``orthogonalize=False`` take the elementwise path ``u = exp(log_mult_1d) * d``.
5. Decoupled weight decay on matrices and a learned step-size schedule::

     update = -lr(t) * (u + weight_decay * p)           (decay on matrices only)
     lr(t)  = exp(log_lr) * min(1, f / w) * (a + (1 - a) (1 + cos(pi f)) / 2)
              * exp(c . time_features(step)),    f = step / num_steps,
     w = 0.1 sigmoid(warmup), a = sigmoid(final)

   With ``num_steps="unknown"`` the schedule depends on the step count alone
   (:func:`lopt.schedule_lr`).

What follows the papers: the tiny MLP over momentum and rms-normalized features
with per-tensor input normalization, per-step RMS normalization of the output,
Newton-Schulz orthogonalization of matrix updates with Muon's coefficients, and
decoupled weight decay. What is simplified or changed: no Adafactor-style
factored features; Celo's learned schedule was an LSTM over loss features, here
it is a learned warmup + cosine-to-floor + correction function of the training
fraction only; Celo2 sends 1-D parameters and embeddings to AdamW while here
they take the learned elementwise path with a learned multiplier (no name-based
routing); convolution kernels are orthogonalized as ``(kh*kw*in, out)`` matrices.

Example::

  lo = lopt.learned("celo2_lopt", weight_decay=1e-4)
  opt = lo.transform(lo.init(jax.random.key(0)), num_steps=1000)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import optax

from lopt import _per_param_lopt as pp
from lopt import _per_tensor as pt
from lopt._base import setting, with_checks
from lopt._horizon import Horizon, check_num_steps
from lopt._per_param_lopt import PerParamLOpt, pass_through_mlp
from lopt._per_param_mlp import mlp_forward_t

__all__ = ["Celo2LOpt", "Celo2LOptState", "newton_schulz"]

MUON_COEFFS = (3.4445, -4.7750, 2.0315)
#: Valid ``Celo2LOpt.update_scaling`` values.
UPDATE_SCALINGS = ("rms", "spectral")


def newton_schulz(x: jax.Array, *, iters: int = 5,
                  coeffs: tuple[float, float, float] = MUON_COEFFS) -> jax.Array:
  """Approximately orthogonalizes the last two axes of ``x`` (``U S V^T -> U V^T``).

  Normalizes by the Frobenius norm, then iterates ``X <- a X + (b A + c A^2) X``
  with ``A = X X^T`` on the wide orientation of the matrix. With Muon's
  coefficients (Jordan et al. 2024) five iterations give singular values in
  roughly ``[0.7, 1.2]`` rather than exactly one, which works as well in practice;
  ``coeffs=(1.5, -0.5, 0.0)`` with more iterations converges to exactly one.

  Args:
    x: ``(..., r, c)`` float array; leading axes are batched.
    iters: number of iterations.
    coeffs: ``(a, b, c)`` of the odd polynomial ``a s + b s^3 + c s^5``.

  Returns:
    An array of the shape of ``x``.
  """
  a, b, c = coeffs
  tall = x.shape[-2] > x.shape[-1]
  if tall:
    x = jnp.swapaxes(x, -1, -2)
  norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=(-2, -1), keepdims=True) + 1e-30)
  x = x / (norm + 1e-7)
  for _ in range(iters):
    gram = x @ jnp.swapaxes(x, -1, -2)
    x = a * x + (b * gram + c * (gram @ gram)) @ x
  return jnp.swapaxes(x, -1, -2) if tall else x


class Celo2LOptState(NamedTuple):
  """State of ``celo2_lopt``; row arrays use the params' :class:`FlatLayout`.

  Attributes:
    step: number of updates taken (int32).
    mom: ``(num_chunks, K, chunk)`` momenta (feature-major chunks of the rows).
    rms: ``(num_chunks, chunk)`` moving average of squared gradients.
  """

  step: jax.Array
  mom: jax.Array
  rms: jax.Array


@dataclasses.dataclass(frozen=True, kw_only=True, repr=False)
class Celo2LOpt(PerParamLOpt):
  """Celo2-style learned optimizer: tiny normalized MLP + Newton-Schulz + learned schedule.

  Fields of :class:`~lopt.PerParamLOpt` (``hidden_size``, Celo2: 8;
  ``hidden_layers``, Celo2: 2; ``chunk``), and:

  Args:
    momentum_decays: decays of the momentum accumulators.
    rms_decay: decay of the squared-gradient accumulator.
    orthogonalize: apply Newton-Schulz to matrix (``ndim >= 2``) updates.
    ns_iters: Newton-Schulz iterations.
    weight_decay: decoupled weight decay on matrices, scaled by the schedule.
    update_scaling: the size of an orthogonalized ``(r, c) = (fan_in, fan_out)``
      matrix update. ``"rms"`` (default): ``sqrt(max(r, c))``, unit root-mean-square
      entries like the elementwise path (Moonlight's Muon scaling); a hidden layer's
      update then grows, in spectral norm, like ``sqrt(width)``. ``"spectral"``
      (muP, Yang et al.'s spectral condition): ``sqrt(base_width * c / r)``, the
      same spectral norm relative to the weights at every width, so one
      optimizer transfers from narrow to wide networks; equal to ``"rms"`` on a
      square ``base_width`` matrix.
    base_width: the width at which ``"spectral"`` equals ``"rms"``.
    init_kind: how :meth:`init` sets the MLP. ``"momentum"`` (default): the MLP
      passes the first momentum feature through unchanged
      (:func:`~lopt._per_param_lopt.pass_through_mlp`) and its other units start
      small with no path to the output, so the untrained optimizer *is* Muon-style
      orthogonalized momentum on matrices and normalized momentum on vectors,
      under the learned schedule -- a strong prior that meta-training refines.
      ``"random"``: LeCun-normal layers (the direction starts as noise).
    init_lr: peak step size of the initial schedule.

  ``init_kind`` and ``init_lr`` only shape :meth:`init`; they are not part of
  :meth:`config` (weights trained from either start load into any instance).
  """

  hidden_size: int = 8
  momentum_decays: tuple[float, ...] = (0.9, 0.99, 0.999)
  rms_decay: float = 0.95
  orthogonalize: bool = True
  ns_iters: int = 5
  weight_decay: float = 0.0
  update_scaling: str = "rms"
  base_width: int = 64
  init_kind: str = setting("momentum", config=False)
  init_lr: float = setting(3e-3, config=False)

  name = "celo2_lopt"
  ADDED: ClassVar[dict[str, Any]] = {"update_scaling": "rms", "base_width": 64}
  shared_feature_names: ClassVar[tuple[str, ...]] = ()

  def __post_init__(self) -> None:
    super().__post_init__()
    if self.update_scaling not in UPDATE_SCALINGS:
      raise ValueError(f"unknown update_scaling {self.update_scaling!r}; valid: "
                       f"{', '.join(map(repr, UPDATE_SCALINGS))}")
    if self.base_width < 1:
      raise ValueError(f"base_width must be >= 1, got {self.base_width}")
    if self.init_kind not in ("momentum", "random"):
      raise ValueError(f"unknown init_kind {self.init_kind!r}; valid: 'momentum', 'random'")
    if self.init_kind == "momentum" and self.hidden_layers > 0 and self.hidden_size < 2:
      raise ValueError("init_kind='momentum' needs hidden_size >= 2 (two ReLU units pass "
                       "the momentum)")
    if not self.init_lr > 0:
      raise ValueError(f"init_lr must be > 0, got {self.init_lr}")

  @property
  def param_feature_names(self) -> tuple[str, ...]:
    """Per-parameter MLP inputs, in column order."""
    m = tuple(f"m{d:g}" for d in self.momentum_decays)
    return ("g", "clip(g)", "p") + m + ("rms",) + tuple(f"{n}/rms" for n in m) + ("g/rms",)

  def init(self, key: jax.Array) -> dict[str, Any]:
    """Returns ``{"mlp": [...], "log_mult_1d": (), "schedule": {...}}``.

    The schedule starts at ``lr = init_lr`` with a 2 % warmup and a cosine decay
    to 10 % of the peak; the MLP starts as described by ``init_kind`` (see the class).
    """
    sizes = self.mlp_sizes
    schedule = pp.init_schedule(self.init_lr)
    mlp = pt.dense_init(key, list(zip(sizes[:-1], sizes[1:])))
    if self.init_kind == "momentum":
      column = self.feature_names.index(f"m{self.momentum_decays[0]:g}")
      mlp = pass_through_mlp(mlp, column, noise=0.1)
    return {"mlp": mlp, "log_mult_1d": jnp.zeros((), jnp.float32),
            "schedule": schedule}

  def matrix_scale(self, fan_in: int, fan_out: int) -> float:
    """The factor on an orthogonalized ``(fan_in, fan_out)`` update (see ``update_scaling``)."""
    if self.update_scaling == "spectral":
      return math.sqrt(self.base_width * fan_out / fan_in)
    return math.sqrt(max(fan_in, fan_out))

  @staticmethod
  def learning_rate(schedule: dict[str, jax.Array], step: jax.Array,
                    num_steps: Horizon) -> jax.Array:
    """The learned step size at ``step`` (1-based) of a ``num_steps`` horizon.

    See :func:`lopt.schedule_lr`; ``num_steps`` may be a traced integer or
    ``"unknown"`` (a schedule of the step count alone).
    """
    return pp.schedule_lr(schedule, step, num_steps)

  def transform(self, meta_params: Any, num_steps: Horizon | None = None
                ) -> optax.GradientTransformationExtraArgs:
    """Returns the optimizer for a ``num_steps`` horizon: a positive int or ``"unknown"``.

    ``num_steps`` is required (:func:`lopt._horizon.check_num_steps`); meta-training
    passes a traced int.
    """
    num_steps = check_num_steps(num_steps, self.name)
    k = len(self.momentum_decays)
    decays = jnp.asarray(self.momentum_decays, jnp.float32)[:, None]  # (K, 1)
    b2 = self.rms_decay

    def features(g, p, m, v):
      """Feature-major per-parameter features ``(F, rows)`` of one chunk."""
      rsqrt = jax.lax.rsqrt(v + 1e-12)
      return jnp.concatenate([g[None], jnp.clip(g, -0.1, 0.1)[None], p[None], m, v[None],
                              m * rsqrt[None], (g * rsqrt)[None]], axis=0)

    def init_fn(params):
      layout = self.layout(params)
      return Celo2LOptState(jnp.zeros((), jnp.int32),
                            jnp.zeros((layout.num_chunks, k, layout.chunk), jnp.float32),
                            jnp.zeros((layout.num_chunks, layout.chunk), jnp.float32))

    def update_fn(updates, state, params=None, *, loss=None, **extra):
      del loss, extra
      layout = self.layout(params)
      nb, blk = layout.chunk // layout.block, layout.block
      g, finite = pp.finite_rows(layout.chunked(layout.flatten(updates)))
      p = layout.chunked(layout.flatten(params))
      step = optax.safe_increment(state.step)

      # Pass 1, chunk by chunk: accumulators and per-block sums of squared features.
      def accumulate(g_c, p_c, m_c, v_c):
        m_c = pp.ema(m_c, g_c[None], decays)
        v_c = pp.ema(v_c, jnp.square(g_c), b2)
        return m_c, v_c, pp.block_square_sums(features(g_c, p_c, m_c, v_c), nb, blk)

      mom, rms, sums = layout.map_chunks(accumulate, g, p, state.mom, state.rms)
      inv = jax.lax.rsqrt(pp.tensor_means(layout, sums) + 1e-16)  # (T, F)

      # Pass 2, chunk by chunk: normalized features -> MLP direction d, and sum(d^2).
      def chunk_step(g_c, p_c, m_c, v_c, inv_c, valid_c):
        x = pp.scale_blocks(features(g_c, p_c, m_c, v_c), inv_c, nb, blk)
        d = mlp_forward_t(meta_params["mlp"], x)[0] * pt.chunk_mask(valid_c, blk)
        return d, jnp.square(d).reshape(nb, blk).sum(-1)

      d, sq = layout.map_chunks(chunk_step, g, p, mom, rms,
                                layout.chunked_blocks(layout.per_block(inv)),
                                layout.chunked_blocks(jnp.asarray(pt.block_valid(layout))))
      d_rms = pt.tensor_rms_from_blocks(layout, sq.reshape(layout.num_blocks), 1e-12)  # (T,)

      lr = self.learning_rate(meta_params["schedule"], step, num_steps)
      mult_1d = jnp.exp(meta_params["log_mult_1d"])
      leaves_d = layout.treedef.flatten_up_to(
          layout.unflatten(layout.unchunk(d), dtype=jnp.float32))
      out = [u * (mult_1d / d_rms[i]) for i, u in enumerate(leaves_d)]  # unit rms per tensor
      groups: dict[tuple[int, int], list[int]] = {}
      for i, shape in enumerate(layout.shapes):
        if self.orthogonalize and len(shape) >= 2:
          groups.setdefault((math.prod(shape[:-1]), shape[-1]), []).append(i)
      for (r, c), idx in groups.items():  # one batched Newton-Schulz per matrix shape
        mats = jnp.stack([leaves_d[i].reshape(r, c) for i in idx])
        mats = newton_schulz(mats, iters=self.ns_iters) * self.matrix_scale(r, c)
        for j, i in enumerate(idx):
          out[i] = mats[j].reshape(layout.shapes[i])
      if self.weight_decay:
        leaves_p = layout.treedef.flatten_up_to(params)
        out = [u + self.weight_decay * q.astype(jnp.float32) if u.ndim >= 2 else u
               for u, q in zip(out, leaves_p)]
      finite = layout.treedef.flatten_up_to(
          layout.unflatten(layout.unchunk(finite), dtype=jnp.bool_))
      out = [pp.restore_nonfinite(-lr * u, f).astype(dt)
             for u, f, dt in zip(out, finite, layout.dtypes)]
      return layout.treedef.unflatten(out), Celo2LOptState(step, mom, rms)

    return with_checks(optax.GradientTransformationExtraArgs(init_fn, update_fn), self.name,
                       needs_params=True)
