"""G.pt model pieces: tokenizer, diffusion, weights IO and the optax wrapper."""

import json
import shutil

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lopt
from lopt.gpt import GPT, Tokenizer, diffusion_loss, make_schedule, param_spec, sample
from tests.lopt.contract import check_contract, make_params
from tests.lopt.gpt_tiny import TINY, TINY_TASK, save_tiny


def test_tokenizer_round_trip_exact():
  params = make_params()
  tok = Tokenizer.from_params(params, chunk_size=7)
  flat = tok.flatten(params)
  assert flat.shape == (tok.num_params,) == (sum(x.size for x in jax.tree.leaves(params)),)
  tokens = tok.tokenize(flat)
  assert tokens.shape == (tok.num_tokens, 7)
  assert np.all(np.asarray(tokens)[~tok.mask] == 0)  # padding is zero
  np.testing.assert_array_equal(np.asarray(tok.detokenize(tokens)), np.asarray(flat))
  back = tok.unflatten(tok.detokenize(tokens), like=params)
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               back, params)
  # Batched, and nested dicts rebuilt from the spec alone.
  batch = jnp.stack([flat, -flat])
  np.testing.assert_array_equal(np.asarray(tok.detokenize(tok.tokenize(batch))),
                                np.asarray(batch))
  rebuilt = Tokenizer(param_spec(params), 7).unflatten(flat)
  assert jax.tree.structure(rebuilt) == jax.tree.structure(params)


def test_tokens_never_mix_leaves():
  tok = Tokenizer([{"path": "a", "shape": [5]}, {"path": "b", "shape": [2, 3]}], chunk_size=4)
  assert tok.num_tokens == 2 + 2
  np.testing.assert_array_equal(tok.leaf_of_token, [0, 0, 1, 1])


def test_tokenizer_mismatch_names_leaf():
  params = make_params()
  tok = Tokenizer.from_params(params, 8)
  bad = dict(params, dense1={"kernel": jnp.zeros((8, 15)), "bias": jnp.zeros((16,))})
  with pytest.raises(ValueError, match=r"dense1/kernel.*\(8, 15\).*\(8, 16\)"):
    tok.check(bad)
  with pytest.raises(ValueError, match="leaves"):
    tok.check({"only": jnp.zeros(3)})


def test_ddim_with_oracle_denoiser_returns_x0():
  sched = make_schedule(20)
  x0 = jax.random.normal(jax.random.key(1), (3, 4, 5))
  for steps, eta in [(20, 0.0), (7, 1.0)]:
    out = sample(lambda x, t: x0, sched, jax.random.key(0), x0.shape, num_steps=steps, eta=eta)
    np.testing.assert_allclose(np.asarray(out), np.asarray(x0), atol=1e-4)
  with pytest.raises(ValueError, match="num_steps"):
    sample(lambda x, t: x0, sched, jax.random.key(0), x0.shape, num_steps=0)


def test_diffusion_loss_decreases_on_tiny_dataset():
  spec = [{"path": "Dense_0/bias", "shape": [6]}, {"path": "Dense_0/kernel", "shape": [4, 6]}]
  gpt = GPT(spec, **TINY)
  rng = np.random.default_rng(0)
  starts = rng.normal(size=(16, 30)).astype(np.float32)
  targets = 0.5 * starts + 0.3  # a learnable map from start to target
  metric = np.stack([np.full(16, 2.0), np.full(16, 0.5)], axis=1).astype(np.float32)
  stats = gpt.compute_stats(np.stack([starts, targets], axis=1), metric)
  tx = optax.adam(1e-2)
  net = gpt.init(jax.random.key(0))
  state = tx.init(net)
  loss_fn = lambda net, key: gpt.loss(net, stats, key, starts, targets, metric[:, 0],
                                      metric[:, 1])
  jit_loss = jax.jit(loss_fn)
  eval_loss = lambda net: np.mean([float(jit_loss(net, jax.random.key(100 + i)))
                                   for i in range(4)])

  @jax.jit
  def step(net, state, key):
    loss, g = jax.value_and_grad(loss_fn)(net, key)
    upd, state = tx.update(g, state, net)
    return optax.apply_updates(net, upd), state, loss

  before = float(eval_loss(net))
  for i in range(60):
    net, state, _ = step(net, state, jax.random.key(i))
  after = float(eval_loss(net))
  assert after < 0.6 * before, (before, after)


