"""Training and evaluation: `focalnet train` / `focalnet evaluate` and their Python API."""

from .config import RECIPES, TrainConfig, load_config
from .evaluation import Evaluation, evaluate, evaluate_checkpoint
from .trainer import Trainer, train

__all__ = ["RECIPES", "Evaluation", "TrainConfig", "Trainer", "evaluate", "evaluate_checkpoint", "load_config", "train"]
