"""The task zoo: training problems as pure, jit- and vmap-able functions.

::

  import tasks
  task = tasks.get("digits_mlp", hidden=(64, 32))
  params = task.init(key)
  loss = task.loss(params, key, task.batch(key, "train"))
"""

from tasks._autoencoder import ImageAutoencoder as ImageAutoencoder
from tasks._base import MAX_NORMALIZED_LOSS as MAX_NORMALIZED_LOSS
from tasks._base import ChoiceFamily as ChoiceFamily
from tasks._base import Task as Task
from tasks._base import TaskFamily as TaskFamily
from tasks._custom import from_flax as from_flax
from tasks._custom import from_functions as from_functions
from tasks._datasets import ArrayDataset as ArrayDataset
from tasks._datasets import DatasetNotAvailableError as DatasetNotAvailableError
from tasks._datasets import digits as digits
from tasks._datasets import tfds_images as tfds_images
from tasks._digit_variants import DIGIT_TRANSFORMS as DIGIT_TRANSFORMS
from tasks._digit_variants import digits_variant as digits_variant
from tasks._digit_variants import transform_images as transform_images
from tasks._finetune import FINETUNE_TARGETS as FINETUNE_TARGETS
from tasks._finetune import HELD_OUT_SEEDS as HELD_OUT_SEEDS
from tasks._finetune import HELD_OUT_TARGETS as HELD_OUT_TARGETS
from tasks._finetune import SPECIALIZATION_SEEDS as SPECIALIZATION_SEEDS
from tasks._finetune import SPECIALIZATION_TARGETS as SPECIALIZATION_TARGETS
from tasks._finetune import FineTuneDigits as FineTuneDigits
from tasks._finetune import FineTuneLM as FineTuneLM
from tasks._finetune import finetune_configs as finetune_configs
from tasks._finetune import finetune_target as finetune_target
from tasks._image import ImageCNN as ImageCNN
from tasks._image import ImageMLP as ImageMLP
from tasks._lm import CORPORA as CORPORA
from tasks._lm import CharLM as CharLM
from tasks._lm import embedded_text as embedded_text
from tasks._pretrain import PRETRAIN_MODELS as PRETRAIN_MODELS
from tasks._pretrain import Pretrained as Pretrained
from tasks._pretrain import load_pretrained as load_pretrained
from tasks._pretrain import pretrain_model as pretrain_model
from tasks._pretrain import pretrained_path as pretrained_path
from tasks._pretrain import save_pretrained as save_pretrained
from tasks._quadratic import Quadratic as Quadratic
from tasks._registry import TFDS_TASKS as TFDS_TASKS
from tasks._registry import available as available
from tasks._registry import available_families as available_families
from tasks._registry import get as get
from tasks._registry import get_family as get_family
from tasks._registry import register as register
from tasks._rl import GymnaxPolicy as GymnaxPolicy
from tasks._train import NonFiniteLossError as NonFiniteLossError
from tasks._train import TrainResult as TrainResult
from tasks._train import evaluate as evaluate
from tasks._train import train as train
from tasks._train import train_step as train_step

__all__ = [
    "ArrayDataset", "CORPORA", "ChoiceFamily", "CharLM", "DIGIT_TRANSFORMS",
    "DatasetNotAvailableError", "FINETUNE_TARGETS", "FineTuneDigits", "FineTuneLM",
    "GymnaxPolicy", "HELD_OUT_SEEDS", "HELD_OUT_TARGETS", "ImageAutoencoder", "ImageCNN",
    "ImageMLP", "MAX_NORMALIZED_LOSS", "NonFiniteLossError", "PRETRAIN_MODELS", "Pretrained",
    "Quadratic", "SPECIALIZATION_SEEDS", "SPECIALIZATION_TARGETS", "TFDS_TASKS", "Task",
    "TaskFamily", "TrainResult", "available", "available_families", "digits", "digits_variant",
    "embedded_text", "evaluate", "finetune_configs", "finetune_target", "from_flax",
    "from_functions", "get", "get_family", "load_pretrained", "pretrain_model", "pretrained_path",
    "register", "save_pretrained", "tfds_images", "train", "train_step", "transform_images",
]