def test_skip_parameterization_is_identity_at_low_noise():
  spec = [{"path": "w", "shape": [20]}]
  gpt = GPT(spec, **{**TINY, "skip": True})
  stats = gpt.compute_stats(np.ones((2, 2, 20), np.float32), np.ones((2, 2), np.float32))
  fn = gpt._denoiser(gpt.init(jax.random.key(0)), stats, jnp.zeros((1, 20)), jnp.ones(1),
                     jnp.ones(1))  # zero-initialized decoder: F = 0
  x = jnp.ones((1, gpt.tokenizer.num_tokens, 16)) * gpt.mask[None]
  out = jax.jit(fn)(x, jnp.zeros((1,), jnp.int32))  # one compile, not one per op
  a0 = float(gpt.schedule.alphas_cumprod[0])
  assert a0 > 0.99
  np.testing.assert_allclose(np.asarray(out), np.sqrt(a0) * np.asarray(x), rtol=1e-5)


def test_diffusion_loss_mask_ignores_padding():
  x0 = jnp.ones((2, 3, 4))
  mask = jnp.asarray([[1.0] * 4, [1.0] * 4, [0.0] * 4])[None]
  loss = diffusion_loss(lambda x, t: x0 + 10.0 * (1 - mask), make_schedule(10),
                        jax.random.key(0), x0, mask)
  assert float(loss) == 0.0


def test_save_load_round_trip(tiny_weights):
  path, params = tiny_weights
  m = lopt.gpt.load_gpt(path)
  assert m.manifest["best_metric"] == pytest.approx(0.1)
  assert m.model.tokenizer.spec == param_spec(params)
  fresh = m.model.init(jax.random.key(0))
  assert jax.tree.structure(m.params) == jax.tree.structure(fresh)
  np.testing.assert_array_equal(np.asarray(m.params["enc_start"]["kernel"]),
                                np.asarray(fresh["enc_start"]["kernel"]))
  with pytest.raises(FileNotFoundError, match="no G.pt weights"):
    lopt.gpt.load_gpt(path.parent / "missing")


# The contract's quadratic loss (~100) is no test loss of the tiny task: out of its range.
@pytest.mark.filterwarnings("ignore::lopt.gpt.GPTWarning")
def test_optax_contract(tiny_weights):
  path, params = tiny_weights
  opt = lopt.get("gpt", weights=str(path), task=TINY_TASK, num_sampling_steps=3, seed=1)
  assert isinstance(opt, optax.GradientTransformationExtraArgs)
  _, state, _ = check_contract(opt, params)
  assert isinstance(state, lopt.gpt.GPTState) and int(state.count) == 3
  chained = optax.chain(optax.clip(1.0), opt)
  s = chained.init(params)
  upd, _ = jax.jit(chained.update)(params, s, params, loss=jnp.float32(1.0))
  assert jax.tree.structure(upd) == jax.tree.structure(params)


def test_needs_no_training_horizon(tiny_weights):
  """G.pt does not read the horizon: it builds without ``num_steps`` and ignores one."""
  path, params = tiny_weights
  for kw in ({}, {"num_steps": None}, {"num_steps": lopt.UNKNOWN_HORIZON}, {"num_steps": 7}):
    opt = lopt.get("gpt", weights=str(path), task=TINY_TASK, num_sampling_steps=2, **kw)
    jax.eval_shape(opt.update, params, opt.init(params), params, loss=1.0)


