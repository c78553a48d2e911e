"""Contract tests over every registered optimizer (hand-designed and learned)."""

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lopt
from tests.lopt.contract import check_contract, make_params, quad_loss

# Optimizers that need arguments tied to one task's parameter tree get their
# own contract tests next to their implementation.
NEEDS_TASK_TREE = {"gpt"}
NAMES = [n for n in lopt.available() if n not in NEEDS_TASK_TREE]
HAND = ["sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop", "adafactor", "lion", "muon"]


def _get(name):
  return lopt.get(name, num_steps=100) if name in lopt.available_learned() else lopt.get(name)


def test_hand_designed_are_registered():
  assert set(HAND) <= set(lopt.available())


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
def test_contract(name, dtype):
  check_contract(_get(name), make_params(dtype))


@pytest.mark.parametrize("name", NAMES)
def test_inside_chain_with_clipping(name):
  opt = optax.chain(optax.clip_by_global_norm(1.0), _get(name))
  check_contract(opt, make_params())


@pytest.mark.parametrize("name", NAMES)
def test_inside_multisteps(name):
  opt = optax.MultiSteps(_get(name), every_k_schedule=2)
  params = make_params()
  state = opt.init(params)
  step = jax.jit(lambda p, s: opt.update(jax.grad(quad_loss)(p), s, p, loss=quad_loss(p)))
  u1, state = step(params, state)
  assert all(float(jnp.abs(u).max()) == 0.0 for u in jax.tree.leaves(u1))  # accumulating
  u2, state = step(params, state)
  assert all(np.isfinite(np.asarray(u, np.float32)).all() for u in jax.tree.leaves(u2))
  assert any(float(jnp.abs(u).max()) > 0.0 for u in jax.tree.leaves(u2))  # applied


class _Net(nnx.Module):

  def __init__(self, rngs):
    self.l1 = nnx.Linear(4, 16, rngs=rngs)
    self.l2 = nnx.Linear(16, 1, rngs=rngs)

  def __call__(self, x):
    return self.l2(nnx.relu(self.l1(x)))


@pytest.mark.parametrize("name", NAMES)
def test_flax_nnx_optimizer(name):
  """A real nnx model trained through nnx.Optimizer, passing loss= through."""
  x = jax.random.normal(jax.random.key(1), (32, 4))
  y = jnp.sin(x.sum(-1, keepdims=True))
  model = _Net(nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, _get(name), wrt=nnx.Param)

  @nnx.jit
  def train_step(model, optimizer):
    loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
    optimizer.update(model, grads, loss=loss)
    return loss

  before = jax.tree.map(jnp.copy, nnx.state(model, nnx.Param))
  losses = [float(train_step(model, optimizer)) for _ in range(3)]
  after = nnx.state(model, nnx.Param)
  assert np.all(np.isfinite(losses))
  changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), before, after)
  assert any(jax.tree.leaves(changed)), "nnx.Optimizer did not change the model"


@pytest.mark.parametrize("name", HAND)
def test_hand_designed_match_optax(name):
  """The wrappers are optax itself: same updates as the optax factory."""
  ref = {"sgd": optax.sgd(0.1), "momentum": optax.sgd(0.05, momentum=0.9),
         "nesterov": optax.sgd(0.05, momentum=0.9, nesterov=True), "adam": optax.adam(1e-3),
         "adamw": optax.adamw(1e-3, weight_decay=1e-4), "rmsprop": optax.rmsprop(1e-3),
         "adafactor": optax.adafactor(1e-2), "lion": optax.lion(1e-4),
         "muon": optax.contrib.muon(0.02)}[name]
  opt, params = lopt.get(name), make_params()
  s1, s2 = opt.init(params), ref.init(params)
  for _ in range(3):
    g = jax.grad(quad_loss)(params)
    u1, s1 = opt.update(g, s1, params, loss=quad_loss(params))
    u2, s2 = ref.update(g, s2, params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8), u1, u2)
    params = optax.apply_updates(params, u1)


def test_hand_designed_converge():
  for name, lr in [("sgd", 0.1), ("adam", 0.05), ("momentum", 0.05)]:
    _, _, losses = check_contract(lopt.get(name, learning_rate=lr), make_params(), steps=60)
    assert losses[-1] < 0.2 * losses[0], (name, losses[0], losses[-1])


def test_unknown_name_lists_choices():
  with pytest.raises(KeyError, match="valid names: .*adam.*sgd"):
    lopt.get("adamm")


def test_weights_given_twice():
  with pytest.raises(ValueError, match="weights given twice"):
    lopt.get("adam:pretrained", weights="x")


def test_mismatched_grads_and_params():
  opt, params = lopt.get("adam"), make_params()
  state = opt.init(params)
  grads = dict(jax.grad(quad_loss)(params))
  del grads["scale"]
  with pytest.raises(ValueError, match=r"only in params: \[\"\['scale'\]\"\]"):
    opt.update(grads, state, params)
  bad = jax.tree.map(lambda x: x, jax.grad(quad_loss)(params))
  bad["dense1"]["bias"] = jnp.zeros((3,))
  with pytest.raises(ValueError, match=r"\['dense1'\]\['bias'\]: shape \(3,\) vs \(16,\)"):
    opt.update(bad, state, params)


@pytest.mark.parametrize("name", NAMES)
def test_params_that_differ_from_the_init_tree_name_the_leaf(name):
  """Every optimizer: a tree with another shape or other leaves than ``init``'s raises a
  ValueError naming the optimizer and the first differing leaf (no broadcasting error)."""
  opt, params = _get(name), {"w": jnp.ones((8, 4)), "b": jnp.zeros((4,)), "v": jnp.zeros((5,))}
  state = opt.init(params)
  transposed = dict(params, w=jnp.ones((4, 8)))
  with pytest.raises(ValueError, match=rf"{name!r}.*\['w'\]: shape \(4, 8\) vs \(8, 4\)"):
    opt.update(transposed, state, transposed, loss=1.0)
  if not lopt.is_learned(name):  # hand-designed ones run without params: gradients are checked
    with pytest.raises(ValueError, match=rf"{name!r}.*\['w'\]: shape \(4, 8\) vs \(8, 4\)"):
      opt.update(transposed, state, loss=1.0)
  fewer = {"w": params["w"], "b": params["b"]}
  with pytest.raises(ValueError, match=rf"{name!r}.*only in the tree given to init: "
                                       rf"\[\"\['v'\]\"\]"):
    opt.update(fewer, state, fewer, loss=1.0)


def test_register_and_duplicate():
  with pytest.raises(ValueError, match="already registered"):
    lopt.register("adam", lambda **kw: lopt.get("sgd"))
