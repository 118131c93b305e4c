"""Reading checkpoints into models with a timm vision tower or a Hugging Face text tower.

Those towers keep open_clip's parameter names (``visual.trunk.*`` + ``visual.head.*``; ``text.transformer.*`` +
``text.proj.*``), so their keys need no conversion; what differs between checkpoints is where the *other*
tower's keys are: open_clip's plain ``CLIP`` keeps its CLIP text tower at the top level (``token_embedding``,
``transformer.resblocks``, ...), its ``CustomTextCLIP`` under ``text.``. Each tower is read on its own: a timm or
HF tower by identity, an EVA ViT / CLIP text tower through :mod:`openeva.checkpoints`' converters. A timm
checkpoint (``timm.create_model(...).state_dict()``) loads into a bare timm backbone as its ``trunk``.
"""

from __future__ import annotations

import torch
from torch import nn

from openeva.checkpoints import read_state_dict
from openeva.checkpoints.convert import detect_format, text_to_openeva, to_openeva
from openeva.checkpoints.io import adapt_to_model, config_beside
from openeva.models.clip import CLIP
from openeva.models.hf_text import HFTextTower
from openeva.models.timm_tower import TimmTower

# Top-level keys of a CLIP text tower in open_clip's plain CLIP (OpenAI layout), moved under ``text.``.
_TOP_TEXT = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.", "text_projection")
_BUFFERS = ("attn_mask",)  # open_clip's non-learned buffers some checkpoints carry


def has_library_tower(model: nn.Module) -> bool:
    """Whether ``model`` is, or has, a timm / Hugging Face tower (then :func:`read_tower_weights` reads it)."""
    towers = (model, getattr(model, "visual", None), getattr(model, "text", None))
    return any(isinstance(t, (TimmTower, HFTextTower)) for t in towers)


def _strip(sd: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def _timm_tower_keys(sd: dict[str, torch.Tensor], tower: TimmTower) -> tuple[dict, list[str]]:
    """A timm tower's keys as they are, a bare timm state dict as its ``trunk``; an absolute position table
    of another grid resampled (timm ViTs at another resolution)."""
    notes = []
    if sd and not any(k.startswith("trunk.") for k in sd):  # timm's own keys (its head is "head." too)
        sd = {f"trunk.{k}": v for k, v in sd.items()}
        notes.append("read a timm backbone state dict as the tower's trunk")
    pos = sd.get("trunk.pos_embed")
    target = getattr(tower.trunk, "pos_embed", None)
    if pos is not None and isinstance(target, torch.Tensor) and pos.shape != target.shape and pos.dim() == 3:
        from timm.layers import resample_abs_pos_embed

        trunk = tower.trunk
        prefix = 0 if getattr(trunk, "no_embed_class", False) else getattr(trunk, "num_prefix_tokens", 1)
        grid = trunk.patch_embed.grid_size
        sd = dict(sd)
        sd["trunk.pos_embed"] = resample_abs_pos_embed(pos, new_size=list(grid), num_prefix_tokens=prefix)
        notes.append(f"resampled trunk.pos_embed to {grid[0]}x{grid[1]}")
    return sd, notes


def _vision_keys(raw: dict, visual: nn.Module) -> tuple[dict, list[str]]:
    part = _strip(raw, "visual.")
    if isinstance(visual, TimmTower):
        return _timm_tower_keys(part, visual)
    prefixed = {f"visual.{k}": v for k, v in part.items()}  # an EVA ViT: the checkpoints room converts it
    return to_openeva(prefixed, detect_format(prefixed), is_clip=False), []


def _text_keys(raw: dict, text: nn.Module) -> dict:
    part = _strip(raw, "text.")
    if not part:  # open_clip's plain CLIP: the text tower at the top level
        part = {k: v for k, v in raw.items() if k.startswith(_TOP_TEXT)}
    if isinstance(text, HFTextTower):
        return part
    return text_to_openeva(part)


def read_tower_weights(path, model: nn.Module) -> tuple[dict[str, torch.Tensor], list[str], str]:
    """``(state dict in the model's keys, notes, format)`` for a model that :func:`has_library_tower`."""
    raw = {k.removeprefix("module."): v for k, v in read_state_dict(path).items()}
    raw = {k: v for k, v in raw.items() if k.rsplit(".", 1)[-1] not in _BUFFERS}
    fmt = "open_clip" if any(k.startswith(("visual.trunk.", "text.transformer.")) for k in raw) else "openeva"
    target = model.state_dict()
    if isinstance(model, CLIP):
        vision, notes = _vision_keys(raw, model.visual)
        sd = {f"visual.{k}": v for k, v in vision.items()}
        sd.update({f"text.{k}": v for k, v in _text_keys(raw, model.text).items()})
        sd.update({k: v for k, v in raw.items() if k in ("logit_scale", "logit_bias")})
    elif isinstance(model, TimmTower):
        part = _strip(raw, "visual.") if any(k.startswith("visual.") for k in raw) else raw
        sd, notes = _timm_tower_keys(part, model)
        fmt = "timm" if any("trunk" in n for n in notes) else fmt
    else:
        raise TypeError(f"{type(model).__name__} has no timm / Hugging Face tower")
    # buffers transformers no longer saves (position_ids) and the model does not have: not weights
    for k in [k for k in sd if k.endswith("position_ids") and k not in target]:
        sd.pop(k)
    sd, more = adapt_to_model(sd, model, config_beside(path))  # an EVA ViT beside an HF text tower
    return sd, notes + more, fmt