def test_optax_update_is_new_minus_params_and_deterministic(tiny_weights):
  path, params = tiny_weights
  opt = lopt.get("gpt", weights=str(path), task=TINY_TASK, num_sampling_steps=2, target=0.5)
  state = opt.init(params)
  update = jax.jit(opt.update)
  u1, s1 = update(params, state, params, loss=2.0)
  u2, _ = update(params, state, params, loss=2.0)
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), u1, u2)
  u3, _ = update(params, s1, params, loss=2.0)  # the key advances with the state
  assert not np.allclose(np.asarray(u1["conv"]), np.asarray(u3["conv"]))
  # max_updates=1: the first update samples (same as above), later ones are zero.
  once = lopt.get("gpt", weights=str(path), task=TINY_TASK, num_sampling_steps=2, target=0.5,
                  max_updates=1)
  v1, t1 = jax.jit(once.update)(params, once.init(params), params, loss=2.0)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b),
                                                       rtol=1e-5, atol=1e-6), v1, u1)
  v2, _ = jax.jit(once.update)(params, t1, params, loss=2.0)
  assert all(not np.any(np.asarray(x)) for x in jax.tree.leaves(v2))


@pytest.mark.slow  # 38 s; the default suite keeps the other G.pt sampling tests
def test_temperature_zero_is_deterministic_and_read_from_manifest(tiny_weights, tmp_path):
  path, params = tiny_weights
  m = lopt.gpt.load_gpt(path)
  start = m.model.tokenizer.flatten(params)[None]
  def gen(seed, temp):
    return np.asarray(m.model.generate(m.params, m.stats, jax.random.key(seed), start,
                                       jnp.ones(1), jnp.ones(1), num_steps=3, temperature=temp))
  np.testing.assert_array_equal(gen(0, 0.0), gen(1, 0.0))
  assert not np.allclose(gen(0, 1.0), gen(1, 1.0))
  with pytest.raises(ValueError, match="temperature"):
    lopt.get("gpt", weights=str(path), task=TINY_TASK, temperature=-1.0)
  # The default temperature and target come from the manifest (gpt_eval --save_settings).
  shutil.copytree(path, tmp_path / "w")
  man = json.loads((tmp_path / "w" / "manifest.json").read_text())
  man["extra"]["sampling_temperature"] = 0.0
  (tmp_path / "w" / "manifest.json").write_text(json.dumps(man))

  def upd(weights, **kw):
    opt = lopt.get("gpt", weights=str(weights), task=TINY_TASK, num_sampling_steps=3, **kw)
    return np.asarray(opt.update(params, opt.init(params), params, loss=1.0)[0]["conv"])
  np.testing.assert_array_equal(upd(tmp_path / "w", seed=0), upd(tmp_path / "w", seed=1))
  at_best = upd(tmp_path / "w")
  np.testing.assert_array_equal(at_best, upd(tmp_path / "w", target=man["best_metric"]))
  man["extra"]["target"] = man["best_metric"] + 2.0
  (tmp_path / "w" / "manifest.json").write_text(json.dumps(man))
  recorded = upd(tmp_path / "w")
  np.testing.assert_array_equal(recorded, upd(tmp_path / "w", target=man["best_metric"] + 2.0))
  assert not np.allclose(recorded, at_best)
  with pytest.raises(ValueError, match="target must be finite"):
    lopt.get("gpt", weights=str(path), task=TINY_TASK, target=float("nan"))


def test_optax_mismatched_tree_and_missing_inputs(tiny_weights):
  path, params = tiny_weights
  opt = lopt.get("gpt", weights=str(path), task=TINY_TASK, num_sampling_steps=2)
  other = {"Dense_0": {"kernel": jnp.zeros((4, 3)), "bias": jnp.zeros((3,))}}
  with pytest.raises(ValueError, match=r"do not match the G.pt model's task.*fits the "
                                       r"parameters of task contract\(\)"):
    opt.init(other)
  state = opt.init(params)
  with pytest.raises(ValueError, match="loss"):
    opt.update(params, state, params)
  with pytest.raises(ValueError, match="params"):
    opt.update(params, state, None, loss=1.0)
  with pytest.raises(ValueError, match="G.pt"):
    lopt.get("gpt", weights=None)
  with pytest.raises(ValueError, match="not both"):
    lopt.get("gpt", weights=str(path), target=0.1, prompt=0.2)
  with pytest.raises(TypeError, match="unexpected"):
    lopt.get("gpt", weights=str(path), learning_rate=3)


