"""Tests of weight saving and loading (orbax arrays + JSON manifest)."""

import json

import jax
import numpy as np
import pytest

import lopt
from lopt._mlp_lopt import MLPLOpt
from lopt._weights import read_manifest


class _OtherLOpt(MLPLOpt):
  name = "other_lopt"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  lo = lopt.learned("mlp_lopt", hidden_size=8)
  mp = lo.init(jax.random.key(5))
  path = tmp_path_factory.mktemp("w") / "mlp"
  lopt.save_weights(path, lo, mp, extra={"meta_steps": 7})
  return lo, mp, path


def test_round_trip_is_exact(saved):
  lo, mp, path = saved
  loaded = lopt.load_weights(path, lo)
  assert jax.tree.structure(loaded) == jax.tree.structure(mp)
  for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(mp)):
    assert a.dtype == b.dtype
    np.testing.assert_array_equal(a, b)


def test_manifest_contents(saved):
  lo, mp, path = saved
  m = read_manifest(path)
  assert m["name"] == "mlp_lopt" and m["config"] == json.loads(json.dumps(lo.config()))
  assert m["features"] == list(lo.feature_names)
  assert m["lopt_version"] == lopt.__version__ and m["extra"] == {"meta_steps": 7}
  assert [e["shape"] for e in m["tree"]] == [list(x.shape) for x in jax.tree.leaves(mp)]
  assert not list(path.rglob("*.pkl")) and not list(path.rglob("*.pickle"))


def test_get_with_weights_path(saved):
  lo, mp, path = saved
  opt = lopt.get("mlp_lopt", weights=str(path), num_steps=10, hidden_size=8)
  params = {"w": np.ones((3, 2), np.float32)}
  updates, _ = opt.update(params, opt.init(params), params)
  assert updates["w"].shape == (3, 2)


def test_wrong_config_names_the_field(saved):
  _, _, path = saved
  with pytest.raises(ValueError, match=r"hidden_size.*saved 8, requested 32"):
    lopt.load_weights(path, lopt.learned("mlp_lopt"))
  with pytest.raises(ValueError, match=r"momentum_decays"):
    lopt.load_weights(path, MLPLOpt(hidden_size=8, momentum_decays=(0.9,)))


def test_wrong_architecture_is_an_error(saved):
  _, _, path = saved
  with pytest.raises(ValueError, match=r"architecture mismatch: saved 'mlp_lopt', "
                                       r"requested 'other_lopt'"):
    lopt.load_weights(path, _OtherLOpt(hidden_size=8))


def test_missing_manifest(tmp_path):
  with pytest.raises(FileNotFoundError, match="not a lopt weights directory"):
    lopt.load_weights(tmp_path, lopt.learned("mlp_lopt"))


def test_saving_a_wrong_tree_is_an_error(tmp_path):
  lo = lopt.learned("mlp_lopt", hidden_size=8)
  bad = lopt.learned("mlp_lopt", hidden_size=4).init(jax.random.key(0))
  with pytest.raises(ValueError, match="shape"):
    lopt.save_weights(tmp_path / "bad", lo, bad)


def test_fresh_spec_is_a_fresh_init():
  """``"name:fresh"`` is ``weights=None``: the untrained init, even when weights ship."""
  lo = lopt.learned("celo2_lopt")
  fresh = lopt.load_meta_params(lo, "fresh", seed=3)
  for a, b in zip(jax.tree.leaves(fresh), jax.tree.leaves(lo.init(jax.random.key(3)))):
    np.testing.assert_array_equal(a, b)
  params = {"w": np.ones((3, 2), np.float32)}
  a, b = lopt.get("celo2_lopt:fresh", num_steps=10), lopt.get("celo2_lopt", weights=None,
                                                                 num_steps=10)
  np.testing.assert_array_equal(a.update(params, a.init(params), params)[0]["w"],
                                b.update(params, b.init(params), params)[0]["w"])


@pytest.mark.parametrize("text,fault", [
    ('{"format": "lopt-weights/1", "config": {}, "tree": []}', "has no 'name' field"),
    ('[1, 2]', "must be a JSON object, got a JSON list"),
    ('{"name": ', "not valid JSON"),
    ('{"format": "lopt-weights/1", "name": "mlp_lopt", "config": [], "tree": []}',
     "'config' must be a JSON object"),
])
def test_malformed_manifest_names_the_file_and_the_fault(tmp_path, text, fault):
  (tmp_path / "manifest.json").write_text(text)
  with pytest.raises(ValueError, match=f"manifest.json.*{fault}"):
    lopt.load_weights(tmp_path, lopt.learned("mlp_lopt"))
  with pytest.raises(ValueError, match="manifest.json"):
    lopt.gpt.read_gpt_manifest(tmp_path)


def test_weights_are_checked_when_the_optimizer_is_built():
  """A bad ``weights=`` fails in ``lopt.get``, not at the first update; typos get a hint."""
  with pytest.raises(TypeError, match="weights for 'mlp_lopt' must be .* got int"):
    lopt.get("mlp_lopt", weights=123)
  with pytest.raises(ValueError, match=r"weights and mlp_lopt.init\(key\)"):
    lopt.get("mlp_lopt", weights=lopt.learned("mlp_lopt", hidden_size=4).init(
        jax.random.key(0)))
  with pytest.raises(FileNotFoundError, match="did you mean 'pretrained'"):
    lopt.get("mlp_lopt", weights="pretrain")
  with pytest.raises(FileNotFoundError, match="did you mean 'fresh'"):
    lopt.get("celo2_lopt:frsh")
  with pytest.raises(FileNotFoundError, match="did you mean 'pretrained'"):
    lopt.get("gpt", weights="pretraind")


def test_shipped_weights_of_another_architecture_load_by_name(saved, monkeypatch, tmp_path):
  """``lopt.get(name)`` builds the architecture the shipped manifest names (here
  hidden_size=8, not the default), for the default and for ``"pretrained"``."""
  import shutil

  from lopt import _registry

  _, mp, path = saved
  shutil.copytree(path, tmp_path / "mlp_lopt")
  monkeypatch.setattr(_registry, "_weights_dir", lambda: tmp_path)
  assert _registry.saved_config("mlp_lopt", "pretrained")["hidden_size"] == 8
  assert _registry.saved_config("mlp_lopt", "fresh") == {}
  params = {"w": np.ones((3, 2), np.float32)}
  for weights in ("default", "pretrained"):
    opt = lopt.get("mlp_lopt", num_steps=10) if weights == "default" else lopt.get(
        "mlp_lopt", weights=weights, num_steps=10)
    updates, _ = opt.update(params, opt.init(params), params)
    assert np.all(np.isfinite(updates["w"]))
  # The default architecture does not fit them: the error says how to build the right one.
  with pytest.raises(ValueError, match=r"field 'hidden_size': saved 8.*lopt.learned\('mlp_lopt', "
                                       r"\*\*lopt.saved_config\('mlp_lopt', 'pretrained'\)\)"):
    lopt.load_meta_params(lopt.learned("mlp_lopt"), "pretrained")
  assert lopt.saved_config("mlp_lopt", "pretrained")["hidden_size"] == 8
