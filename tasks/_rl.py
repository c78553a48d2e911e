"""Reinforcement learning on gymnax environments: a policy's negative return."""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from tasks._base import MAX_NORMALIZED_LOSS, Task

__all__ = ["GymnaxPolicy"]


class _Policy(nn.Module):
  hidden: Sequence[int]
  num_actions: int

  @nn.compact
  def __call__(self, obs):
    x = obs
    for h in self.hidden:
      x = nn.tanh(nn.Dense(h)(x))
    return nn.Dense(self.num_actions)(x)


class GymnaxPolicy(Task):
  r"""A stochastic MLP policy on a discrete-action gymnax environment.

  ``loss`` is the negative mean return over ``batch_size`` episodes of at most
  ``horizon`` steps, rolled out inside jit. Its gradient is the score-function
  (REINFORCE) estimate with a mean baseline: the value is exactly ``-return``
  while ``jax.grad`` gives ``-E[(R - b) grad log pi]``. ``metrics`` reports the
  return. A batch is the episodes' PRNG keys.
  """

  def __init__(self, env_name: str = "CartPole-v1", hidden: Sequence[int] = (32,),
               horizon: int = 200, batch_size: int = 8):
    import gymnax

    self.name = "cartpole" if env_name == "CartPole-v1" else env_name.lower()
    self.env_name, self.hidden = env_name, tuple(int(h) for h in hidden)
    self.horizon, self.batch_size = int(horizon), int(batch_size)
    self.env, self.env_params = gymnax.make(env_name)
    self.num_actions = self.env.action_space(self.env_params).n
    self.obs_shape = self.env.observation_space(self.env_params).shape
    self.model = _Policy(self.hidden, self.num_actions)
    self.loss_scale = float(self.horizon)

  def config(self):
    return {"env_name": self.env_name, "hidden": list(self.hidden), "horizon": self.horizon,
            "batch_size": self.batch_size}

  def init(self, key):
    return self.model.init(key, jnp.zeros(self.obs_shape, jnp.float32))["params"]

  def batch(self, key, split="train"):
    del split
    return jax.random.split(key, self.batch_size)

  def _episode(self, params, key):
    """Returns (return, sum of log-probs of the actions taken while alive)."""
    key, reset_key = jax.random.split(key)
    obs, state = self.env.reset(reset_key, self.env_params)

    def step(carry, k):
      obs, state, alive = carry
      k_act, k_env = jax.random.split(k)
      logits = self.model.apply({"params": params}, obs)
      action = jax.random.categorical(k_act, logits)
      logp = jax.nn.log_softmax(logits)[action]
      obs, state, reward, terminated, truncated, _ = self.env.step(
          k_env, state, action, self.env_params)
      done = jnp.logical_or(terminated, truncated).astype(jnp.float32)
      out = (alive * reward, alive * logp)
      return (obs, state, alive * (1.0 - done)), out

    _, (rewards, logps) = jax.lax.scan(step, (obs, state, jnp.float32(1.0)),
                                       jax.random.split(key, self.horizon))
    return rewards.sum(), logps.sum()

  def returns(self, params, batch):
    params = jax.tree.map(lambda p: p.astype(jnp.float32), params)
    return jax.vmap(self._episode, in_axes=(None, 0))(params, batch)

  def loss(self, params, key, batch):
    del key
    rets, logps = self.returns(params, batch)
    advantage = jax.lax.stop_gradient(rets - rets.mean())
    surrogate = -jnp.mean(advantage * logps)
    return -jnp.mean(jax.lax.stop_gradient(rets)) + surrogate - jax.lax.stop_gradient(surrogate)

  def metrics(self, params, key, batch):
    del key
    rets, _ = self.returns(params, batch)
    return {"loss": -rets.mean(), "return": rets.mean()}

  def normalize(self, loss):
    """Maps ``-return`` in ``[-horizon, 0]`` to ``[0, 1]`` (0 = full-length episodes)."""
    norm = jnp.clip(1.0 + loss / self.loss_scale, 0.0, MAX_NORMALIZED_LOSS)
    return jnp.where(jnp.isfinite(loss), norm, MAX_NORMALIZED_LOSS)