class _NNXNet(nnx.Module):
  """``make_params()``'s shapes under other names: nnx variables ``l1``, ``l2``, ``c``, ``s``."""

  def __init__(self, rngs):
    self.c = nnx.Param(jnp.zeros((3, 3, 2, 4)))
    self.l1 = nnx.Linear(8, 16, rngs=rngs)
    self.l2 = nnx.Linear(16, 4, rngs=rngs)
    self.s = nnx.Param(jnp.ones(()))


def test_any_tree_with_the_task_shapes_fits_and_nonfinite_losses_skip(tiny_weights):
  """A Flax nnx model with the task's leaf shapes but its own names is accepted; an
  update with a NaN loss is skipped (zero updates, state unchanged)."""
  path, _ = tiny_weights
  params = nnx.state(_NNXNet(nnx.Rngs(0)), nnx.Param)
  opt = lopt.get("gpt", weights=str(path), task=TINY_TASK, num_sampling_steps=2)
  state = opt.init(params)
  update = jax.jit(opt.update)
  u, skipped = update(params, state, params, loss=jnp.float32(jnp.nan))
  assert jax.tree.structure(u) == jax.tree.structure(params)
  assert all(not np.any(np.asarray(x)) for x in jax.tree.leaves(u))
  assert int(skipped.count) == 0
  np.testing.assert_array_equal(jax.random.key_data(skipped.key), jax.random.key_data(state.key))
  u, sampled = update(params, skipped, params, loss=jnp.float32(1.0))
  assert int(sampled.count) == 1 and any(np.any(np.asarray(x)) for x in jax.tree.leaves(u))


MLP_SPEC = [{"path": "Dense_0/bias", "shape": [5]}, {"path": "Dense_0/kernel", "shape": [3, 5]},
            {"path": "Dense_1/bias", "shape": [4]}, {"path": "Dense_1/kernel", "shape": [5, 4]}]


def _unit_permutation(perm):
  """Flat gather index permuting MLP_SPEC's 5 hidden units by ``perm``."""
  tok = Tokenizer(MLP_SPEC, 4)
  idx = np.arange(tok.num_params)
  views = [idx[o:o + n].reshape(s["shape"]) for o, n, s in
           zip(tok.offsets[:-1], tok.sizes, tok.spec)]
  out = np.concatenate([views[0][perm], views[1][:, perm].ravel(), views[2],
                        views[3][perm].ravel()])
  return out


def test_neuron_layout_tokens_are_units_and_round_trip():
  tok = Tokenizer(MLP_SPEC, 999, layout="neuron")
  assert (tok.num_tokens, tok.chunk_size) == (5 + 1, 3 + 1 + 4)
  np.testing.assert_array_equal(tok.token_group, [0, 0, 0, 0, 0, 1])
  flat = np.arange(tok.num_params, dtype=np.float32) + 1
  tokens = np.asarray(tok.tokenize(flat))
  tree = tok.unflatten(flat)
  j = 2
  np.testing.assert_array_equal(tokens[j], np.concatenate(
      [tree["Dense_0"]["kernel"][:, j], [tree["Dense_0"]["bias"][j]],
       tree["Dense_1"]["kernel"][j]]))
  np.testing.assert_array_equal(tokens[5, :4], tree["Dense_1"]["bias"])
  assert np.all(tokens[~tok.mask] == 0)
  np.testing.assert_array_equal(np.asarray(tok.detokenize(tokens)), flat)
  # Permuting hidden units permutes the unit tokens.
  perm = np.asarray([3, 0, 4, 1, 2])
  permuted = np.asarray(tok.tokenize(flat[_unit_permutation(perm)]))
  np.testing.assert_array_equal(permuted[:5], tokens[perm])
  with pytest.raises(ValueError, match="dense layers"):
    Tokenizer([{"path": "w", "shape": [3]}], 4, layout="neuron")
  with pytest.raises(ValueError, match="layout"):
    Tokenizer(MLP_SPEC, 4, layout="rows")


