"""The EVA-02 classifier for fine-tuning: a backbone (or an EVA-CLIP's vision tower) with a new small-init head.

Weights load under ``policies.CLASSIFIER``: the checkpoint's head is kept when it has as many classes, any other
head (or none, after MIM) is replaced by a new one; every other key must fit.
"""

from __future__ import annotations

import copy
import dataclasses

import torch
from torch import nn

from openeva.factory.create import build_config, create_model, load_from, resolve_pretrained, resolve_spec
from openeva.factory.policies import CLASSIFIER
from openeva.models.timm_tower import TimmTower, TimmTowerConfig
from openeva.models.vit import EVAViT

EVA02_HEAD_INIT_SCALE = 1e-3  # EVA-02 fine-tuning's head init scale (trunc-normal(0.02) x 0.001)


def init_head(model: nn.Module, init_scale: float = EVA02_HEAD_INIT_SCALE) -> None:
    """EVA-02 / BEiT head init: trunc-normal(0.02) weights scaled by ``init_scale``, zero bias, so the
    first logits are ~0 and the pretrained features are not disturbed by a random head."""
    head = getattr(model.head, "proj", model.head)  # a timm tower's head is (dropout, proj)
    with torch.no_grad():
        nn.init.trunc_normal_(head.weight, std=0.02)
        head.weight.mul_(init_scale)
        if head.bias is not None:
            nn.init.zeros_(head.bias)


def build_classifier(
    model,
    num_classes: int,
    *,
    pretrained: str | None = None,
    img_size=None,
    drop_path_rate: float | None = 0.1,
    patch_embed_grad_scale: float = 0.0,
    head_init_scale: float = EVA02_HEAD_INIT_SCALE,
) -> nn.Module:
    """An ``EVAViT`` with a ``num_classes`` head, ready for :class:`~openeva.train.finetune_task.FinetuneTask`.

    ``model``: a registered name or an openeva checkpoint directory (backbone, or CLIP: its vision tower is
    used), or a built ``EVAViT`` / CLIP model (deep-copied; ``img_size`` and ``drop_path_rate`` then keep the
    built values). Weights come from ``pretrained`` (path or tag) or the checkpoint directory; a checkpoint
    head with the same number of classes is kept, any other head is replaced by a new one initialised with
    ``head_init_scale``. ``patch_embed_grad_scale`` 0 detaches the patch embedding as EVA-02 fine-tuning does
    (1 trains it like every other layer).
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"classification needs at least 2 classes, got num_classes={num_classes!r}")
    if not 0.0 <= patch_embed_grad_scale <= 1.0:
        raise ValueError(f"patch_embed_grad_scale must be in [0, 1], got {patch_embed_grad_scale}")
    if not head_init_scale > 0:
        raise ValueError(f"head_init_scale must be > 0, got {head_init_scale}")
    if isinstance(model, str):
        vit, head_loaded = _named_classifier(model, num_classes, pretrained, img_size, drop_path_rate,
                                             patch_embed_grad_scale)
    else:
        if pretrained is not None:
            raise ValueError("pretrained= applies to a model name; load weights into a built model first")
        vit, head_loaded = _copied_classifier(model, num_classes, patch_embed_grad_scale)
    if not head_loaded:
        init_head(vit, head_init_scale)
    if getattr(vit, "spec", None) is not None:
        vit.spec = dataclasses.replace(vit.spec, config=vit.cfg)
    return vit


def _copied_classifier(model: nn.Module, num_classes: int, patch_embed_grad_scale: float):
    """A deep copy of a built backbone (or a CLIP's vision tower) as a ``num_classes`` classifier; -> (model,
    its head kept)."""
    source = getattr(model, "visual", model)
    if isinstance(source, TimmTower):
        tower = copy.deepcopy(source)
        tower.spec = getattr(model, "spec", None)
        kept = source is model and tower.num_classes == num_classes  # a CLIP projection is never a classifier
        if not kept:
            tower.reset_classifier(num_classes)
        return tower, kept
    if not isinstance(source, EVAViT):
        raise ValueError(f"fine-tuning needs an EVA ViT backbone or an EVA-CLIP model, got {type(model).__name__}")
    vit = copy.deepcopy(source)
    spec = getattr(model, "spec", None)
    if spec is not None:
        vit.spec = spec if source is model else dataclasses.replace(spec, name=f"{spec.name}-visual")
    vit.cfg = vit.cfg.replace(patch_embed_grad_scale=patch_embed_grad_scale)
    head_loaded = isinstance(vit.head, nn.Linear) and vit.head.out_features == num_classes
    if not head_loaded:
        vit.reset_classifier(num_classes)
    return vit, head_loaded


def _named_classifier(name, num_classes, pretrained, img_size, drop_path_rate, patch_embed_grad_scale):
    """Build a registered / saved model as a ``num_classes`` classifier; -> (model, checkpoint head kept)."""
    spec, saved_weights = resolve_spec(name)
    if isinstance(spec.config.vision if spec.is_clip else spec.config, TimmTowerConfig):
        return _timm_classifier(name, spec, num_classes, pretrained, img_size, drop_path_rate)
    overrides = {"patch_embed_grad_scale": patch_embed_grad_scale}
    if drop_path_rate is not None:
        overrides["drop_path_rate"] = drop_path_rate
    if spec.is_clip:  # the CLIP projection is never a classifier: take the tower, give it a new head
        clip = create_model(name, pretrained=pretrained, img_size=img_size, **overrides)
        vit = clip.visual
        vit.spec = dataclasses.replace(clip.spec, name=f"{clip.spec.name}-visual")
        vit.reset_classifier(num_classes)
        return vit, False
    vit = EVAViT(build_config(spec, img_size=img_size, num_classes=num_classes, **overrides))
    vit.spec = spec
    weights = pretrained or saved_weights
    if weights is None or vit.head.weight.is_meta:  # built on meta (an FSDP rank > 0): shapes only, no file read
        return vit, False
    report = load_from(vit, resolve_pretrained(spec, weights), CLASSIFIER)
    return vit, "head.weight" in report.loaded


def _timm_classifier(name, spec, num_classes, pretrained, img_size, drop_path_rate):
    """A timm tower (a ``timm:`` backbone, or a CLIP model's timm vision tower) as a ``num_classes`` classifier:
    a backbone whose own classifier already has ``num_classes`` outputs and was loaded keeps it; otherwise a new
    linear head follows the trunk's pooled features (``TimmTower.reset_classifier``). EVA-02's patch-embedding
    gradient scale is a ViT option and does not apply."""
    overrides = {} if drop_path_rate is None else {"drop_path_rate": drop_path_rate}
    model = create_model(name, pretrained=pretrained, img_size=img_size, **overrides)
    tower = model.visual if spec.is_clip else model
    loaded = (pretrained or resolve_spec(name)[1]) is not None
    if spec.is_clip:
        tower.spec = dataclasses.replace(model.spec, name=f"{model.spec.name}-visual")
    if not (loaded and not spec.is_clip and tower.num_classes == num_classes):
        tower.reset_classifier(num_classes)
        return tower, False
    return tower, True
