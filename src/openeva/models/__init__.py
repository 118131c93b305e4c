"""EVA models: the ViT backbone, the CLIP text tower, the two-tower CLIP, and the registry of sizes."""

from openeva.models.clip import CLIP, CLIPConfig
from openeva.models.registry import ModelSpec, get_model_spec, list_models, list_pretrained, register_model
from openeva.models.text import TextConfig, TextTransformer
from openeva.models.vit import Block, EVAViT, ViTConfig

__all__ = [
    "CLIP", "CLIPConfig", "Block", "EVAViT", "ModelSpec", "TextConfig", "TextTransformer", "ViTConfig",
    "get_model_spec", "list_models", "list_pretrained", "register_model",
]
