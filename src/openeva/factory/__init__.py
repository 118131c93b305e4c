"""The one model builder: every model openeva makes is built here, and its weights loaded under one policy.

``create_model`` (CLIP models and backbones by name or checkpoint directory, open_clip / timm style), the MIM
student and teacher (``build_student``, ``build_teacher``), the fine-tuning classifier (``build_classifier``) and
CLIP training's model with its towers initialised from other checkpoints (``create_clip``, ``load_tower``).
Which checkpoint keys may be missing, unexpected or of another shape is stated once per tower in
:mod:`openeva.factory.policies` and applied by :func:`openeva.checkpoints.load_weights`. ``models/`` holds the
modules only and imports nothing of this package. Models with a timm vision tower or a Hugging Face text tower
(open_clip's parameter names) are read by :mod:`openeva.factory.tower_weights`, under the same policies.
"""

from openeva.factory.classifier import EVA02_HEAD_INIT_SCALE, build_classifier, init_head
from openeva.factory.clip import create_clip, load_tower
from openeva.factory.create import (
    build_config, create_model, create_model_and_transforms, create_model_from_pretrained, get_tokenizer,
    image_transforms, load_from, model_config_dict, preprocess_cfg, resolve_pretrained, resolve_spec, save_model,
    spec_from_saved_config,
)
from openeva.factory.mim import build_student, build_teacher

__all__ = [
    "EVA02_HEAD_INIT_SCALE", "build_classifier", "build_config", "build_student", "build_teacher", "create_clip",
    "create_model", "create_model_and_transforms", "create_model_from_pretrained", "get_tokenizer",
    "image_transforms", "init_head", "load_from", "load_tower", "model_config_dict", "preprocess_cfg",
    "resolve_pretrained", "resolve_spec", "save_model", "spec_from_saved_config",
]
