"""The G.pt denoiser: a transformer over parameter tokens and conditioning tokens.

The sequence is ``[t, metric(start), metric(target), start tokens..., noisy
tokens...]``. Every parameter token position has its own linear encoder (one for
starting parameters, one for noisy future parameters) and its own linear decoder,
as in G.pt; scalars enter through sinusoidal features and a small MLP. The
outputs at the noisy-token positions predict the clean future parameters
(normalized), or, with ``predict_delta``, the normalized change from the start.
With ``skip`` the output is read as :math:`x_0 = \\sqrt{\\bar\\alpha_t} x_t +
\\sqrt{1-\\bar\\alpha_t} F` (v-prediction, Salimans & Ho 2022), so the denoiser is the
identity at low noise without having to learn it.

With ``layout="neuron"`` (one token per hidden unit, see
:class:`~lopt.gpt.Tokenizer`) tokens of one group share their encoders, decoder
and position embedding, which makes the denoiser equivariant to permutations of
hidden units. With ``fuse_start`` the start and noisy encodings of a token are
summed into one token (half the sequence) and the conditioning is added to every
token; ``metric_max_freq`` bounds the sinusoidal frequencies of the loss
embeddings (a low value embeds the prompt smoothly).

With ``condition_grad`` (a departure from the paper, which conditions on the
loss only) the model also sees the gradient at the starting parameters, as the
optax interface hands it to every update: it is tokenized like the parameters,
normalized by per-leaf scales from the training data, clipped, and its encoding
(one more per-group linear encoder) is added to the start encoding. The gradient
is a function of the parameters and the data that the transformer cannot
compute itself, and it tells the model which way the loss goes down from this
particular start.

:class:`GPT` bundles the Flax module, the tokenizer and the diffusion schedule,
and offers ``loss`` (training) and ``generate`` (sampling new parameters).

Reference: Peebles et al. 2022, arXiv 2209.12892, Sec. 3 and Fig. 2.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lopt.gpt import _diffusion as diff
from lopt.gpt._tokenizer import Tokenizer

__all__ = ["GPT", "GPTNet", "DEFAULT_CONFIG"]

#: Architecture and diffusion defaults (any key may be overridden in ``GPT(spec, **config)``).
DEFAULT_CONFIG: dict[str, Any] = {
    "chunk_size": 128, "d_model": 192, "num_layers": 4, "num_heads": 4, "mlp_ratio": 4,
    "num_timesteps": 1000, "schedule": "linear", "predict_delta": True,
    "metric": "test_loss", "log_metric": True, "skip": False,
    "layout": "chunk", "fuse_start": False, "metric_max_freq": 1000.0,
    "condition_grad": False, "prompt_dropout": 0.0,
}

#: Normalized gradient entries are clipped to this magnitude (``condition_grad``).
GRAD_CLIP = 10.0


class PerTokenLinear(nn.Module):
  """A dense layer per token group: ``(B, N, i) -> (B, N, o)``.

  ``groups[n]`` is the group of token ``n``; tokens of one group share weights.
  With one group per token (the ``chunk`` layout) every position has its own.
  """
  num_tokens: int
  features: int
  zero_init: bool = False
  groups: tuple[int, ...] | None = None

  @nn.compact
  def __call__(self, x):
    fan_in = x.shape[-1]
    init = (nn.initializers.zeros if self.zero_init
            else nn.initializers.normal(1.0 / math.sqrt(fan_in)))
    groups = np.arange(self.num_tokens) if self.groups is None else np.asarray(self.groups)
    g = int(groups.max()) + 1
    w = self.param("kernel", init, (g, fan_in, self.features))
    b = self.param("bias", nn.initializers.zeros, (g, self.features))
    if g == self.num_tokens and np.array_equal(groups, np.arange(g)):
      return jnp.einsum("bni,nio->bno", x, w) + b[None]
    # Shared weights: one matmul per group over all of its tokens.
    order = np.argsort(groups, kind="stable")
    parts = [x[:, order[groups[order] == k]] @ w[k] + b[k][None, None] for k in range(g)]
    return jnp.concatenate(parts, axis=1)[:, np.argsort(order)]


class ScalarEmbed(nn.Module):
  """Sinusoidal features of a scalar (at ``num_freqs`` log-spaced frequencies) -> MLP."""
  features: int
  num_freqs: int = 32
  max_freq: float = 1000.0

  @nn.compact
  def __call__(self, x):
    freqs = jnp.exp(jnp.linspace(0.0, math.log(self.max_freq), self.num_freqs))
    arg = x[:, None] * freqs[None, :]
    h = jnp.concatenate([jnp.sin(arg), jnp.cos(arg), x[:, None]], axis=-1)
    h = nn.silu(nn.Dense(self.features)(h))
    return nn.Dense(self.features)(h)


class Block(nn.Module):
  """Pre-LayerNorm transformer block."""
  d_model: int
  num_heads: int
  mlp_ratio: int

  @nn.compact
  def __call__(self, h):
    y = nn.LayerNorm()(h)
    h = h + nn.MultiHeadDotProductAttention(num_heads=self.num_heads)(y, y)
    y = nn.LayerNorm()(h)
    y = nn.Dense(self.mlp_ratio * self.d_model)(y)
    return h + nn.Dense(self.d_model)(nn.gelu(y))


class GPTNet(nn.Module):
  """The denoiser network; see the module docstring.

  ``__call__(x_t, t, x_start, m_start, m_target, grad=None, drop=None)`` with tokens
  ``(B, N, C)``, ``t`` in ``[0, 1]``, (transformed) metrics ``(B,)``, with
  ``condition_grad`` normalized gradient tokens ``grad`` ``(B, N, C)`` and, with
  ``null_prompt``, a boolean ``drop`` ``(B,)`` (or scalar) that replaces the prompt by
  the learned null prompt, returns ``(B, N, C)``.
  """
  num_tokens: int
  chunk_size: int
  d_model: int = 192
  num_layers: int = 4
  num_heads: int = 4
  mlp_ratio: int = 4
  groups: tuple[int, ...] | None = None
  fuse_start: bool = False
  metric_max_freq: float = 1000.0
  condition_grad: bool = False
  null_prompt: bool = False

  @nn.compact
  def __call__(self, x_t, t, x_start, m_start, m_target, grad=None, drop=None):
    n, d = self.num_tokens, self.d_model
    groups = tuple(range(n)) if self.groups is None else tuple(self.groups)
    g = max(groups) + 1
    emb_target = ScalarEmbed(d, max_freq=self.metric_max_freq,
                             name="embed_metric_target")(m_target)
    if self.null_prompt:
      # A learned "no prompt" embedding replaces the target's where ``drop`` is set
      # (classifier-free guidance, Ho & Salimans 2022).
      null = self.param("null_target", nn.initializers.normal(0.02), (d,))
      if drop is not None:
        emb_target = jnp.where(jnp.reshape(drop, (-1, 1)), null[None], emb_target)
    elif drop is not None:
      raise ValueError("this G.pt network has no null prompt (prompt_dropout=0); it cannot "
                       "drop the prompt")
    cond = jnp.stack([ScalarEmbed(d, name="embed_t")(t),
                      ScalarEmbed(d, max_freq=self.metric_max_freq,
                                  name="embed_metric_start")(m_start),
                      emb_target], axis=1)
    enc_s = PerTokenLinear(n, d, groups=groups, name="enc_start")(x_start)
    if self.condition_grad:
      if grad is None:
        raise ValueError("this G.pt network was built with condition_grad=True; pass the "
                         "gradient tokens grad")
      enc_s = enc_s + PerTokenLinear(n, d, groups=groups, name="enc_grad")(grad)
    enc_n = PerTokenLinear(n, d, groups=groups, name="enc_noisy")(x_t)
    if self.fuse_start:
      # One token per parameter token (start and noisy summed), plus the conditioning
      # added to every token; positions are per group, so exchangeable tokens stay so.
      pos = self.param("pos_embed", nn.initializers.normal(0.02), (3 + g, d))
      pos = pos[np.concatenate([np.arange(3), 3 + np.asarray(groups)])]
      tokens = enc_s + enc_n + jnp.sum(cond, axis=1, keepdims=True)
      h = jnp.concatenate([cond, tokens], axis=1) + pos[None]
      first = 3
    else:
      h = jnp.concatenate([cond, enc_s, enc_n], axis=1)
      pos = self.param("pos_embed", nn.initializers.normal(0.02), (3 + 2 * n, d))
      h = h + pos[None]
      first = 3 + n
    for i in range(self.num_layers):
      h = Block(d, self.num_heads, self.mlp_ratio, name=f"block_{i}")(h)
    h = nn.LayerNorm(name="final_norm")(h[:, first:])
    return PerTokenLinear(n, self.chunk_size, zero_init=True, groups=groups, name="dec")(h)


class GPT:
  """G.pt for one task architecture: network, tokenizer, schedule and normalization.

  ``stats`` (computed from a dataset by :meth:`compute_stats`, saved with the
  weights) holds per-token-entry scales of the starting parameters and of the
  prediction target, and the mean/std of the (log) metric.

  Example::

    gpt = GPT(lopt.gpt.param_spec(params), d_model=128)
    net_params = gpt.init(key)
    new_flat = gpt.generate(net_params, stats, key, start_flat, m_start, m_target)

  Args:
    spec: the task's parameter structure spec (:func:`lopt.gpt.param_spec`).
    **config: overrides of :data:`DEFAULT_CONFIG`.
  """

  def __init__(self, spec, **config: Any):
    unknown = set(config) - set(DEFAULT_CONFIG)
    if unknown:
      raise ValueError(f"unknown G.pt config keys {sorted(unknown)}; valid: "
                       f"{sorted(DEFAULT_CONFIG)}")
    self.cfg = {**DEFAULT_CONFIG, **config}
    self.tokenizer = Tokenizer(spec, self.cfg["chunk_size"], self.cfg["layout"])
    tok = self.tokenizer
    self.net = GPTNet(tok.num_tokens, tok.chunk_size, self.cfg["d_model"],
                      self.cfg["num_layers"], self.cfg["num_heads"], self.cfg["mlp_ratio"],
                      groups=tuple(int(x) for x in tok.token_group),
                      fuse_start=bool(self.cfg["fuse_start"]),
                      metric_max_freq=float(self.cfg["metric_max_freq"]),
                      condition_grad=bool(self.cfg["condition_grad"]),
                      null_prompt=float(self.cfg["prompt_dropout"]) > 0)
    if not 0.0 <= float(self.cfg["prompt_dropout"]) < 1.0:
      raise ValueError(f"prompt_dropout must be in [0, 1), got {self.cfg['prompt_dropout']}")
    self.schedule = diff.make_schedule(self.cfg["num_timesteps"], self.cfg["schedule"])
    self.mask = jnp.asarray(self.tokenizer.mask, jnp.float32)

  def config(self) -> dict[str, Any]:
    """JSON-able constructor arguments (the spec included)."""
    return {"spec": self.tokenizer.spec, **self.cfg}

  def init(self, key: jax.Array) -> Any:
    """Returns fresh network parameters."""
    n, c = self.tokenizer.num_tokens, self.tokenizer.chunk_size
    x = jnp.zeros((1, n, c), jnp.float32)
    s = jnp.zeros((1,), jnp.float32)
    g = x if self.cfg["condition_grad"] else None
    # One compiled call: an eager init dispatches (and compiles) every op separately.
    return jax.jit(lambda k: self.net.init(k, x, s, x, s, s, g)["params"])(key)

  @property
  def stats_keys(self) -> tuple[str, ...]:
    """The keys of this model's normalization statistics (:meth:`compute_stats`)."""
    keys = ("param_scale", "target_scale", "metric_mean", "metric_std")
    return keys + ("grad_scale",) if self.cfg["condition_grad"] else keys

  # -------------------------------------------------------------------- stats
  def compute_stats(self, params: np.ndarray, metric: np.ndarray,
                    grads: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Normalization statistics from a dataset.

    Args:
      params: ``(runs, checkpoints, num_params)`` flattened checkpoints.
      metric: ``(runs, checkpoints)`` values of ``config()["metric"]``.
      grads: ``(..., num_params)`` sample of gradients at checkpoints, required
        with ``condition_grad``.

    Returns:
      ``{"param_scale", "target_scale"}`` of shape ``(N, C)`` (per-leaf standard
      deviations; 1 on padding), scalar ``"metric_mean"``, ``"metric_std"`` and, with
      ``condition_grad``, ``"grad_scale"`` ``(N, C)`` (per-leaf RMS of ``grads``).
    """
    if self.cfg["condition_grad"] and grads is None:
      raise ValueError("a condition_grad model needs compute_stats(params, metric, grads)")
    tok = self.tokenizer
    params = np.asarray(params, np.float32)
    if self.cfg["predict_delta"]:
      i, j = np.triu_indices(params.shape[1], 1)
      rng = np.random.default_rng(0)
      pick = rng.integers(0, params.shape[0] * len(i), size=min(8192, params.shape[0] * len(i)))
      r, p = pick // len(i), pick % len(i)
      target = params[r, j[p]] - params[r, i[p]]
    else:
      target = params
    def per_leaf(x, scale, floor):
      # One scale per leaf (``scale`` of all its entries), tokenized; 1 on padding.
      x = np.asarray(x, np.float32).reshape(-1, tok.num_params)
      out = np.ones((tok.num_params,), np.float32)
      for o, n in zip(tok.offsets[:-1], tok.sizes):
        out[o:o + n] = max(float(scale(x[:, o:o + n])), floor)
      return np.where(tok.mask, tok.tokenize(out), 1.0).astype(np.float32)
    m = self.transform_metric(np.asarray(metric, np.float32))
    out = {"param_scale": per_leaf(params, np.std, 1e-6),
           "target_scale": per_leaf(target, np.std, 1e-6),
           "metric_mean": np.asarray(np.mean(m), np.float32),
           "metric_std": np.asarray(max(float(np.std(m)), 1e-6), np.float32)}
    if self.cfg["condition_grad"]:
      out["grad_scale"] = per_leaf(grads, lambda v: np.sqrt(np.mean(v ** 2)), 1e-8)
    return out

  def transform_metric(self, m):
    """``log`` of the metric when ``log_metric`` (losses), else the metric."""
    xp = np if isinstance(m, np.ndarray) else jnp
    return xp.log(xp.maximum(m, 1e-8)) if self.cfg["log_metric"] else m

  def _norm_metric(self, stats, m):
    return (self.transform_metric(m) - stats["metric_mean"]) / stats["metric_std"]

  # ---------------------------------------------------------- train / sample
  def _grad_tokens(self, stats, grad_flat):
    if not self.cfg["condition_grad"]:
      return None
    if grad_flat is None:
      raise ValueError("this G.pt model conditions on the gradient at the start "
                       "(condition_grad=True); pass grad_flat")
    g = self.tokenizer.tokenize(grad_flat) / stats["grad_scale"][None]
    return jnp.clip(g, -GRAD_CLIP, GRAD_CLIP) * self.mask[None]

  def _denoiser(self, net_params, stats, start_flat, m_start, m_target, grad_flat=None,
                drop=None):
    tok = self.tokenizer
    x_start = tok.tokenize(start_flat) / stats["param_scale"][None]
    ms, mt = self._norm_metric(stats, m_start), self._norm_metric(stats, m_target)
    g = self._grad_tokens(stats, grad_flat)
    T = self.schedule.num_timesteps

    def model_fn(x_t, t):
      t01 = t.astype(jnp.float32) / T
      out = self.net.apply({"params": net_params}, x_t, t01, x_start, ms, mt, g, drop)
      if self.cfg["skip"]:  # x0 = sqrt(a) x_t + sqrt(1 - a) F: v-prediction in x0 form
        a = self.schedule.alphas_cumprod[t][:, None, None]
        out = jnp.sqrt(a) * x_t + jnp.sqrt(1.0 - a) * out
      return out * self.mask[None]

    return model_fn

  def loss(self, net_params, stats, key, start_flat, target_flat, m_start, m_target,
           grad_flat=None, *, prompt_dropout: float | None = None):
    """The diffusion training loss for a batch of (start, target) checkpoint pairs.

    Args:
      net_params: network parameters.
      stats: normalization statistics.
      key: PRNG key.
      start_flat, target_flat: ``(B, num_params)`` flattened checkpoints.
      m_start, m_target: ``(B,)`` their metric values (raw, e.g. test loss).
      grad_flat: ``(B, num_params)`` gradients at the starts (``condition_grad`` only).
      prompt_dropout: probability of replacing an example's prompt by the learned null
        prompt (static); None takes the model's ``prompt_dropout`` (training), 0 gives
        the prompted loss (evaluation).

    With ``prompt_dropout`` > 0 the same network also learns the unprompted
    distribution that classifier-free guidance (``generate(guidance=)``) contrasts with.
    """
    x0 = target_flat - start_flat if self.cfg["predict_delta"] else target_flat
    x0 = self.tokenizer.tokenize(x0) / stats["target_scale"][None]
    p = self.cfg["prompt_dropout"] if prompt_dropout is None else prompt_dropout
    drop = None
    if p > 0:
      key, k_drop = jax.random.split(key)
      drop = jax.random.bernoulli(k_drop, p, (x0.shape[0],))
    fn = self._denoiser(net_params, stats, start_flat, m_start, m_target, grad_flat, drop)
    return diff.diffusion_loss(fn, self.schedule, key, x0, self.mask[None])

  def generate(self, net_params, stats, key, start_flat, m_start, m_target, grad_flat=None,
               *, num_steps: int = 50, eta: float = 0.0, temperature: float = 1.0,
               guidance: float = 0.0) -> jax.Array:
    """Samples new flattened parameters ``(B, num_params)`` prompted with ``m_target``.

    With ``guidance`` :math:`w \\ne 0` every denoising step uses
    :math:`\\hat x_0 = (1 + w)\\,\\hat x_0(\\text{prompt}) - w\\,\\hat x_0(\\text{reference})`
    (classifier-free guidance, Ho & Salimans 2022, in x0 form): the reference is the
    learned null prompt for models trained with ``prompt_dropout``, else the prompt
    "the start's own metric" (stay where you are), so guidance extrapolates the
    change the prompt asks for. It costs a second network pass per step.

    Args:
      net_params: network parameters (use the EMA weights).
      stats: normalization statistics.
      key: PRNG key.
      start_flat: ``(B, num_params)`` starting parameters.
      m_start: ``(B,)`` their metric.
      m_target: ``(B,)`` prompted metric.
      grad_flat: ``(B, num_params)`` gradients at the starts (``condition_grad`` only).
      num_steps: sampling steps (static).
      eta: 0 = DDIM, 1 = DDPM.
      temperature: noise scale (static); see :func:`lopt.gpt.sample`.
      guidance: guidance scale :math:`w` (static; 0 = plain conditional sampling).
    """
    fn = self._denoiser(net_params, stats, start_flat, m_start, m_target, grad_flat)
    guidance = float(guidance)
    if guidance != 0.0:
      if self.cfg["prompt_dropout"] > 0:
        ref = self._denoiser(net_params, stats, start_flat, m_start, m_target, grad_flat,
                             jnp.ones((), bool))
      else:
        ref = self._denoiser(net_params, stats, start_flat, m_start, m_start, grad_flat)
      cond = fn
      fn = lambda x_t, t: (1.0 + guidance) * cond(x_t, t) - guidance * ref(x_t, t)  # noqa: E731
    shape = (start_flat.shape[0], self.tokenizer.num_tokens, self.tokenizer.chunk_size)
    x0 = diff.sample(fn, self.schedule, key, shape, num_steps=num_steps, eta=eta,
                     temperature=temperature)
    out = self.tokenizer.detokenize(x0 * stats["target_scale"][None])
    return start_flat + out if self.cfg["predict_delta"] else out


def stats_to_jax(stats: Mapping[str, Any]) -> dict[str, jax.Array]:
  """Converts loaded statistics to float32 JAX arrays."""
  return {k: jnp.asarray(v, jnp.float32) for k, v in stats.items()}
