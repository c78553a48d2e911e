"""Starting networks for the G.pt evaluation protocol: init schemes and seed ranges.

An init is named by an integer id ``n`` and a scheme. The id fixes the key exactly
as a checkpoint dataset of seed :data:`INIT_KEY_SEED` would for its run ``n``
(``split(fold_in(key(seed), n), 3)[0]``, see :mod:`meta_train.gpt.dataset`), and
ids come from fixed ranges far above any dataset's run ids, so validation inits,
test inits and training runs never share a key (:func:`check_disjoint`).

Schemes (the same id gives paired draws across schemes):

* ``train``: drawn like the training data: ``task.init(key)`` times a factor
  log-uniform in the datasets' ``init_scale_range`` (``[0.5, 2]`` for the shipped
  model's data).
* ``scale:s`` (s > 0; the protocol uses 0.25, 0.5, 2, 4): the ``train`` draw of the
  same id times ``s``.
* ``orthogonal``: every kernel an orthogonal matrix (gain 1, rows = fan-in), biases 0.
* ``uniform``: kernels ``U(-sqrt(3 / fan_in), sqrt(3 / fan_in))`` (LeCun uniform,
  the variance of Flax's default init), biases 0.
* ``torch_default``: PyTorch's ``nn.Linear`` default: kernels kaiming-uniform with
  ``a = sqrt(5)``, i.e. ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, and biases
  ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``.

The last three need every leaf to be a ``.../kernel`` (fan-in = product of all but
the last dimension) or a ``.../bias``.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

import tasks

__all__ = ["INIT_SCHEMES", "INIT_KEY_SEED", "SPLITS", "check_disjoint", "check_scheme",
           "init_ids", "scheme_inits"]

#: The base seed of every protocol init key (that of the first shipped dataset).
INIT_KEY_SEED = 0
#: ``split: first id``. Each split has up to ``SPLIT_SIZE`` ids; datasets use ids < 2**20.
SPLITS = {"validation": 1_000_000_000, "test": 2_000_000_000}
SPLIT_SIZE = 100_000_000
#: The schemes the protocol reports, in order.
INIT_SCHEMES = ("train", "scale:0.25", "scale:0.5", "scale:2", "scale:4", "orthogonal",
                   "uniform", "torch_default")
_NAMED = ("train", "orthogonal", "uniform", "torch_default")


def check_scheme(name: str) -> float | None:
  """Raises ``ValueError`` (listing the valid names) unless ``name`` is a scheme.

  Returns the factor of a ``scale:s`` scheme, else None.
  """
  if name in _NAMED:
    return None
  if name.startswith("scale:"):
    try:
      s = float(name[len("scale:"):])
    except ValueError:
      s = float("nan")
    if math.isfinite(s) and s > 0:
      return s
  raise ValueError(f"unknown init scheme {name!r}; valid: {', '.join(_NAMED)}, scale:<s> "
                   f"with s > 0 (e.g. {', '.join(INIT_SCHEMES[1:5])})")


def init_ids(split: str, num: int) -> np.ndarray:
  """The first ``num`` init ids of ``split`` ("validation" or "test")."""
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; valid: {sorted(SPLITS)}")
  if not 0 <= num <= SPLIT_SIZE:
    raise ValueError(f"num must be in [0, {SPLIT_SIZE}], got {num}")
  return SPLITS[split] + np.arange(num, dtype=np.int64)


def _dataset_indices(index: dict[str, Any]) -> list[dict[str, Any]]:
  return list(index.get("datasets", [index]))


def check_disjoint(index: dict[str, Any], *id_sets: Iterable[int]) -> None:
  """Raises ``ValueError`` if the id sets overlap each other or a training run's id.

  ``index`` is a (possibly comma-joined) dataset's index; every dataset's run ids
  (``shards[*].runs[*].run_id``, the ``n`` of its run keys) are compared, whatever
  its seed (the stricter check).
  """
  sets = [set(int(i) for i in s) for s in id_sets]
  for a in range(len(sets)):
    for b in range(a + 1, len(sets)):
      both = sets[a] & sets[b]
      if both:
        raise ValueError(f"init id sets {a} and {b} share {len(both)} ids (e.g. {min(both)})")
  for ds in _dataset_indices(index):
    runs = {int(r["run_id"]) for s in ds.get("shards", []) for r in s.get("runs", [])}
    for k, s in enumerate(sets):
      both = runs & s
      if both:
        raise ValueError(f"init id set {k} shares {len(both)} ids with the training runs of "
                         f"a dataset of seed {ds.get('seed')} (e.g. {min(both)})")


def _fan_in(path: str, shape: Sequence[int], scheme: str) -> int:
  if path.endswith("kernel") and len(shape) >= 2:
    return int(np.prod(shape[:-1]))
  if path.endswith("bias") and len(shape) == 1:
    return 0
  raise ValueError(f"init scheme {scheme!r} needs kernel and bias leaves; leaf {path!r} of "
                   f"shape {tuple(shape)} is neither")


def _leaf(scheme: str, key: jax.Array, path: str, shape: Sequence[int], fan_in_of_bias: int):
  fan = _fan_in(path, shape, scheme)
  if fan == 0:  # a bias
    if scheme != "torch_default":
      return jnp.zeros(shape, jnp.float32)
    b = 1.0 / math.sqrt(fan_in_of_bias)
    return jax.random.uniform(key, shape, jnp.float32, -b, b)
  if scheme == "orthogonal":
    w = jax.nn.initializers.orthogonal()(key, (fan, shape[-1]), jnp.float32)
    return w.reshape(shape)
  bound = math.sqrt(3.0 / fan) if scheme == "uniform" else 1.0 / math.sqrt(fan)
  return jax.random.uniform(key, shape, jnp.float32, -bound, bound)


def _named_init(like: Any, scheme: str, key: jax.Array):
  leaves, treedef = jax.tree_util.tree_flatten_with_path(like)
  paths = ["/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in p) for p, _ in leaves]
  shapes = [tuple(x.shape) for _, x in leaves]
  # A bias takes the fan-in of the kernel of the same layer (its path's parent).
  kernel_fan = {p.rsplit("/", 1)[0]: int(np.prod(s[:-1])) for p, s in zip(paths, shapes)
                if p.endswith("kernel") and len(s) >= 2}
  keys = jax.random.split(key, len(leaves))
  out = [_leaf(scheme, keys[i], p, s, kernel_fan.get(p.rsplit("/", 1)[0], 1))
         for i, (p, s) in enumerate(zip(paths, shapes))]
  return jax.tree_util.tree_unflatten(treedef, out)


@functools.partial(jax.jit, static_argnames=("task",))
def _draw(task, kind, ids, log_lo, log_hi, factor):
  # One compilation per task: ``kind`` indexes _NAMED ("train" serves every scale:s too).
  like = jax.eval_shape(task.init, jax.random.key(0))

  def train(k_init, k_scale):
    s = jnp.exp(jax.random.uniform(k_scale, (), jnp.float32, log_lo, log_hi)) * factor
    return jax.tree.map(lambda p: p * s, task.init(k_init))

  branches = [train] + [lambda k, _, name=name: _named_init(like, name, k)
                        for name in _NAMED[1:]]

  def one(n):
    k_run = jax.random.fold_in(jax.random.key(INIT_KEY_SEED), n)
    k_init, _, k_scale = jax.random.split(k_run, 3)  # the dataset's k_init, then a spare key
    return jax.lax.switch(kind, branches, k_init, k_scale)

  return jax.vmap(one)(ids)


def scheme_inits(task: tasks.Task, scheme: str, ids: Sequence[int], *,
                 init_scale_range: tuple[float, float]) -> Any:
  """Batched starting parameters (leading axis = ``ids``) of ``scheme``; see the module doc.

  Example::

    ids = init_ids("test", 64)
    p = scheme_inits(task, "scale:2", ids, init_scale_range=(0.5, 2.0))

  Args:
    task: the task whose ``init`` gives the tree (and the ``train`` draws).
    scheme: a scheme name (:func:`check_scheme`).
    ids: init ids (:func:`init_ids`).
    init_scale_range: the training data's log-uniform init-scale range.
  """
  factor = check_scheme(scheme)
  lo, hi = (float(v) for v in init_scale_range)
  if not 0 < lo <= hi:
    raise ValueError(f"init_scale_range must satisfy 0 < lo <= hi, got {init_scale_range}")
  kind = 0 if factor is not None else _NAMED.index(scheme)
  ids = jnp.asarray(np.asarray(ids, np.int64).astype(np.uint32))
  return _draw(task, jnp.int32(kind), ids, jnp.float32(math.log(lo)), jnp.float32(math.log(hi)),
               jnp.float32(1.0 if factor is None else factor))
