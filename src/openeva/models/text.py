"""The CLIP text transformer (Radford et al., 2021) used by every EVA-CLIP model.

Causal pre-LN transformer over BPE tokens; the feature is the final-LN state at the end-of-text token (the
highest id in each row), projected by ``text_projection`` ([width, embed], used as ``x @ P``). Parameter names
follow open_clip / EVA-CLIP so their state dicts load without renaming.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from openeva.layers.attention import attention


@dataclass(frozen=True)
class TextConfig:
    width: int
    heads: int
    layers: int
    embed_dim: int
    context_length: int = 77
    vocab_size: int = 49408
    mlp_ratio: float = 4.0
    norm_eps: float = 1e-5

    def __post_init__(self):
        for name in ("width", "heads", "layers", "embed_dim", "context_length", "vocab_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"TextConfig.{name} must be positive, got {getattr(self, name)}")
        if self.width % self.heads:
            raise ValueError(f"text width {self.width} not divisible by {self.heads} heads")

    def replace(self, **changes) -> "TextConfig":
        return replace(self, **changes)

    def to_dict(self) -> dict:
        return asdict(self)


class CausalSelfAttention(nn.Module):
    """Multi-head causal attention with open_clip's parameter layout (``in_proj_weight``, ``out_proj``)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, D = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)  # (B, L, 3D)
        q, k, v = qkv.view(B, L, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)  # (B, H, L, hd) each
        x = attention(q, k, v, is_causal=True)  # (B, H, L, hd)
        return self.out_proj(x.transpose(1, 2).reshape(B, L, D))


class TextBlock(nn.Module):
    def __init__(self, width: int, heads: int, mlp_ratio: float, norm_eps: float):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width, eps=norm_eps)
        self.attn = CausalSelfAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width, eps=norm_eps)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(width, hidden))
        self.mlp.add_module("gelu", nn.GELU())
        self.mlp.add_module("c_proj", nn.Linear(hidden, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.resblocks = nn.ModuleList(
            [TextBlock(cfg.width, cfg.heads, cfg.mlp_ratio, cfg.norm_eps) for _ in range(cfg.layers)]
        )


class TextTransformer(nn.Module):
    """Tokens (B, L) -> text embedding (B, embed_dim)."""

    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.cfg = cfg
        self.context_length = cfg.context_length
        self.vocab_size = cfg.vocab_size
        self.grad_checkpointing = False
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.width)
        self.positional_embedding = nn.Parameter(torch.empty(cfg.context_length, cfg.width))
        self.transformer = Transformer(cfg)
        self.ln_final = nn.LayerNorm(cfg.width, eps=cfg.norm_eps)
        self.text_projection = nn.Parameter(torch.empty(cfg.width, cfg.embed_dim))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """CLIP's initialisation (std scaled by width and depth)."""
        w, n = self.cfg.width, self.cfg.layers
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        proj_std, attn_std, fc_std = (w ** -0.5) * ((2 * n) ** -0.5), w ** -0.5, (2 * w) ** -0.5
        for blk in self.transformer.resblocks:
            nn.init.normal_(blk.attn.in_proj_weight, std=attn_std)
            nn.init.zeros_(blk.attn.in_proj_bias)
            nn.init.normal_(blk.attn.out_proj.weight, std=proj_std)
            nn.init.zeros_(blk.attn.out_proj.bias)
            nn.init.normal_(blk.mlp.c_fc.weight, std=fc_std)
            nn.init.normal_(blk.mlp.c_proj.weight, std=proj_std)
        nn.init.normal_(self.text_projection, std=w ** -0.5)

    def no_weight_decay(self) -> set[str]:
        """EVA-CLIP's ``{positional_embedding}``: the token embedding is decayed (2-D, not listed), as in EVA."""
        return {"positional_embedding"}

    @property
    def num_layers(self) -> int:
        return self.cfg.layers + 2

    def layer_id(self, name: str) -> int:
        if name.startswith(("token_embedding", "positional_embedding")):
            return 0
        if name.startswith("transformer.resblocks."):
            return int(name.split(".")[2]) + 1
        return self.cfg.layers + 1

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        if text.dim() != 2 or text.shape[1] > self.context_length:
            raise ValueError(f"text must be token ids (B, <= {self.context_length}), got {tuple(text.shape)}")
        L = text.shape[1]
        x = self.token_embedding(text) + self.positional_embedding[:L]  # (B, L, W)
        for blk in self.transformer.resblocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
        x = self.ln_final(x)
        eot = x[torch.arange(x.shape[0], device=x.device), text.argmax(dim=-1)]  # (B, W)
        return eot @ self.text_projection  # (B, E)
