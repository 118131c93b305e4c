"""The CLIP text transformer (Radford et al., 2021) used by every EVA-CLIP model, and SigLIP's.

Causal pre-LN transformer over BPE tokens; the feature is the final-LN state at the end-of-text token (the
highest id in each row), projected by ``text_projection`` ([width, embed], used as ``x @ P``). Parameter names
follow open_clip / EVA-CLIP so their state dicts load without renaming.

Options for the rest of open_clip's zoo: ``causal=False`` (SigLIP attends both ways), ``pool`` ("argmax": the
EOT token, the highest id; "last": the last position, SigLIP; "first"; "eos": the first ``eos_id``), ``proj``
("matrix": OpenAI's bias-free ``text_projection``; "linear": a biased ``nn.Linear``, SigLIP; "none") and the
MLP activation ``act`` ("quick_gelu" for OpenAI-trained weights, "gelu_tanh" for SigLIP 2).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from openeva.layers.attention import attention
from openeva.layers.mlp import ACTIVATIONS, activation

TEXT_POOLS = ("argmax", "last", "first", "eos")
TEXT_PROJS = ("matrix", "linear", "none")


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
    causal: bool = True  # causal attention mask (CLIP); SigLIP's text tower attends both ways
    pool: str = "argmax"  # "argmax" (EOT = highest id) | "last" | "first" | "eos" (first ``eos_id``)
    eos_id: int = 2  # the end-of-sequence id "eos" pooling looks for
    proj: str = "matrix"  # "matrix" (x @ P, no bias) | "linear" (biased nn.Linear) | "none" (width == embed_dim)
    act: str = "gelu"  # MLP activation: "gelu" | "gelu_tanh" | "quick_gelu"

    def __post_init__(self):
        for name in ("width", "heads", "layers", "embed_dim", "context_length", "vocab_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"TextConfig.{name} must be positive, got {getattr(self, name)}")
        if self.width % self.heads:
            raise ValueError(f"text width {self.width} not divisible by {self.heads} heads")
        if self.pool not in TEXT_POOLS:
            raise ValueError(f"TextConfig.pool must be one of {', '.join(TEXT_POOLS)}, got {self.pool!r}")
        if self.proj not in TEXT_PROJS:
            raise ValueError(f"TextConfig.proj must be one of {', '.join(TEXT_PROJS)}, got {self.proj!r}")
        if self.proj == "none" and self.width != self.embed_dim:
            raise ValueError(f"TextConfig.proj='none' outputs the width ({self.width}); embed_dim is {self.embed_dim}")
        if self.act not in ACTIVATIONS:
            raise ValueError(f"TextConfig.act must be one of {', '.join(ACTIVATIONS)}, got {self.act!r}")

    def replace(self, **changes) -> "TextConfig":
        return replace(self, **changes)

    def to_dict(self) -> dict:
        return asdict(self)


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention, causal unless ``causal=False``, in open_clip's parameter layout
    (``in_proj_weight``, ``out_proj``)."""

    def __init__(self, width: int, heads: int, causal: bool = True):
        super().__init__()
        self.heads = heads
        self.causal = causal
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, D = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)  # (B, L, 3D)
        q, k, v = qkv.view(B, L, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)  # (B, H, L, hd) each
        x = attention(q, k, v, is_causal=self.causal)  # (B, H, L, hd)
        return self.out_proj(x.transpose(1, 2).reshape(B, L, D))


class TextBlock(nn.Module):
    def __init__(self, width: int, heads: int, mlp_ratio: float, norm_eps: float, causal: bool = True,
                 act: str = "gelu"):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width, eps=norm_eps)
        self.attn = CausalSelfAttention(width, heads, causal)
        self.ln_2 = nn.LayerNorm(width, eps=norm_eps)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(width, hidden))
        self.mlp.add_module("gelu", activation(act))
        self.mlp.add_module("c_proj", nn.Linear(hidden, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.resblocks = nn.ModuleList(
            [TextBlock(cfg.width, cfg.heads, cfg.mlp_ratio, cfg.norm_eps, cfg.causal, cfg.act)
             for _ in range(cfg.layers)]
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
        if cfg.proj == "matrix":
            self.text_projection = nn.Parameter(torch.empty(cfg.width, cfg.embed_dim))  # used as x @ P
        elif cfg.proj == "linear":
            self.text_projection = nn.Linear(cfg.width, cfg.embed_dim)
        else:
            self.text_projection = None
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
        if isinstance(self.text_projection, nn.Linear):
            nn.init.normal_(self.text_projection.weight, std=w ** -0.5)
            nn.init.zeros_(self.text_projection.bias)
        elif self.text_projection is not None:
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
        pooled = self._pool(x, text)  # (B, W)
        if isinstance(self.text_projection, nn.Module):  # a Linear (or its int8 swap, not an nn.Linear subclass)
            return self.text_projection(pooled)  # (B, E)
        return pooled if self.text_projection is None else pooled @ self.text_projection  # (B, E)

    def _pool(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """(B, L, W) final-LN states -> (B, W) at the position ``cfg.pool`` names."""
        pool = self.cfg.pool
        if pool == "last":
            return x[:, -1]
        if pool == "first":
            return x[:, 0]
        if pool == "argmax":  # CLIP's EOT token has the highest id in the BPE vocabulary
            idx = text.argmax(dim=-1)  # (B,)
        else:  # "eos": the first end-of-sequence id (0 where a row has none)
            idx = (text == self.cfg.eos_id).int().argmax(dim=-1)  # (B,)
        return x[torch.arange(x.shape[0], device=x.device), idx]
