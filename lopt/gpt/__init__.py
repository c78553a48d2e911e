"""G.pt: a diffusion transformer over network parameters, used as an optimizer.

::

  opt = lopt.get("gpt", weights="pretrained", task=tasks.get("digits_mlp", hidden=(32,)))
  updates, state = opt.update(grads, state, params, loss=test_loss)

With ``task=``, ``weights="pretrained"`` is the shipped model for that task
(:data:`SHIPPED`): the digits MLP's (prompted on test loss) or CartPole's (prompted
on return, ``loss=`` is then the policy's return).

A model fits the one task its manifest names (:func:`trained_for`): another task
raises :class:`TaskMismatchError` unless ``allow_other_task=True``, and a first
update from a loss outside its training range warns (:class:`GPTWarning`).

Peebles et al. 2022, "Learning to Learn with Generative Models of Neural Network
Checkpoints" (arXiv 2209.12892).
"""

from lopt.gpt._checks import GPTWarning as GPTWarning
from lopt.gpt._checks import TaskMismatchError as TaskMismatchError
from lopt.gpt._diffusion import Schedule as Schedule
from lopt.gpt._diffusion import diffusion_loss as diffusion_loss
from lopt.gpt._diffusion import make_schedule as make_schedule
from lopt.gpt._diffusion import q_sample as q_sample
from lopt.gpt._diffusion import sample as sample
from lopt.gpt._direction import best_value as best_value
from lopt.gpt._direction import higher_is_better as higher_is_better
from lopt.gpt._direction import use_log_metric as use_log_metric
from lopt.gpt._io import LoadedGPT as LoadedGPT
from lopt.gpt._io import load_gpt as load_gpt
from lopt.gpt._io import read_gpt_manifest as read_gpt_manifest
from lopt.gpt._io import save_gpt as save_gpt
from lopt.gpt._model import DEFAULT_CONFIG as DEFAULT_CONFIG
from lopt.gpt._model import GPT as GPT
from lopt.gpt._model import GPTNet as GPTNet
from lopt.gpt._optimizer import PRETRAINED as PRETRAINED
from lopt.gpt._optimizer import SHIPPED as SHIPPED
from lopt.gpt._optimizer import GPTState as GPTState
from lopt.gpt._optimizer import gpt as gpt
from lopt.gpt._optimizer import gpt_from_loaded as gpt_from_loaded
from lopt.gpt._optimizer import pretrained_gpt_path as pretrained_gpt_path
from lopt.gpt._optimizer import trained_for as trained_for
from lopt.gpt._tokenizer import Tokenizer as Tokenizer
from lopt.gpt._tokenizer import dense_stack as dense_stack
from lopt.gpt._tokenizer import param_spec as param_spec

__all__ = [
    "DEFAULT_CONFIG", "GPT", "GPTNet", "GPTState", "GPTWarning", "LoadedGPT", "PRETRAINED",
    "SHIPPED", "Schedule", "TaskMismatchError", "Tokenizer", "best_value", "dense_stack",
    "diffusion_loss", "gpt", "gpt_from_loaded", "higher_is_better", "load_gpt", "make_schedule",
    "param_spec", "pretrained_gpt_path", "q_sample", "read_gpt_manifest", "sample", "save_gpt",
    "trained_for", "use_log_metric",
]
