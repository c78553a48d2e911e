"""lopt: learned optimizers behind one optax interface.

Every optimizer, hand-designed or learned, is an
``optax.GradientTransformationExtraArgs`` whose ``update`` accepts ``loss=``::

  import lopt
  opt = lopt.get("adam", learning_rate=3e-3)
  state = opt.init(params)
  updates, state = opt.update(grads, state, params, loss=loss)
"""

from lopt._adafac_mlp_lopt import AdafacMLPLOpt as AdafacMLPLOpt
from lopt._base import CheckedState as CheckedState
from lopt._base import LearnedOptimizer as LearnedOptimizer
from lopt._base import check_trees as check_trees
from lopt._base import setting as setting
from lopt._base import with_checks as with_checks
from lopt._celo2_lopt import Celo2LOpt as Celo2LOpt
from lopt._hierarchical_lopt import HierarchicalLOpt as HierarchicalLOpt
from lopt._horizon import UNKNOWN_HORIZON as UNKNOWN_HORIZON
from lopt._layerwise_combo_lopt import BASE_DIRECTIONS as BASE_DIRECTIONS
from lopt._layerwise_combo_lopt import DIRECTIONS as DIRECTIONS
from lopt._layerwise_combo_lopt import SCHEDULES as COMBO_SCHEDULES
from lopt._layerwise_combo_lopt import LayerwiseComboLOpt as LayerwiseComboLOpt
from lopt._mlp_lopt import MLPLOpt as MLPLOpt
from lopt._per_param_lopt import MagnitudeLOpt as MagnitudeLOpt
from lopt._per_param_lopt import PerParamLOpt as PerParamLOpt
from lopt._per_param_lopt import init_schedule as init_schedule
from lopt._per_param_lopt import schedule_lr as schedule_lr
from lopt._registry import available as available
from lopt._registry import available_learned as available_learned
from lopt._registry import get as get
from lopt._registry import has_pretrained as has_pretrained
from lopt._registry import is_learned as is_learned
from lopt._registry import learned as learned
from lopt._registry import load_meta_params as load_meta_params
from lopt._registry import pretrained_path as pretrained_path
from lopt._registry import register as register
from lopt._registry import register_learned as register_learned
from lopt._registry import saved_config as saved_config
from lopt._registry import specialized_path as specialized_path
from lopt._weights import load_weights as load_weights
from lopt._weights import save_weights as save_weights

__version__ = "0.1.0"

from lopt import gpt as gpt  # noqa: E402  (G.pt; registered below)

register_learned(MLPLOpt.name, MLPLOpt)
register_learned(AdafacMLPLOpt.name, AdafacMLPLOpt)
register_learned(HierarchicalLOpt.name, HierarchicalLOpt)
register_learned(LayerwiseComboLOpt.name, LayerwiseComboLOpt)
register_learned(Celo2LOpt.name, Celo2LOpt)
register("gpt", gpt.gpt, learned=True, pretrained=gpt.PRETRAINED)

__all__ = [
    "AdafacMLPLOpt",
    "BASE_DIRECTIONS",
    "COMBO_SCHEDULES",
    "CheckedState",
    "Celo2LOpt",
    "DIRECTIONS",
    "HierarchicalLOpt",
    "LayerwiseComboLOpt",
    "LearnedOptimizer",
    "MLPLOpt",
    "MagnitudeLOpt",
    "PerParamLOpt",
    "UNKNOWN_HORIZON",
    "available",
    "available_learned",
    "check_trees",
    "get",
    "gpt",
    "has_pretrained",
    "init_schedule",
    "is_learned",
    "learned",
    "load_weights",
    "load_meta_params",
    "pretrained_path",
    "specialized_path",
    "register",
    "register_learned",
    "saved_config",
    "save_weights",
    "schedule_lr",
    "setting",
    "with_checks",
]
