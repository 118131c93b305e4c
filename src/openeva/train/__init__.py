"""Training: one engine that runs a Task (CLIP here; MIM and fine-tuning reuse it), configs, checkpoints.

    from openeva.configs import load_config  # a shipped recipe by name, or a config file
    from openeva.train import train
    train(load_config("clip_tiny", ["optim.lr=1e-3"]))

Lower level: ``Trainer(cfg, task, ResumableLoader(dataset, batch_size, ...), world).fit()`` runs any
:class:`Task`.
"""

from openeva.factory import load_tower  # the CLIP tower init, built by the factory; kept here for its users
from openeva.train.clip_task import CLIPTask, build_clip, build_clip_model
from openeva.train.config import (
    DataConfig, DistConfig, LossConfig, ModelConfig, OptimConfig, ScheduleConfig, TrainConfig, apply_overrides,
    load_config,
)
from openeva.train.data import ResumableLoader
from openeva.train.distributed import World, init_world
from openeva.train.engine import Trainer, seed_all
from openeva.train.optim import create_optimizer, param_groups
from openeva.train.runner import register_task, train
from openeva.train.schedule import LRSchedule, lr_factor
from openeva.train.task import ParamGroupSpec, Task

__all__ = [
    "CLIPTask", "DataConfig", "DistConfig", "LRSchedule", "LossConfig", "ModelConfig", "OptimConfig",
    "ParamGroupSpec", "ResumableLoader", "ScheduleConfig", "Task", "TrainConfig", "Trainer", "World",
    "apply_overrides", "build_clip", "build_clip_model", "create_optimizer", "init_world", "load_config",
    "load_tower", "lr_factor", "param_groups", "register_task", "seed_all", "train",
]
