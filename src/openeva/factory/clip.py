"""A CLIP model for contrastive training, its towers initialised from other checkpoints (EVA-CLIP's recipe).

EVA-CLIP starts its vision tower from an EVA-02 MIM checkpoint and its text tower from a CLIP (Sun et al., 2023,
arXiv 2303.15389): :func:`load_tower` loads one tower under ``policies.CLIP_VISUAL`` / ``policies.CLIP_TEXT``,
each widened by the run's skip list (keys re-initialised on purpose, e.g. ``head.*``, ``text_projection``).
"""

from __future__ import annotations

import torch
from torch import nn

from openeva.checkpoints import LoadReport, load_weights, read_text_tower, read_weights
from openeva.factory.create import create_model
from openeva.factory.policies import CLIP_TEXT, CLIP_VISUAL


def load_tower(tower: nn.Module, path: str, which: str, skip_list=()) -> LoadReport:
    """Initialise one CLIP tower from a checkpoint, leaving the ``skip_list`` keys (globs relative to the
    tower, e.g. ``head.*``, ``text_projection``) as initialised. Returns the load's report (``missing``: every
    tower key left as initialised; ``notes``: what was adapted, e.g. a resampled patch kernel or position grid).

    ``which="visual"``: EVA-02 MIM / backbone checkpoints (EVA native, timm, openeva) or any CLIP's vision tower;
    position embeddings and patch kernels are resampled to the tower (the patch 14 -> 16 step of B/16), a
    backbone's final ``fc_norm`` becomes the tower's ``norm``, and what a MIM backbone lacks (the projection
    head, EVA-CLIP's inner attention LN) keeps its fresh init. ``which="text"``: the text tower of an
    open_clip / EVA-CLIP / openeva CLIP checkpoint, or an OpenAI-layout state dict (text keys at the top level).
    Anything else missing, unexpected or mis-shaped is refused (``CheckpointMismatchError``).
    """
    if which == "visual":
        sd, notes, fmt = read_weights(path, tower)
        policy = CLIP_VISUAL
    elif which == "text":
        sd, notes, fmt = read_text_tower(path), [], None
        policy = CLIP_TEXT
    else:
        raise ValueError(f"which must be 'visual' or 'text', got {which!r}")
    return load_weights(tower, sd, policy.allowing(skip=tuple(skip_list)), path, notes=notes, fmt=fmt)


def create_clip(
    model_name: str,
    pretrained: str | None = None,
    *,
    pretrained_image: str | None = None,
    pretrained_text: str | None = None,
    skip_list=(),
    img_size=None,
    patch_dropout: float | None = None,
    drop_path_rate: float | None = None,
    vision: dict | None = None,
) -> nn.Module:
    """A CLIP model (``create_model``) with its towers initialised from ``pretrained_image`` (e.g. a MIM
    student's ``RUN/final``) and ``pretrained_text`` (a CLIP), ``skip_list`` keys left as initialised
    (``logit_scale`` there resets the temperature to its init). ``vision``: ``create_model``'s timm tower
    keywords (``{"timm_name": "convnext_tiny"}`` swaps the vision tower for that timm backbone)."""
    overrides = {} if drop_path_rate is None else {"drop_path_rate": drop_path_rate}
    overrides.update(vision or {})
    model = create_model(model_name, pretrained=pretrained, img_size=img_size, force_patch_dropout=patch_dropout,
                         **overrides)
    if not hasattr(model, "text"):
        raise ValueError(f"model.name={model_name!r} is a backbone; CLIP training needs a CLIP model "
                         "(see `openeva models --kind clip`)")
    if pretrained_image:
        load_tower(model.visual, pretrained_image, "visual", skip_list)
    if pretrained_text:
        load_tower(model.text, pretrained_text, "text", skip_list)
    if (pretrained_image or pretrained_text) and "logit_scale" in skip_list:
        with torch.no_grad():
            model.logit_scale.fill_(model.cfg.init_logit_scale)
    return model
