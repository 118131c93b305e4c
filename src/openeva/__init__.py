"""openeva: the EVA vision foundation model system (EVA-02, EVA-CLIP) on plain PyTorch.

The open_clip-shaped API: ``create_model``, ``create_model_and_transforms``, ``create_model_from_pretrained``,
``get_tokenizer``, ``load_checkpoint``, ``list_models``, ``list_pretrained``; faster inference:
``apply_tome`` (token merging), ``quantize_int8``.
"""

from openeva.checkpoints import load_checkpoint, save_checkpoint
from openeva.factory import (
    create_model, create_model_and_transforms, create_model_from_pretrained, get_tokenizer, save_model,
)
from openeva.models.int8 import quantize_int8
from openeva.models.registry import get_model_spec, list_models, list_pretrained
from openeva.models.tome import apply_tome

__version__ = "0.1.0"


def __getattr__(name: str):
    """``openeva.embed``, ``openeva.Index``, ``openeva.classify``: imported on first use (faiss is optional)."""
    if name in ("embed", "classify", "Index"):
        from openeva import serve

        return getattr(serve, name)
    raise AttributeError(f"module 'openeva' has no attribute {name!r}")


__all__ = [
    "Index", "apply_tome", "classify", "create_model", "create_model_and_transforms", "create_model_from_pretrained",
    "embed", "get_model_spec", "get_tokenizer", "list_models", "list_pretrained", "load_checkpoint", "quantize_int8",
    "save_checkpoint", "save_model",
]
