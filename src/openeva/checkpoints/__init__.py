"""Checkpoint I/O: openeva's safetensors format, and loading EVA native, timm and open_clip weights."""

from openeva.checkpoints.convert import detect_format, to_openeva, unwrap_state_dict
from openeva.checkpoints.io import (
    CheckpointMismatchError, load_checkpoint, read_config, read_state_dict, resolve_model_dir, save_checkpoint,
)

__all__ = [
    "CheckpointMismatchError", "detect_format", "load_checkpoint", "read_config", "read_state_dict", "resolve_model_dir",
    "save_checkpoint", "to_openeva", "unwrap_state_dict",
]
