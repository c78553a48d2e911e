"""Contract tests over every task and family, and bad-input errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tensorflow_datasets as tfds

import lopt
import tasks

EMBEDDED = [n for n in tasks.available() if n not in tasks.TFDS_TASKS]
# Small configurations keep the contract tests fast; defaults are used elsewhere.
SMALL = {"char_lm": dict(dim=16, layers=1, seq_len=16, batch_size=4, eval_batch_size=8),
         "char_lm_python": dict(dim=16, layers=1, seq_len=16, batch_size=4, eval_batch_size=8),
         "digits_cnn": dict(channels=(4, 8), batch_size=16),
         "digits_autoencoder": dict(hidden=(16, 4), batch_size=16),
         "finetune_digits": dict(batch_size=16),
         "finetune_char_lm": dict(batch_size=4, eval_batch_size=8),
         "cartpole": dict(horizon=20, batch_size=2, eval_batch_size=4),
         "acrobot": dict(horizon=20, batch_size=2, eval_batch_size=4),
         "catch": dict(batch_size=2, eval_batch_size=4),
         "quadratic": dict(dim=5)}


def _finite(tree):
  return all(np.all(np.isfinite(np.asarray(x, np.float32))) for x in jax.tree.leaves(tree))


def _assert_equal(a, b):
  if jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
    a, b = jax.random.key_data(a), jax.random.key_data(b)
  np.testing.assert_array_equal(a, b)


def _check_task(task):
  key = jax.random.key(0)
  params = task.init(key)
  batch = task.batch(jax.random.key(1), "train")
  loss, grads = jax.jit(jax.value_and_grad(task.loss))(params, key, batch)
  assert loss.shape == () and np.isfinite(float(loss))
  assert _finite(grads) and jax.tree.structure(grads) == jax.tree.structure(params)
  assert np.isfinite(float(task.normalize(loss)))
  # Metrics on the evaluation batch, which is the same for the same key.
  eval_batch = task.eval_batch(key, "test")
  jax.tree.map(_assert_equal, eval_batch, task.eval_batch(key, "test"))
  metrics = jax.jit(task.metrics)(params, key, eval_batch)
  assert "loss" in metrics and all(np.isfinite(float(v)) for v in metrics.values())
  # config() names every constructor argument: rebuilding gives the same task.
  assert type(task)(**task.config()).config() == task.config()
  # vmap over keys: init, batch and loss of 3 instances at once.
  keys = jax.random.split(key, 3)
  # (jitted: an eager vmapped init dispatches op by op, 15 s for the CNN)
  vparams = jax.jit(jax.vmap(task.init))(keys)
  vbatch = jax.jit(jax.vmap(lambda k: task.batch(k, "train")))(keys)
  vloss = jax.jit(jax.vmap(task.loss))(vparams, keys, vbatch)
  assert vloss.shape == (3,) and np.all(np.isfinite(vloss))
  return float(loss)


@pytest.mark.parametrize("name", EMBEDDED)
def test_task_contract(name):
  _check_task(tasks.get(name, **SMALL.get(name, {})))


@pytest.mark.parametrize("name", sorted(tasks.TFDS_TASKS))
def test_tfds_task_contract_with_mock_data(name):
  tasks.tfds_images.cache_clear()
  try:
    with tfds.testing.mock_data(num_examples=16):
      cfg = {"channels": (4,)} if name.endswith("cnn") else {"hidden": (8,)}
      task = tasks.get(name, batch_size=8, **cfg)
    assert task.data.train_x.shape[0] == 16 and task.data.num_classes == 10
    _check_task(task)
  finally:
    tasks.tfds_images.cache_clear()


def test_missing_tfds_data_names_embedded_alternative(tmp_path):
  with pytest.raises(tasks.DatasetNotAvailableError, match="digits_mlp"):
    tasks.tfds_images("mnist", data_dir=str(tmp_path))


@pytest.mark.parametrize("name", tasks.available_families())
def test_family_samples_valid_configs(name):
  family = tasks.get_family(name)
  cfgs = [family.sample(k) for k in jax.random.split(jax.random.key(0), 4)]
  assert cfgs[0] == family.sample(jax.random.split(jax.random.key(0), 4)[0])  # deterministic
  assert len({str(c) for c in cfgs}) > 1, "family samples only one config"
  task = family.task(cfgs[0])
  assert isinstance(task, tasks.Task) and task.config()
  # The full contract runs on every registry entry; here a sampled member must
  # give a finite loss and gradient (one compile, not the contract's five).
  params = task.init(jax.random.key(0))
  loss, grads = jax.jit(jax.value_and_grad(task.loss))(
      params, jax.random.key(1), task.batch(jax.random.key(2), "train"))
  assert np.isfinite(float(loss)) and _finite(grads)


def test_unknown_names_list_choices():
  with pytest.raises(KeyError, match="valid names: .*digits_mlp"):
    tasks.get("digit_mlp")
  with pytest.raises(KeyError, match="valid names: .*quadratic"):
    tasks.get_family("nope")
  with pytest.raises(KeyError, match="valid: .*relu"):
    tasks.get("digits_mlp", activation="relux")
  with pytest.raises(ValueError, match="valid splits"):
    tasks.get("digits_mlp").batch(jax.random.key(0), "valid")


def test_normalize_clips_nonfinite():
  task = tasks.get("digits_mlp")
  assert float(task.normalize(jnp.nan)) == tasks.MAX_NORMALIZED_LOSS
  assert float(task.normalize(jnp.inf)) == tasks.MAX_NORMALIZED_LOSS
  np.testing.assert_allclose(float(task.normalize(jnp.log(10.0))), 1.0, rtol=1e-6)


def test_train_scan_matches_python_loop():
  """tasks.train (one lax.scan) gives the same losses as a Python loop of train_step."""
  task, tx, key = tasks.get("digits_mlp", hidden=(16,)), lopt.get("adam"), jax.random.key(3)
  result = tasks.train(task, tx, 10, key)
  k_init, k_train = jax.random.split(key)
  params = task.init(k_init)
  state = tx.init(params)
  step = jax.jit(lambda p, s, k: tasks.train_step(task, tx, p, s, k))
  losses = []
  for k in jax.random.split(k_train, 10):
    params, state, loss = step(params, state, k)
    losses.append(float(loss))
  np.testing.assert_allclose(result.losses, losses, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               result.params, params)


@pytest.mark.parametrize("name", ["digits_mlp", "quadratic", "cartpole", "digits_autoencoder"])
def test_training_reduces_loss(name):
  task = tasks.get(name, **SMALL.get(name, {}))
  lr = {"cartpole": 3e-2}.get(name, 3e-2)
  losses = tasks.train(task, lopt.get("adam", learning_rate=lr), 150, jax.random.key(0)).losses
  assert float(losses[-20:].mean()) < float(losses[:5].mean()) - 0.1 * abs(float(losses[:5].mean()))


def test_train_raises_on_nonfinite_loss():
  task = tasks.get("quadratic", dim=5, condition=100.0)
  with pytest.raises(tasks.NonFiniteLossError, match="non-finite loss .* first at step"):
    tasks.train(task, optax.sgd(10.0), 200, jax.random.key(0))
  losses = tasks.train(task, optax.sgd(10.0), 200, jax.random.key(0), check_finite=False).losses
  assert not np.all(np.isfinite(losses))


def test_evaluate_reports_error_on_full_test_split():
  task = tasks.get("digits_mlp", hidden=(16,))
  metrics = tasks.evaluate(task, task.init(jax.random.key(0)), jax.random.key(0))
  assert set(metrics) == {"loss", "error"} and 0.0 <= metrics["error"] <= 1.0


@pytest.mark.parametrize("corpus,size", [("sklearn_descr", 30_000), ("python_stdlib", 2_000_000)])
def test_char_lm_text_is_embedded_ascii(corpus, size):
  text = tasks.embedded_text(corpus)
  assert text.size > size and int(text.max()) < 128
  task = tasks.CharLM(corpus=corpus, dim=8, layers=1, seq_len=8, eval_batch_size=5)
  n = int(0.9 * text.size)
  np.testing.assert_array_equal(task._splits["test"], text[n:])
  assert task.eval_batch(jax.random.key(0)).shape == (5, 9)
  with pytest.raises(KeyError, match="valid: .*python_stdlib"):
    tasks.embedded_text("nope")


def test_eval_batch_is_whole_split_or_large_batch():
  mlp = tasks.get("digits_mlp", hidden=(8,), batch_size=16)
  x, y = mlp.eval_batch(jax.random.key(0))
  assert x.shape[0] == y.shape[0] == tasks.digits().test_x.shape[0]
  jax.tree.map(np.testing.assert_array_equal, mlp.full_batch("train"),
               mlp.eval_batch(jax.random.key(1), "train"))
  assert tasks.get("cartpole").eval_batch(jax.random.key(0)).shape[0] == 64
  assert tasks.get("char_lm").eval_batch(jax.random.key(0)).shape == (256, 33)
  ae = tasks.get("digits_autoencoder")
  assert ae.eval_batch(jax.random.key(0)).shape == tasks.digits().test_x.shape
  quad = tasks.get("quadratic", dim=3, noise=1.0)  # default: one training batch
  np.testing.assert_array_equal(quad.eval_batch(jax.random.key(0), "test"),
                                quad.batch(jax.random.key(0), "test"))


def test_image_mlp_layer_norm_and_activations():
  plain = jax.eval_shape(tasks.ImageMLP(hidden=(8, 4)).init, jax.random.key(0))
  assert sorted(plain) == ["Dense_0", "Dense_1", "Dense_2"]  # default tree unchanged
  task = tasks.ImageMLP(hidden=(8, 4), activation="selu", layer_norm=True, batch_size=8)
  params = task.init(jax.random.key(0))
  assert sorted(params) == ["Dense_0", "Dense_1", "Dense_2", "LayerNorm_0", "LayerNorm_1"]
  assert np.isfinite(float(jax.jit(task.loss)(params, None, task.batch(jax.random.key(1)))))
  assert type(task)(**task.config()).layer_norm
  for act in ("leaky_relu", "selu", "softplus", "sigmoid"):
    tasks.ImageMLP(hidden=(4,), activation=act)  # accepted


def test_rl_normalize_maps_best_to_zero_and_worst_to_one():
  acrobot, cartpole = tasks.get("acrobot", horizon=20), tasks.get("cartpole", horizon=20)
  assert acrobot.name == "acrobot" and acrobot.env_name == "Acrobot-v1"
  # Acrobot: -1 per step until the goal, loss = -return in [0, horizon].
  np.testing.assert_allclose([acrobot.normalize(jnp.float32(v)) for v in (20.0, 5.0, 0.0)],
                             [1.0, 0.25, 0.0])
  # CartPole: +1 per step alive, loss = -return in [-horizon, 0].
  np.testing.assert_allclose([cartpole.normalize(jnp.float32(v)) for v in (0.0, -5.0, -20.0)],
                             [1.0, 0.75, 0.0])
  # Catch: +1 or -1 when the ball lands, loss = -return in [-1, 1].
  catch = tasks.get("catch")
  assert catch.name == "catch" and catch.obs_shape == (10, 5)
  np.testing.assert_allclose([catch.normalize(jnp.float32(v)) for v in (1.0, 0.0, -1.0)],
                             [1.0, 0.5, 0.0])


def test_rotated_quadratic_keeps_the_spectrum_and_its_optimum():
  plain = tasks.get("quadratic", dim=6, condition=100.0)
  rot = tasks.get("quadratic", dim=6, condition=100.0, rotate=True)
  q = np.asarray(rot.q)
  np.testing.assert_allclose(q @ q.T, np.eye(6), atol=1e-5)
  hess = jax.hessian(lambda x: rot.loss({"x": x}, None, jnp.zeros(6)))(jnp.zeros(6))
  np.testing.assert_allclose(np.linalg.eigvalsh(np.asarray(hess)), np.asarray(plain.h),
                             rtol=1e-4)
  assert abs(float(hess[0, 1])) > 1e-3          # not axis-aligned
  assert float(rot.loss({"x": rot.x_star}, None, jnp.zeros(6))) == pytest.approx(0.0, abs=1e-6)
