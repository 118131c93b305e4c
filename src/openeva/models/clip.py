"""EVA-CLIP: an EVA ViT image tower and a CLIP text tower trained contrastively (Sun et al., 2023).

API in open_clip's shape so its users need nothing new: ``encode_image``/``encode_text`` with ``normalize=``,
``forward(image, text) -> (image_features, text_features, logit_scale.exp())``, ``lock_*_tower``,
``set_grad_checkpointing``. SigLIP models (Zhai et al., 2023) add a learned ``logit_bias`` (``init_logit_bias``,
-10 as open_clip) and, as open_clip, ``forward`` then returns it as a fourth element.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from openeva.models.text import TextConfig, TextTransformer
from openeva.models.towers import build_tower, tower_from_dict, tower_to_dict
from openeva.models.vit import EVAViT, ViTConfig


@dataclass(frozen=True)
class CLIPConfig:
    embed_dim: int
    vision: ViTConfig
    text: TextConfig
    init_logit_scale: float = math.log(1 / 0.07)
    init_logit_bias: float | None = None  # SigLIP's sigmoid-loss bias (open_clip: -10); None = no bias

    def __post_init__(self):
        # a ViT without a head (num_classes=0, SigLIP's) outputs its width, which must then be the embed dim
        vision_out = self.vision.output_dim
        if vision_out != self.embed_dim:
            raise ValueError(f"vision head dim {vision_out} (head {self.vision.num_classes}, width "
                             f"{self.vision.embed_dim}) != embed_dim {self.embed_dim}")
        if self.text.embed_dim != self.embed_dim:
            raise ValueError(f"text projection dim {self.text.embed_dim} != embed_dim {self.embed_dim}")

    def replace(self, **changes) -> "CLIPConfig":
        return replace(self, **changes)

    def to_dict(self) -> dict:
        return {"embed_dim": self.embed_dim, "vision": tower_to_dict(self.vision, "vision"),
                "text": tower_to_dict(self.text, "text"),
                "init_logit_scale": self.init_logit_scale, "init_logit_bias": self.init_logit_bias}

    @classmethod
    def from_dict(cls, d: dict) -> "CLIPConfig":
        return cls(embed_dim=d["embed_dim"], vision=tower_from_dict(d["vision"], "vision"),
                   text=tower_from_dict(d["text"], "text"),
                   init_logit_scale=d.get("init_logit_scale", math.log(1 / 0.07)),
                   init_logit_bias=d.get("init_logit_bias"))


class CLIP(nn.Module):
    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        self.cfg = cfg
        self.embed_dim = cfg.embed_dim
        self.visual = build_tower(cfg.vision, "vision")  # EVAViT, TimmTower, ... by config class (models.towers)
        self.text = build_tower(cfg.text, "text")
        self.logit_scale = nn.Parameter(torch.tensor(cfg.init_logit_scale))
        self.logit_bias = None if cfg.init_logit_bias is None else nn.Parameter(torch.tensor(cfg.init_logit_bias))

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
        """Normalised (B, E) image and text features and the exponentiated logit scale, plus the logit bias
        (a scalar) for models that have one (SigLIP), as open_clip's ``CLIP.forward``."""
        out = self.encode_image(image, normalize=True), self.encode_text(text, normalize=True), self.logit_scale.exp()
        return out if self.logit_bias is None else (*out, self.logit_bias)

    def get_logits(self, image: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(image logits (B_i, B_t), text logits (B_t, B_i)): scaled cosine similarities, plus the bias if any."""
        image_logits = self.logit_scale.exp() * self.encode_image(image, True) @ self.encode_text(text, True).T
        if self.logit_bias is not None:
            image_logits = image_logits + self.logit_bias
        return image_logits, image_logits.T

    def no_weight_decay(self) -> set[str]:
        bias = {"logit_bias"} if self.logit_bias is not None else set()
        return ({"logit_scale"} | bias | {f"visual.{n}" for n in self.visual.no_weight_decay()}
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
