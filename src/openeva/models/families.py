"""How a refusal names a tower: the one helper the inference options (ToMe, int8, ONNX) share.

A message such as "token merging needs a ViT image tower; it is timm's convnext_tiny (ConvNeXt)" tells the user
which model family was refused, so it names the timm architecture where the module is (or wraps) a timm model,
the Hugging Face architecture for a transformers model, else the module's class.
"""

from __future__ import annotations

from torch import nn


def family_name(module: nn.Module) -> str:
    """``timm's convnext_tiny (ConvNeXt)``, ``transformers' XLMRobertaModel``, or the class name."""
    for attr in ("timm_name", "model_name"):
        name = getattr(module, attr, None)
        if isinstance(name, str) and name:
            return name
    timm_name = getattr(getattr(module, "cfg", None), "timm_name", None)  # a timm tower's config names its model
    trunk = getattr(module, "trunk", None)
    if isinstance(timm_name, str) and trunk is not None:
        return f"timm's {timm_name} ({type(trunk).__name__})"
    for m in (module, trunk, getattr(module, "transformer", None)):
        if m is None:
            continue
        cfg = getattr(m, "pretrained_cfg", None)  # timm models carry their architecture name here
        if isinstance(cfg, dict) and cfg.get("architecture"):
            return f"timm's {cfg['architecture']} ({type(m).__name__})"
        hf = getattr(m, "config", None)  # transformers models carry a PretrainedConfig
        if hf is not None and hasattr(hf, "model_type") and isinstance(m, nn.Module):
            return f"transformers' {type(m).__name__} ({hf.model_type})"
    return type(module).__name__