@pytest.mark.slow
def test_neuron_model_is_equivariant_to_hidden_unit_permutations():
  gpt = GPT(MLP_SPEC, **{**TINY, "layout": "neuron", "fuse_start": True, "skip": True})
  net = gpt.init(jax.random.key(0))
  net["dec"]["kernel"] = 0.1 * jax.random.normal(jax.random.key(1), net["dec"]["kernel"].shape)
  rng = np.random.default_rng(0)
  n = gpt.tokenizer.num_params
  ckpts = rng.normal(size=(4, 2, n)).astype(np.float32)
  stats = gpt.compute_stats(ckpts, np.ones((4, 2), np.float32))
  idx = _unit_permutation(np.asarray([3, 0, 4, 1, 2]))
  # Per-entry scales are per leaf, so they are permutation invariant: permuting the
  # start's units and the noisy tokens permutes the denoiser's output tokens.
  perm_tok = np.asarray([3, 0, 4, 1, 2, 5])
  x = jax.random.normal(jax.random.key(3), (2,) + gpt.mask.shape) * gpt.mask[None]

  @jax.jit
  def both(start, x):
    ms, mt = jnp.full((2,), 2.0), jnp.full((2,), 0.5)
    t = jnp.full((2,), 7, jnp.int32)
    return (gpt._denoiser(net, stats, start, ms, mt)(x, t),
            gpt._denoiser(net, stats, start[:, idx], ms, mt)(x[:, perm_tok], t))

  out, out_p = both(jnp.asarray(ckpts[:2, 0]), x)
  np.testing.assert_allclose(np.asarray(out_p), np.asarray(out)[:, perm_tok], atol=1e-5)


def test_shipped_weights_one_update_trains_an_unseen_digits_mlp():
  import tasks

  path = lopt.gpt.pretrained_gpt_path()
  assert (path / "manifest.json").exists(), f"the shipped G.pt weights are missing at {path}"
  manifest = lopt.gpt.read_gpt_manifest(path)
  task = tasks.get(manifest["task"]["name"], **manifest["task"]["config"])
  test = task.full_batch("test")
  params = task.init(jax.random.key(20_261_126))  # a seed the dataset never used
  opt = lopt.get("gpt", weights="pretrained", task=task, num_sampling_steps=10)
  test_loss = jax.jit(lambda p: task.metrics(p, jax.random.key(0), test)["loss"])
  loss = test_loss(params)
  key = jax.random.key(1)
  grads = jax.grad(task.loss)(params, key, task.batch(key, "train"))  # a minibatch gradient
  updates, state = jax.jit(opt.update)(grads, opt.init(params), params, loss=loss)
  new_loss = float(test_loss(optax.apply_updates(params, updates)))
  assert int(state.count) == 1
  assert new_loss < 0.5 * float(loss), (float(loss), new_loss)


def test_condition_grad_model_reads_the_gradient(tmp_path):
  _, params, stats = save_tiny(tmp_path / "w", condition_grad=True)  # checks compute_stats
  assert "grad_scale" in stats
  m = lopt.gpt.load_gpt(tmp_path / "w")
  np.testing.assert_array_equal(np.asarray(m.stats["grad_scale"]), stats["grad_scale"])
  s = m.model.tokenizer.flatten(params)[None]
  with pytest.raises(ValueError, match="grad_flat"):
    m.model.generate(m.params, m.stats, jax.random.key(0), s, jnp.ones(1), jnp.ones(1))
  # The optimizer passes its gradient argument: same key, other gradient, other update.
  opt = lopt.get("gpt", weights=str(tmp_path / "w"), task=TINY_TASK, num_sampling_steps=2)
  state = opt.init(params)
  update = jax.jit(opt.update)
  u1, _ = update(params, state, params, loss=2.0)
  u2, _ = update(jax.tree.map(lambda x: -3.0 * x, params), state, params, loss=2.0)
  u3, _ = update(params, state, params, loss=2.0)
  assert not np.allclose(np.asarray(u1["conv"]), np.asarray(u2["conv"]))
  np.testing.assert_array_equal(np.asarray(u1["conv"]), np.asarray(u3["conv"]))
  with pytest.raises(ValueError, match="grads do not match"):
    opt.update({"w": jnp.zeros(3)}, state, params, loss=2.0)
  with pytest.raises(ValueError, match="conditions on the gradient"):
    opt.update(None, state, params, loss=2.0)
