"""Training and evaluation: `focalnet train` / `pretrain` / `evaluate` and their Python API.

One engine (`Trainer`) runs every task (`Task`): classification, masked image modeling, and
detection and instance segmentation (`focalnet.training.detection`) here.
"""

from .config import RECIPES, TASKS, TrainConfig, load_config
from .evaluation import Evaluation, evaluate, evaluate_checkpoint
from .task import Task
from .trainer import Trainer, train

__all__ = [
    "RECIPES",
    "TASKS",
    "Evaluation",
    "Task",
    "TrainConfig",
    "Trainer",
    "evaluate",
    "evaluate_checkpoint",
    "load_config",
    "train",
]
