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
    x = obs.reshape(-1)      # image-like observations (Catch, MinAtar) are flattened
    for h in self.hidden:
      x = nn.tanh(nn.Dense(h)(x))
    return nn.Dense(self.num_actions)(x)


#: Short task names of known environments and the range of an episode's return,
#: ``(worst, best)``, given the horizon: CartPole gets +1 per step alive, Acrobot and
#: MountainCar -1 per step until the goal, Catch +1 or -1 once per episode. Other
#: discrete-action environments are treated like CartPole.
_ENVS = {"CartPole-v1": ("cartpole", lambda h: (0.0, float(h))),
         "Acrobot-v1": ("acrobot", lambda h: (-float(h), 0.0)),
         "MountainCar-v0": ("mountain_car", lambda h: (-float(h), 0.0)),
         "Catch-bsuite": ("catch", lambda h: (-1.0, 1.0))}


class GymnaxPolicy(Task):
  r"""A stochastic MLP policy on a discrete-action gymnax environment.

  ``loss`` is the negative mean return over ``batch_size`` episodes of at most
  ``horizon`` steps, rolled out inside jit. Its gradient is the score-function
  (REINFORCE) estimate with a mean baseline: the value is exactly ``-return``
  while ``jax.grad`` gives ``-E[(R - b) grad log pi]``. ``metrics`` reports the
  return. A batch is the episodes' PRNG keys; ``eval_batch`` is
  ``eval_batch_size`` episodes' keys.

  Works with "CartPole-v1" (+1 per step alive), "Acrobot-v1" (-1 per step until
  the tip swings up), "Catch-bsuite" (+1 or -1 when the ball lands; 9 steps an
  episode) and other discrete-action environments. Acrobot is hard to explore:
  on some seeds a random policy never swings up in 200 steps, every return
  ties and the gradient is zero. "MountainCar-v0"
  runs, but a random policy never reaches the goal within 200 steps, so every
  return is -200 and the REINFORCE gradient is exactly zero.

  Example::

    task = tasks.GymnaxPolicy("Acrobot-v1", hidden=(32,), horizon=200, batch_size=8)

  Args:
    env_name: a gymnax environment with a discrete action space.
    hidden: policy MLP widths (tanh).
    horizon: steps per episode (episodes that end earlier stop collecting reward).
    batch_size: episodes per training batch.
    eval_batch_size: episodes per evaluation batch.
  """

  def __init__(self, env_name: str = "CartPole-v1", hidden: Sequence[int] = (32,),
               horizon: int = 200, batch_size: int = 8, eval_batch_size: int = 64):
    import gymnax

    short, returns = _ENVS.get(env_name, (env_name.lower(), lambda h: (0.0, float(h))))
    self.name = short
    self.env_name, self.hidden = env_name, tuple(int(h) for h in hidden)
    self.horizon, self.batch_size = int(horizon), int(batch_size)
    self.eval_batch_size = int(eval_batch_size)
    self.env, self.env_params = gymnax.make(env_name)
    self.num_actions = self.env.action_space(self.env_params).n
    self.obs_shape = self.env.observation_space(self.env_params).shape
    self.model = _Policy(self.hidden, self.num_actions)
    self.worst_return, self.best_return = returns(self.horizon)
    self.loss_scale = self.best_return - self.worst_return

  def config(self):
    return {"env_name": self.env_name, "hidden": list(self.hidden), "horizon": self.horizon,
            "batch_size": self.batch_size, "eval_batch_size": self.eval_batch_size}

  def init(self, key):
    return self.model.init(key, jnp.zeros(self.obs_shape, jnp.float32))["params"]

  def batch(self, key, split="train"):
    del split
    return jax.random.split(key, self.batch_size)

  def eval_batch(self, key, split="test"):
    """Returns the keys of ``eval_batch_size`` episodes."""
    del split
    return jax.random.split(key, self.eval_batch_size)

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
    """Maps ``-return`` to ``[0, 1]``: 0 is the best return in ``horizon`` steps, 1 the worst.

    ``(loss + best) / (best - worst)``: for CartPole ``1 + loss / horizon``, for
    Acrobot ``loss / horizon``, for Catch ``(loss + 1) / 2``.
    """
    norm = jnp.clip((loss + self.best_return) / self.loss_scale, 0.0, MAX_NORMALIZED_LOSS)
    return jnp.where(jnp.isfinite(loss), norm, MAX_NORMALIZED_LOSS)
