"""Tasks from user functions and Flax models: training, equality with the model, errors."""

import flax.linen as linen
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import lopt
import tasks

X = jax.random.normal(jax.random.key(0), (96, 5))
Y = jnp.sin(X @ jnp.arange(1.0, 6.0))
TRAIN, TEST = (X[:64], Y[:64]), (X[64:], Y[64:])


def _mse(out, y):
  return jnp.mean((out[:, 0] - y) ** 2)


class _NnxMLP(nnx.Module):
  def __init__(self, rngs):
    self.l1, self.l2 = nnx.Linear(5, 8, rngs=rngs), nnx.Linear(8, 1, rngs=rngs)

  def __call__(self, x):
    return self.l2(nnx.tanh(self.l1(x)))


class _LinenMLP(linen.Module):
  @linen.compact
  def __call__(self, x):
    return linen.Dense(1)(linen.tanh(linen.Dense(8)(x)))


def _linear_regression():
  w_star = jnp.array([1.0, -2.0, 0.5])
  x = jax.random.normal(jax.random.key(1), (256, 3))
  y = x @ w_star

  def batch(key, split):
    del split
    idx = jax.random.randint(key, (32,), 0, 256)
    return x[idx], y[idx]

  return tasks.from_functions(
      init=lambda key: {"w": jax.random.normal(key, (3,))},
      loss=lambda params, key, b: jnp.mean((b[0] @ params["w"] - b[1]) ** 2),
      batch=batch, name="linreg", loss_scale=5.0)


def test_from_functions_trains():
  task = _linear_regression()
  assert task.name == "linreg" and task.loss_scale == 5.0 and "linreg" in repr(task)
  losses = tasks.train(task, lopt.get("adam", learning_rate=0.1), 100, jax.random.key(0)).losses
  assert float(losses[-10:].mean()) < 0.01 * float(losses[:5].mean())
  metrics = tasks.evaluate(task, {"w": jnp.zeros(3)}, jax.random.key(0))
  assert set(metrics) == {"loss"} and metrics["loss"] > 0


@pytest.mark.parametrize("kind", ["nnx_factory", "nnx_instance", "linen"])
def test_from_flax_loss_matches_model(kind):
  key = jax.random.key(2)
  if kind == "linen":
    model = _LinenMLP()
    direct = lambda p, x: model.apply({"params": p}, x)
  else:
    model = _NnxMLP if kind == "nnx_factory" else _NnxMLP(nnx.Rngs(3))
    direct = lambda p, x: nnx.merge(nnx.graphdef(_NnxMLP(nnx.Rngs(0))), p)(x)
  task = tasks.from_flax(model, _mse, train=TRAIN, test=TEST, batch_size=16,
                         metrics={"mae": lambda out, y: jnp.mean(jnp.abs(out[:, 0] - y))})
  params = task.init(key)
  assert all(isinstance(v, jax.Array) for v in jax.tree.leaves(params))
  x, y = task.batch(jax.random.key(4), "train")
  assert x.shape == (16, 5) and y.shape == (16,)
  np.testing.assert_allclose(jax.jit(task.loss)(params, key, (x, y)),
                             _mse(direct(params, x), y), rtol=1e-6)
  metrics = tasks.evaluate(task, params, key)
  np.testing.assert_allclose(metrics["loss"], _mse(direct(params, TEST[0]), TEST[1]), rtol=1e-5)
  assert set(metrics) == {"loss", "mae"}
  if kind == "nnx_instance":  # the instance's own parameters, whatever the key
    np.testing.assert_array_equal(params["l1"]["kernel"], model.l1.kernel[...])
  else:  # a fresh init per key
    other = task.init(jax.random.key(5))
    assert not all(np.allclose(a, b) for a, b in zip(jax.tree.leaves(params),
                                                     jax.tree.leaves(other)))
  vparams = jax.vmap(task.init)(jax.random.split(key, 2))
  assert jax.tree.leaves(vparams)[0].shape[0] == 2
  losses = tasks.train(task, optax.adam(0.03), 100, jax.random.key(0)).losses
  assert float(losses[-10:].mean()) < float(losses[:5].mean())


def test_from_flax_nnx_state_is_read_not_updated():
  class BNModel(nnx.Module):
    def __init__(self, rngs):
      self.l1, self.bn = nnx.Linear(5, 4, rngs=rngs), nnx.BatchNorm(4, rngs=rngs)
      self.drop, self.out = nnx.Dropout(0.5, rngs=rngs), nnx.Linear(4, 1, rngs=rngs)

    def __call__(self, x):
      return self.out(self.drop(self.bn(self.l1(x))))

  task = tasks.from_flax(BNModel, _mse, train=TRAIN, test=TEST, batch_size=8)
  params, batch = task.init(jax.random.key(0)), task.batch(jax.random.key(1))
  loss = jax.jit(task.loss)
  l1, l2 = loss(params, jax.random.key(2), batch), loss(params, jax.random.key(3), batch)
  assert np.isfinite(l1) and float(l1) != float(l2)  # dropout follows the task's key
  np.testing.assert_array_equal(l1, loss(params, jax.random.key(2), batch))


def test_bad_input_is_a_clear_error():
  task = _linear_regression()
  with pytest.raises(TypeError, match="init must be a function"):
    tasks.from_functions(None, task.loss, task.batch)
  with pytest.raises(TypeError, match=r"loss must accept the arguments \(params, key, batch\)"):
    tasks.from_functions(task.init, lambda params, batch: 0.0, task.batch)
  with pytest.raises(ValueError, match="loss_scale"):
    tasks.from_functions(task.init, task.loss, task.batch, loss_scale=0.0)
  with pytest.raises(ValueError, match="same number of examples"):
    tasks.from_flax(_NnxMLP, _mse, train=(X, Y[:10]), test=TEST)
  with pytest.raises(ValueError, match="batch_size must be positive"):
    tasks.from_flax(_NnxMLP, _mse, train=TRAIN, test=TEST, batch_size=0)
  with pytest.raises(TypeError, match="pair"):
    tasks.from_flax(_NnxMLP, _mse, train=X, test=TEST)
  with pytest.raises(ValueError, match="shaped like train"):
    tasks.from_flax(_NnxMLP, _mse, train=TRAIN, test=(X[:, :3], Y))
  with pytest.raises(TypeError, match="Linen module, an nnx module"):
    tasks.from_flax("mlp", _mse, train=TRAIN, test=TEST)
  with pytest.raises(TypeError, match="loss_fn must be a function"):
    tasks.from_flax(_NnxMLP, "mse", train=TRAIN, test=TEST)
  with pytest.raises(ValueError, match="valid splits"):
    tasks.from_flax(_NnxMLP, _mse, train=TRAIN, test=TEST).batch(jax.random.key(0), "valid")
