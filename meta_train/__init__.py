"""Meta-training: gradient estimators, truncated unrolls, the outer loop and its CLI.

::

  import meta_train
  cfg = meta_train.TrainConfig(lopt="mlp_lopt", task_family="digits_mlp",
                               unroll=meta_train.UnrollConfig(trunc_length=20),
                               estimator=meta_train.EstimatorConfig("pes"),
                               num_tasks=8, outer_steps=500)
  meta_train.train(cfg, "runs/mlp_lopt")   # resumable; see docs/meta_training.md

Command line: ``python -m meta_train.main --flagfile=meta_train/configs/<name>.flags``.
Specializing an optimizer to one pretrained model (docs/specialize.md):
``meta_train.specialize(pretrained=..., targets=..., workdir=...)`` or
``python -m meta_train.specialize --pretrained=digits_cnn --workdir=runs/spec``.
G.pt checkpoint datasets, training and evaluation: :mod:`meta_train.gpt`.
"""

from meta_train._config import trainable_mask as trainable_mask
from meta_train._estimators import ES as ES
from meta_train._estimators import ESTIMATORS as ESTIMATORS
from meta_train._estimators import PES as PES
from meta_train._estimators import EstimatorConfig as EstimatorConfig
from meta_train._estimators import PESState as PESState
from meta_train._estimators import TruncatedBackprop as TruncatedBackprop
from meta_train._estimators import make_estimator as make_estimator
from meta_train._families import MixtureFamily as MixtureFamily
from meta_train._families import available_families as available_families
from meta_train._families import get_family as get_family
from meta_train._specialize import SpecializeResult as SpecializeResult
from meta_train._specialize import TargetFamily as TargetFamily
from meta_train._specialize import specialize as specialize
from meta_train._trainer import TrainConfig as TrainConfig
from meta_train._trainer import TrainResult as TrainResult
from meta_train._trainer import export_weights as export_weights
from meta_train._trainer import make_outer_step as make_outer_step
from meta_train._trainer import train as train
from meta_train._unroll import META_LOSS_WEIGHTINGS as META_LOSS_WEIGHTINGS
from meta_train._unroll import InnerState as InnerState
from meta_train._unroll import UnrollConfig as UnrollConfig
from meta_train._unroll import UnrollOutput as UnrollOutput
from meta_train._unroll import init_inner_state as init_inner_state
from meta_train._unroll import reset_if_done as reset_if_done
from meta_train._unroll import unroll as unroll
from meta_train.gpt._data import CheckpointDataset as CheckpointDataset
from meta_train.gpt._data import load_dataset as load_gpt_dataset

__all__ = [
    "CheckpointDataset", "ES", "ESTIMATORS", "META_LOSS_WEIGHTINGS", "EstimatorConfig",
    "InnerState", "MixtureFamily", "PES", "PESState", "SpecializeResult", "TargetFamily",
    "TrainConfig", "TrainResult", "TruncatedBackprop", "UnrollConfig", "UnrollOutput",
    "available_families", "export_weights", "get_family", "init_inner_state",
    "load_gpt_dataset", "make_estimator", "make_outer_step", "reset_if_done", "specialize",
    "train", "trainable_mask", "unroll",
]
