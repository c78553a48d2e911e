"""G.pt training: checkpoint datasets, training and evaluation of the generative optimizer.

The model and the optimizer wrapper live in :mod:`lopt.gpt`; this package makes
their training data and trains and evaluates them::

  from meta_train import gpt
  gpt.generate("runs/data", task="digits_mlp", runs=64, steps_per_run=200)
  weights = gpt.train_gpt("runs/data", "runs/gpt", {"steps": 2000})
  report = gpt.evaluate_gpt(str(weights), "runs/data", "runs/gpt_eval")

Command lines (each ``--help`` lists its flags)::

  python -m meta_train.gpt.dataset --task=digits_mlp --runs=512 --out=runs/gpt_digits_data
  python -m meta_train.gpt.train --dataset=runs/gpt_digits_data --workdir=runs/gpt_digits
  python -m meta_train.gpt.evaluate --weights=runs/gpt_digits/weights --out=runs/gpt_eval
  python -m meta_train.gpt.protocol --validation_only --settings=runs/settings.json
  python -m meta_train.gpt.protocol --settings=runs/settings.json --out=runs/gpt_protocol
  python -m meta_train.gpt.protocol_return --validation_only --settings=runs/rl.json
  python -m meta_train.gpt.protocol_return --settings=runs/rl.json --out=runs/gpt_rl_protocol

The protocol (:mod:`meta_train.gpt.protocol`) is the evaluation that cannot flatter
the model: settings fixed on validation inits and dated before any test figure,
medians against medians, many init schemes, permutation-aligned novelty;
:mod:`meta_train.gpt.protocol_return` is its sibling for return-prompted (RL) models.

(``python -m meta_train.gpt_dataset``, ``gpt_train`` and ``gpt_eval`` still work.)

Reference: Peebles et al. 2022, arXiv 2209.12892.
"""

import importlib as _importlib

from meta_train.gpt._align import aligned_distance as aligned_distance
from meta_train.gpt._data import CheckpointDataset as CheckpointDataset
from meta_train.gpt._data import load_dataset as load_dataset
from meta_train.gpt._inits import INIT_SCHEMES as INIT_SCHEMES
from meta_train.gpt._inits import scheme_inits as scheme_inits
from meta_train.gpt._protocol import ProtocolSettings as ProtocolSettings
from meta_train.gpt._protocol_return import ReturnProtocolSettings as ReturnProtocolSettings

# Names of the command-line modules are imported on first use, so that
# ``python -m meta_train.gpt.<module>`` does not find its module already imported
# by this package (runpy warns about that).
_LAZY = {
    "DEFAULT_LR_RANGES": "dataset", "DEFAULT_TASK_CONFIGS": "dataset", "generate": "dataset",
    "ADAM_LRS": "evaluate", "evaluate_gpt": "evaluate",
    "choose_settings": "protocol", "evaluate_protocol": "protocol",
    "choose_return_settings": "protocol_return",
    "evaluate_return_protocol": "protocol_return",
    "DEFAULT_TRAIN_CONFIG": "train", "split_runs": "train", "task_grad_fn": "train",
    "train_gpt": "train",
}


def __getattr__(name: str):
  if name in _LAZY:
    value = getattr(_importlib.import_module(f"meta_train.gpt.{_LAZY[name]}"), name)
    globals()[name] = value
    return value
  raise AttributeError(f"module 'meta_train.gpt' has no attribute {name!r}")


def __dir__():
  return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "ADAM_LRS", "DEFAULT_LR_RANGES", "DEFAULT_TASK_CONFIGS", "DEFAULT_TRAIN_CONFIG",
    "INIT_SCHEMES", "CheckpointDataset", "ProtocolSettings", "ReturnProtocolSettings",
    "aligned_distance", "choose_return_settings", "choose_settings", "evaluate_gpt",
    "evaluate_protocol", "evaluate_return_protocol", "generate", "load_dataset",
    "scheme_inits", "split_runs", "task_grad_fn", "train_gpt",
]
