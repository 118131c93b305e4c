"""Which module each tower config builds: the one table a CLIP model reads to make its towers.

A CLIP model has a vision and a text tower; each is chosen by the class of its config, never by a name:

    vision: ViTConfig -> EVAViT, TimmTowerConfig -> TimmTower
    text:   TextConfig -> TextTransformer, HFTextConfig -> HFTextTower

Each config is saved with a ``kind`` (``tower_to_dict``) so ``CLIPConfig.from_dict`` rebuilds the same class
from a checkpoint's ``config.json``; a dict without one is a ViT / CLIP text config (checkpoints written before
towers had kinds). A new tower family is one :func:`register_tower` call.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from openeva.models.hf_text import HFTextConfig, HFTextTower
from openeva.models.text import TextConfig, TextTransformer
from openeva.models.timm_tower import TimmTower, TimmTowerConfig
from openeva.models.vit import EVAViT, ViTConfig


@dataclass(frozen=True)
class TowerKind:
    kind: str  # saved in config.json
    modality: str  # "vision" | "text"
    config_cls: type
    module_cls: type


_BY_KIND: dict[str, TowerKind] = {}
_BY_CONFIG: dict[type, TowerKind] = {}


def register_tower(kind: str, modality: str, config_cls: type, module_cls: type) -> None:
    """Adds a tower family: configs of ``config_cls`` build ``module_cls`` and are saved as ``kind``."""
    if modality not in ("vision", "text"):
        raise ValueError(f"modality must be 'vision' or 'text', got {modality!r}")
    if kind in _BY_KIND or config_cls in _BY_CONFIG:
        raise ValueError(f"tower kind {kind!r} / {config_cls.__name__} is already registered")
    entry = TowerKind(kind, modality, config_cls, module_cls)
    _BY_KIND[kind] = entry
    _BY_CONFIG[config_cls] = entry


register_tower("eva_vit", "vision", ViTConfig, EVAViT)
register_tower("timm", "vision", TimmTowerConfig, TimmTower)
register_tower("clip_text", "text", TextConfig, TextTransformer)
register_tower("hf_text", "text", HFTextConfig, HFTextTower)

_DEFAULT_KIND = {"vision": "eva_vit", "text": "clip_text"}  # dicts saved before kinds existed


def _entry(cfg, modality: str) -> TowerKind:
    entry = _BY_CONFIG.get(type(cfg))
    if entry is None or entry.modality != modality:
        known = ", ".join(e.config_cls.__name__ for e in _BY_KIND.values() if e.modality == modality)
        raise TypeError(f"a {modality} tower config must be one of {known}, got {type(cfg).__name__}")
    return entry


def build_tower(cfg, modality: str) -> nn.Module:
    """The module of a ``modality`` ("vision" / "text") tower config."""
    return _entry(cfg, modality).module_cls(cfg)


def tower_output_dim(cfg, modality: str) -> int:
    """The embedding size a tower config produces (a ViT's head, a text projection, a timm head)."""
    _entry(cfg, modality)
    return cfg.num_classes if isinstance(cfg, ViTConfig) else cfg.embed_dim


def tower_to_dict(cfg, modality: str) -> dict:
    return {"kind": _entry(cfg, modality).kind, **cfg.to_dict()}


def tower_from_dict(d: dict, modality: str):
    d = dict(d)
    kind = d.pop("kind", _DEFAULT_KIND[modality])
    entry = _BY_KIND.get(kind)
    if entry is None or entry.modality != modality:
        known = ", ".join(k for k, e in _BY_KIND.items() if e.modality == modality)
        raise ValueError(f"unknown {modality} tower kind {kind!r} in the saved config (known: {known})")
    from_dict = getattr(entry.config_cls, "from_dict", None)
    return from_dict(d) if from_dict is not None else entry.config_cls(**d)
