"""EVA-CLIP: an EVA ViT image tower and a CLIP text tower trained contrastively (Sun et al., 2023).

API in open_clip's shape so its users need nothing new: ``encode_image``/``encode_text`` with ``normalize=``,
``forward(image, text) -> (image_features, text_features, logit_scale.exp())``, ``lock_*_tower``,
``set_grad_checkpointing``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from openeva.models.text import TextConfig, TextTransformer
from openeva.models.vit import EVAViT, ViTConfig


@dataclass(frozen=True)
class CLIPConfig:
    embed_dim: int
    vision: ViTConfig
    text: TextConfig
    init_logit_scale: float = math.log(1 / 0.07)

    def __post_init__(self):
        if self.vision.num_classes != self.embed_dim:
            raise ValueError(f"vision head dim {self.vision.num_classes} != embed_dim {self.embed_dim}")
        if self.text.embed_dim != self.embed_dim:
            raise ValueError(f"text projection dim {self.text.embed_dim} != embed_dim {self.embed_dim}")

    def replace(self, **changes) -> "CLIPConfig":
        return replace(self, **changes)

    def to_dict(self) -> dict:
        return {"embed_dim": self.embed_dim, "vision": self.vision.to_dict(), "text": self.text.to_dict(),
                "init_logit_scale": self.init_logit_scale}

    @classmethod
    def from_dict(cls, d: dict) -> "CLIPConfig":
        return cls(embed_dim=d["embed_dim"], vision=ViTConfig.from_dict(d["vision"]), text=TextConfig(**d["text"]),
                   init_logit_scale=d.get("init_logit_scale", math.log(1 / 0.07)))


class CLIP(nn.Module):
    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        self.cfg = cfg
        self.embed_dim = cfg.embed_dim
        self.visual = EVAViT(cfg.vision)
        self.text = TextTransformer(cfg.text)
        self.logit_scale = nn.Parameter(torch.tensor(cfg.init_logit_scale))

    @property
    def context_length(self) -> int:
        return self.text.context_length

    def encode_image(self, image: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        x = self.visual(image)  # (B, E)
        return F.normalize(x, dim=-1) if normalize else x

    def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        x = self.text(text)  # (B, E)
        return F.normalize(x, dim=-1) if normalize else x

    def forward(self, image: torch.Tensor, text: torch.Tensor):
        """Normalised (B, E) image and text features and the exponentiated logit scale."""
        return self.encode_image(image, normalize=True), self.encode_text(text, normalize=True), self.logit_scale.exp()

    def no_weight_decay(self) -> set[str]:
        return ({"logit_scale"} | {f"visual.{n}" for n in self.visual.no_weight_decay()}
                | {f"text.{n}" for n in self.text.no_weight_decay()})

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.visual.set_grad_checkpointing(enable)
        self.text.set_grad_checkpointing(enable)

    def lock_image_tower(self, unlocked_groups: int = 0) -> None:
        """Freezes the image tower except its last ``unlocked_groups`` layer groups (head/norm count as one)."""
        _lock(self.visual, unlocked_groups)

    def lock_text_tower(self, unlocked_layers: int = 0) -> None:
        _lock(self.text, unlocked_layers)


def _lock(tower: nn.Module, unlocked_groups: int) -> None:
    first_unlocked = tower.num_layers - unlocked_groups
    for name, p in tower.named_parameters():
        p.requires_grad_(tower.layer_id(name) >= first_unlocked)
