"""The named suites resolve, and the held-out suites are disjoint from every shipped
optimizer's meta-training tasks (checked by configuration, not by label)."""

import json

import pytest

import benchmarks
import lopt
import tasks
from meta_train._families import get_family

HELDOUT = ("heldout", "heldout_quick")


def _shipped_training_tasks():
  """(optimizer, family or task) for every shipped learned optimizer, from its manifest."""
  out = []
  for name in [*lopt.available_learned(), "gpt"]:
    if not lopt.has_pretrained(name):
      continue
    manifest = json.loads((lopt.pretrained_path(name) / "manifest.json").read_text())
    if "task" in manifest:       # G.pt: trained for one task
      t = manifest["task"]
      out.append((name, tasks.get(t["name"], **t["config"])))
      continue
    cfg = manifest["extra"]["meta_training"]["config"]
    out.append((name, get_family(cfg["task_family"])))
  return out


def test_heldout_suite_v2_shape():
  entries = benchmarks.suite("heldout")
  assert len(entries) >= 10
  assert sum(e.steps >= 1000 for e in entries) * 2 >= len(entries)
  kinds = {e.task for e in entries}
  assert {"digits_cnn", "digits_mlp", "char_lm", "cartpole", "quadratic",
          "digits_autoencoder"} <= kinds
  assert 3 <= len(benchmarks.suite("heldout_quick")) <= 4


def test_heldout_is_disjoint_from_every_shipped_optimizers_training_tasks():
  shipped = _shipped_training_tasks()
  assert {n for n, _ in shipped} >= {"celo2_lopt", "mlp_lopt", "gpt"}
  for suite in HELDOUT:
    for e in benchmarks.suite(suite):
      task = e.build()
      for name, source in shipped:
        if isinstance(source, tasks.Task):
          inside = type(task) is type(source) and task.config() == source.config()
        else:
          inside = source.contains(task)
        assert not inside, f"{suite}/{e.label} is in {name}'s meta-training tasks"


def test_heldout_is_disjoint_from_the_v2_training_family_and_validation_is_not_heldout():
  """The "broad" family (the version 2 runs) draws no held-out task; the validation
  suite (checkpoint choice) shares no task with the held-out suites."""
  family = get_family("broad")
  for suite in HELDOUT:
    for e in benchmarks.suite(suite):
      assert not family.contains(e.build()), f"{suite}/{e.label} is in 'broad'"
  assert family.contains(tasks.get("digits_cnn", channels=(8, 8), activation="tanh",
                                   batch_size=32))


def test_the_disjointness_check_can_fail():
  family = get_family("mlp_quad")
  assert family.contains(tasks.get("digits_mlp", hidden=(64, 64), activation="tanh",
                                   batch_size=32))
  assert family.contains(tasks.get("quadratic", dim=10, condition=100.0, noise=0.1, seed=3))
  assert not family.contains(tasks.get("digits_mlp", hidden=(64, 64), activation="tanh",
                                       batch_size=32, layer_norm=True))


def test_suites_resolve():
  labels = [e.label for s in benchmarks.SUITES.values() for e in s]
  assert len(set(labels)) == len(labels)     # labels are unique across suites
  for name, entries in benchmarks.SUITES.items():
    assert entries, name
    for e in entries:
      assert e.task in tasks.available() and e.steps > 1
  assert [e.label for e in benchmarks.parse_tasks("digits_cnn,quadratic", steps=7)] == [
      "digits_cnn", "quadratic"]
  assert all(e.steps == 7 for e in benchmarks.parse_tasks("heldout", steps=7))
  # Checkpoints are chosen on "validation", so it must not share a task with the held-out suites.
  key = lambda e: (e.task, repr(sorted(e.cfg.items())))
  for suite in HELDOUT:
    assert not {key(e) for e in benchmarks.suite("validation")} & {
        key(e) for e in benchmarks.suite(suite)}
  with pytest.raises(KeyError, match="suites: "):
    benchmarks.parse_tasks("no_such_task")
  with pytest.raises(KeyError, match="valid suites"):
    benchmarks.suite("nope")


def test_finetune_suites_split_like_the_specialization_families():
  """The specialization suite holds only specialization-family members, the three
  held-out suites only members of the held-out family or longer horizons (compared
  by full config, without building the tasks)."""
  import inspect

  defaults = {k: p.default for k, p in
              inspect.signature(tasks.FineTuneDigits).parameters.items()}

  def full(cfg):
    c = {**defaults, **cfg}
    c["classes"] = list(c["classes"] or (0, 1, 2, 3, 4))
    return json.dumps(c, sort_keys=True)

  spec = {full(c) for c in tasks.finetune_configs("specialization")}
  held = {full(c) for c in tasks.finetune_configs("held_out")}
  got = {name: [full(e.cfg) for e in benchmarks.suite(name)] for name in (
      "finetune_specialization", "finetune_heldout_targets", "finetune_heldout_seeds",
      "finetune_long", "finetune_long900")}
  assert set(got["finetune_specialization"]) == spec == set(got["finetune_long"])
  assert set(got["finetune_long900"]) == spec
  assert all(e.steps == 300 for e in benchmarks.suite("finetune_long"))
  assert all(e.steps == 900 for e in benchmarks.suite("finetune_long900"))
  assert all(c in held and c not in spec for c in
             got["finetune_heldout_targets"] + got["finetune_heldout_seeds"])
  assert {json.loads(c)["pretrain_seed"] for c in got["finetune_heldout_seeds"]} == set(
      tasks.HELD_OUT_SEEDS)
  task = benchmarks.suite("finetune_heldout_targets")[0].build()
  assert get_family("finetune_digits_held_out").contains(task)
