"""The learned-optimizer weights shipped inside the package.

Each loads offline through ``lopt.get(name)`` (the default when weights ship), has
a manifest naming the command that reproduced it, differs from a fresh
initialization, and trains a small task it was not meta-trained on.
"""

import json

import jax
import numpy as np
import pytest

import lopt
import tasks

SHIPPED = ["mlp_lopt", "celo2_lopt", "layerwise_combo_lopt"]


def test_required_weights_ship():
  assert all(lopt.has_pretrained(n) for n in SHIPPED + ["gpt"]), [
      n for n in SHIPPED + ["gpt"] if not lopt.has_pretrained(n)]
  assert lopt.pretrained_path("gpt") == lopt.gpt.pretrained_gpt_path()
  assert lopt.is_learned("gpt") and not lopt.is_learned("adam")
  assert "gpt" not in lopt.available_learned()  # it has no meta-params to meta-train


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_weights(name):
  lo = lopt.learned(name, **lopt.saved_config(name, "pretrained"))   # the manifest's architecture
  path = lopt.pretrained_path(name)
  manifest = json.loads((path / "manifest.json").read_text())
  assert manifest["name"] == name
  run = manifest["extra"]["meta_training"]
  assert run["command"].startswith("python -m meta_train.main --flagfile=meta_train/configs/")
  assert (path / "meta_training_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

  trained = lopt.load_meta_params(lo, "pretrained")
  fresh = lo.init(jax.random.key(0))
  assert jax.tree.structure(trained) == jax.tree.structure(fresh)
  assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(trained),
                                                   jax.tree.leaves(fresh)))

  task = tasks.get("digits_mlp", hidden=(32,), activation="elu")   # elu: in no family
  result = tasks.train(task, lopt.get(name, num_steps=100), 100, jax.random.key(1))
  losses = np.asarray(result.losses)
  assert np.all(np.isfinite(losses))
  assert losses[-10:].mean() < 0.25 * losses[:5].mean(), (losses[:5], losses[-10:])


def test_shipped_specialized_optimizer_fits_its_backbone_only():
  """The digits-CNN specialized layerwise_combo_lopt: its manifest names the backbone
  and the command; it fine-tunes a held-out target and refuses a 10-class head."""
  path = lopt.specialized_path("digits_cnn")
  manifest = json.loads((path / "manifest.json").read_text())
  assert manifest["name"] == "layerwise_combo_lopt"
  assert manifest["extra"]["specialized_to"]["backbone"] == "digits_cnn"
  assert manifest["extra"]["command"].startswith(
      "python -m meta_train.specialize "
      "--flagfile=meta_train/configs/specialize_digits_cnn_cosine.flags")
  assert manifest["extra"]["meta_training"]["outer_step"] == 1920
  assert manifest["config"]["schedule"] == "cosine"   # v6: it needs the horizon
  with pytest.raises(ValueError, match="schedule='cosine' decays over num_steps"):
    lopt.get("layerwise_combo_lopt", weights=path, num_steps="unknown")
  with pytest.raises(KeyError, match="shipped: digits_cnn"):
    lopt.specialized_path("resnet")
  opt = lopt.get("layerwise_combo_lopt", weights=path, num_steps=20)
  held_out = tasks.FineTuneDigits(classes=None, transform="rotate180")
  losses = np.asarray(tasks.train(held_out, opt, 20, jax.random.key(0)).losses)
  assert np.all(np.isfinite(losses)) and losses[-5:].mean() < 0.7 * losses[:3].mean()
  ten_classes = tasks.FineTuneDigits(classes=tuple(range(10)))
  with pytest.raises(ValueError, match=r"tensor 4 of 6 has another shape.*Dense_0.*\(10,\)"):
    opt.init(ten_classes.init(jax.random.key(0)))
