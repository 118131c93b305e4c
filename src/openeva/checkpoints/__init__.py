"""Checkpoint I/O: openeva's safetensors format, loading EVA native, timm and open_clip weights, and the one
weight-loading policy (:class:`LoadPolicy`, applied by :func:`load_weights`)."""

from openeva.checkpoints.convert import detect_format, to_openeva, unwrap_state_dict
from openeva.checkpoints.io import (
    load_checkpoint, read_config, read_state_dict, read_text_tower, read_weights, resolve_model_dir, save_checkpoint,
)
from openeva.checkpoints.policy import CheckpointMismatchError, LoadPolicy, LoadReport, load_weights

__all__ = [
    "CheckpointMismatchError", "LoadPolicy", "LoadReport", "detect_format", "load_checkpoint", "load_weights",
    "read_config", "read_state_dict", "read_text_tower", "read_weights", "resolve_model_dir", "save_checkpoint",
    "to_openeva", "unwrap_state_dict",
]
