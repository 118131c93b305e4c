"""The EVA Vision Transformer: EVA-02 (Ti/S/B/L, CLIP towers B/L/E) and EVA-01 g, one Block with options.

The same class builds the plain ViTs of open_clip's zoo (``openeva.models.zoo_openclip``): OpenAI / LAION /
DFN / MetaCLIP towers (``norm_pre``, QuickGELU, a bias-free patch kernel and projection, no RoPE) and SigLIP's
(no class token, ``global_pool="map"``: attention pooling with a learned query).

EVA-02 (Fang et al., 2023, "EVA-02: A Visual Representation for Neon Genesis") is a plain pre-LN ViT with
2D RoPE, SwiGLU, sub-LN and q/v biases; EVA02-E and EVA01-g use post-norm / GELU MLPs. All are rows in
``openeva.models.registry``; this module knows nothing of names, devices, ranks or precision.

Returned shapes: ``forward_features`` (B, P + N, D) tokens (P = 1 CLS first, or 0 without a class token);
``forward_head`` (B, num_classes) or (B, D) with ``pre_logits``; ``forward_intermediates`` a list of (B, D, H, W)
patch maps.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from openeva.layers import (
    ACTIVATIONS,
    Attention,
    AttentionPoolLatent,
    DropPath,
    Mlp,
    PatchEmbed,
    RotaryEmbedding2D,
    SwiGLU,
)
from openeva.layers import patch_keep_indices, resample_pos_embed


TOKEN_INIT_STD = 0.02  # class / mask token and position embedding (EVA-02 MIM, cut at one std)
HEAD_INIT_SCALE = 1e-3  # EVA-CLIP's vision head: trunc-normal(0.02) x 0.001 (eva_vit_model.py ``init_scale``)


def _xavier_normal_per_matrix(weight: torch.Tensor, parts: int) -> None:
    """Xavier-normal on each of ``parts`` equal row blocks of a fused (parts * H, D) weight, in place: the init
    each block gets as a separate (H, D) Linear."""
    for block in weight.chunk(parts, dim=0):  # (H, D) views
        nn.init.xavier_normal_(block)


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, (int, float)) else (int(v[0]), int(v[1]))


@dataclass(frozen=True)
class ViTConfig:
    """One EVA ViT variant. Sizes are data: see ``openeva.models.registry`` for the published rows."""

    embed_dim: int
    depth: int
    num_heads: int
    mlp_hidden: int
    img_size: tuple[int, int] = (224, 224)
    patch_size: int = 14
    in_chans: int = 3
    mlp: str = "swiglu"  # "swiglu" | "gelu" (a two-layer MLP with the ``mlp_act`` non-linearity)
    mlp_act: str = "gelu"  # the "gelu" MLP's activation: "gelu" | "gelu_tanh" (SigLIP) | "quick_gelu" (OpenAI)
    mlp_norm: bool = False  # sub-LN in the MLP (EVA's ffn_ln)
    attn_norm: bool = False  # sub-LN on merged heads (EVA-CLIP's inner_attn_ln)
    qkv_bias: bool = True  # learnable q and v biases (k has none)
    post_norm: bool = False  # EVA02-E: x + norm(f(x)) instead of x + f(norm(x))
    rope: bool = True
    rope_ref_grid: tuple[int, int] | None = (16, 16)  # pretraining grid the RoPE coordinates are scaled to
    rope_temperature: float = 10000.0
    pos_embed: bool = True
    global_pool: str = "avg"  # "avg" (mean of patch tokens, then fc_norm) | "token" (final norm, CLS)
    #                           | "map" (final norm, then attention pooling with a learned query: SigLIP)
    class_token: bool = True  # a CLS token before the patches (SigLIP has none)
    norm_pre: bool = False  # a LayerNorm on the embedded tokens before the blocks (OpenAI CLIP's ``ln_pre``)
    patch_bias: bool = True  # the patch kernel's bias (OpenAI CLIP's ``conv1`` has none)
    head_bias: bool = True  # the head's bias (OpenAI CLIP's ``proj`` is a bias-free matrix)
    num_classes: int = 0  # head output dim: classes, or the CLIP embedding dim; 0 = no head
    mask_token: bool = False  # a learned token for masked patches (MIM students)
    norm_eps: float = 1e-6
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    patch_drop_rate: float = 0.0  # FLIP-style token dropping, training only
    patch_embed_grad_scale: float = 1.0  # EVA-02 MIM uses 0.1; 0 detaches the patch embedding
    head_init_scale: float = HEAD_INIT_SCALE  # head starts at trunc-normal(0.02) x this (EVA's ``init_scale``)

    def __post_init__(self):
        object.__setattr__(self, "img_size", _pair(self.img_size))
        if self.rope_ref_grid is not None:
            object.__setattr__(self, "rope_ref_grid", _pair(self.rope_ref_grid))
        for name in ("embed_dim", "depth", "num_heads", "mlp_hidden", "patch_size", "in_chans"):
            if getattr(self, name) <= 0:
                raise ValueError(f"ViTConfig.{name} must be positive, got {getattr(self, name)}")
        if not self.head_init_scale > 0:
            raise ValueError(f"ViTConfig.head_init_scale must be positive, got {self.head_init_scale}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} not divisible by num_heads {self.num_heads}")
        if self.rope and (self.embed_dim // self.num_heads) % 4:
            raise ValueError("RoPE needs a head dim divisible by 4")
        if self.mlp not in ("swiglu", "gelu"):
            raise ValueError(f"ViTConfig.mlp must be 'swiglu' or 'gelu', got {self.mlp!r}")
        if self.mlp_norm and self.mlp != "swiglu":
            raise ValueError("mlp_norm (sub-LN) is only defined for the SwiGLU MLP")
        if self.global_pool not in ("avg", "token", "map"):
            raise ValueError(f"ViTConfig.global_pool must be 'avg', 'token' or 'map', got {self.global_pool!r}")
        if self.global_pool == "token" and not self.class_token:
            raise ValueError("ViTConfig.global_pool='token' pools the class token; set class_token=True or pool "
                             "with 'avg' / 'map'")
        if self.mlp_act not in ACTIVATIONS:
            raise ValueError(f"ViTConfig.mlp_act must be one of {', '.join(ACTIVATIONS)}, got {self.mlp_act!r}")
        if self.mlp_act != "gelu" and self.mlp != "gelu":
            raise ValueError("ViTConfig.mlp_act applies to the 'gelu' MLP; SwiGLU's gate is SiLU")
        for name in ("drop_rate", "attn_drop_rate", "drop_path_rate", "patch_drop_rate"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"ViTConfig.{name} must be in [0, 1), got {getattr(self, name)}")
        if not 0.0 <= self.patch_embed_grad_scale <= 1.0:
            raise ValueError("patch_embed_grad_scale must be in [0, 1]")
        for hw in self.img_size:
            if hw % self.patch_size:
                raise ValueError(f"img_size {self.img_size} is not divisible by patch_size {self.patch_size}")

    @property
    def output_dim(self) -> int:
        """The pooled output's size: the head's, or the width without a head (SigLIP's towers)."""
        return self.num_classes or self.embed_dim

    @property
    def grid_size(self) -> tuple[int, int]:
        return self.img_size[0] // self.patch_size, self.img_size[1] // self.patch_size

    def replace(self, **changes) -> "ViTConfig":
        return replace(self, **changes)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ViTConfig":
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


class Block(nn.Module):
    """The one transformer block: pre- or post-norm, SwiGLU or GELU MLP, optional sub-LNs, RoPE via the caller."""

    def __init__(self, cfg: ViTConfig, drop_path: float = 0.0):
        super().__init__()
        D = cfg.embed_dim
        self.post_norm = cfg.post_norm
        self.norm1 = nn.LayerNorm(D, eps=cfg.norm_eps)
        self.attn = Attention(
            D, cfg.num_heads, qkv_bias=cfg.qkv_bias, inner_norm=cfg.attn_norm, norm_eps=cfg.norm_eps,
            attn_drop=cfg.attn_drop_rate, proj_drop=cfg.drop_rate,
        )
        self.drop_path1 = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(D, eps=cfg.norm_eps)
        if cfg.mlp == "swiglu":
            self.mlp = SwiGLU(D, cfg.mlp_hidden, sub_norm=cfg.mlp_norm, norm_eps=cfg.norm_eps, drop=cfg.drop_rate)
        else:
            self.mlp = Mlp(D, cfg.mlp_hidden, drop=cfg.drop_rate, act=cfg.mlp_act)
        self.drop_path2 = DropPath(drop_path)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        if self.post_norm:
            x = x + self.drop_path1(self.norm1(self.attn(x, rope)))
            return x + self.drop_path2(self.norm2(self.mlp(x)))
        x = x + self.drop_path1(self.attn(self.norm1(x), rope))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


class EVAViT(nn.Module):
    """EVA / EVA-02 Vision Transformer backbone (classification, MIM student, or CLIP vision tower)."""

    num_prefix_tokens = 1  # the CLS token (0 on instances built with ``class_token=False``)

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.cfg = cfg
        D = cfg.embed_dim
        self.embed_dim = self.num_features = D
        self.num_classes = cfg.num_classes
        self.num_prefix_tokens = 1 if cfg.class_token else 0
        self.grad_checkpointing = False
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.in_chans, D, bias=cfg.patch_bias)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D)) if cfg.class_token else None
        self.mask_token = nn.Parameter(torch.zeros(1, 1, D)) if cfg.mask_token else None
        n_pos = cfg.grid_size[0] * cfg.grid_size[1] + self.num_prefix_tokens
        self.pos_embed = nn.Parameter(torch.zeros(1, n_pos, D)) if cfg.pos_embed else None
        self.rope = RotaryEmbedding2D(D // cfg.num_heads, cfg.rope_ref_grid, cfg.rope_temperature) if cfg.rope else None
        self.norm_pre = nn.LayerNorm(D, eps=cfg.norm_eps) if cfg.norm_pre else nn.Identity()
        rates = [cfg.drop_path_rate * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]  # stochastic depth decay rule
        self.blocks = nn.ModuleList([Block(cfg, drop_path=r) for r in rates])
        final_norm = cfg.global_pool in ("token", "map")  # norm on every token; "avg" normalises the mean instead
        self.norm = nn.LayerNorm(D, eps=cfg.norm_eps) if final_norm else nn.Identity()
        self.fc_norm = nn.Identity() if final_norm else nn.LayerNorm(D, eps=cfg.norm_eps)
        self.attn_pool = (AttentionPoolLatent(D, cfg.num_heads, cfg.mlp_hidden, cfg.norm_eps, cfg.mlp_act)
                          if cfg.global_pool == "map" else None)
        self.head_drop = nn.Dropout(cfg.drop_rate)
        self.head = nn.Linear(D, cfg.num_classes, bias=cfg.head_bias) if cfg.num_classes > 0 else nn.Identity()
        self.reset_parameters()

    # ----------------------------------------------------------------------------------------------- init
    @torch.no_grad()
    def reset_parameters(self) -> None:
        """EVA-02's MIM initialisation (``modeling_pretrain.py``, ``jax_init``), matrix by matrix as EVA's modules.

        Xavier-normal for every Linear, zero biases, unit LayerNorms; Xavier-uniform patch kernel; class / mask
        token and position embedding trunc-normal(0.02) cut at one std (EVA's ``trunc_normal_`` passes
        ``a=-std, b=std``). Xavier's std depends on the matrix shape, so fused matrices are initialised as the
        matrices EVA has: sub-LN models (B, L) have separate ``q/k/v_proj`` and ``w1/w2`` in EVA, so each third of
        ``qkv`` and each half of the SwiGLU ``fc1`` gets its own Xavier-normal (std ``1/sqrt(D)`` for a D x D
        projection); Ti / S have EVA's fused ``qkv`` and xformers' packed ``w12``, initialised whole. Sub-LN
        models then scale the residual-branch weights (``w1/w2/w3``, ``proj``, the v projection) by
        sqrt(ln(2 * depth)). A projection ``head`` (EVA-CLIP's vision tower, ``eva_vit_model.py``) starts at
        trunc-normal(0.02) x 0.001 with a zero bias.
        """
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        if self.patch_embed.proj.bias is not None:
            nn.init.zeros_(self.patch_embed.proj.bias)
        for p in (self.cls_token, self.mask_token, self.pos_embed):
            if p is not None:
                nn.init.trunc_normal_(p, std=TOKEN_INIT_STD, a=-TOKEN_INIT_STD, b=TOKEN_INIT_STD)
        for blk in self.blocks:
            for name in ("q_bias", "v_bias"):
                if getattr(blk.attn, name) is not None:
                    nn.init.zeros_(getattr(blk.attn, name))
        if self.cfg.mlp_norm:
            scale = math.sqrt(math.log(2 * self.cfg.depth))
            D = self.embed_dim
            for blk in self.blocks:
                _xavier_normal_per_matrix(blk.attn.qkv.weight, 3)  # q, k, v: (D, D) each
                _xavier_normal_per_matrix(blk.mlp.fc1.weight, 2)  # gate w1, value w2: (H, D) each (sub-LN is SwiGLU)
                blk.attn.qkv.weight[2 * D:].mul_(scale)  # v rows of the fused qkv
                blk.attn.proj.weight.mul_(scale)
                blk.mlp.fc1.weight.mul_(scale)
                blk.mlp.fc2.weight.mul_(scale)
        if isinstance(self.head, nn.Linear):
            nn.init.trunc_normal_(self.head.weight, std=0.02)
            self.head.weight.mul_(self.cfg.head_init_scale)
        if self.attn_pool is not None:
            self.attn_pool.reset_parameters()

    # ------------------------------------------------------------------------------ hooks for the trainer
    def no_weight_decay(self) -> set[str]:
        """Parameter names exempt from weight decay besides biases and norms (which optimizers detect by ndim):
        EVA's ``{pos_embed, cls_token}``. The MIM mask token is decayed, as in EVA-02's pretraining."""
        return {n for n in ("cls_token", "pos_embed") if getattr(self, n) is not None}

    @property
    def num_layers(self) -> int:
        """Layer ids for layer-wise lr decay run 0 (embeddings) .. depth + 1 (final norms and head)."""
        return self.cfg.depth + 2

    def layer_id(self, name: str) -> int:
        if name.startswith(("cls_token", "mask_token", "pos_embed", "patch_embed", "rope", "norm_pre")):
            return 0
        if name.startswith("blocks."):
            return int(name.split(".")[1]) + 1
        return self.cfg.depth + 1

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.embed_dim, num_classes, bias=self.cfg.head_bias) if num_classes > 0 else nn.Identity()
        self.cfg = self.cfg.replace(num_classes=num_classes)

    # ---------------------------------------------------------------------------------------- forward
    def _embed(
        self, x: torch.Tensor, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None, tuple[int, int]]:
        """Patchify, swap masked patches for the mask token, add CLS and position, patch dropout, ``norm_pre``;
        returns tokens (B, P + N, D), rope, grid."""
        grid = self.patch_embed.grid_size(x.shape[-2:])
        x = self.patch_embed(x)  # (B, N, D)
        s = self.cfg.patch_embed_grad_scale
        if s < 1.0:  # EVA-02 MIM: damp the patch-embedding gradient (x.detach() * (1 - s) + x * s)
            x = x.detach() * (1.0 - s) + x * s if s > 0 else x.detach()
        if mask is not None:
            if self.mask_token is None:
                raise ValueError("this model has no mask token; build it with mask_token=True to pass a mask")
            if mask.shape != x.shape[:2]:
                raise ValueError(f"mask shape {tuple(mask.shape)} does not match (batch, patches) {tuple(x.shape[:2])}")
            w = mask.unsqueeze(-1).to(x.dtype)  # (B, N, 1)
            x = x * (1.0 - w) + self.mask_token.to(x.dtype) * w
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)  # (B, 1 + N, D)
        if self.pos_embed is not None:
            x = x + resample_pos_embed(self.pos_embed, grid, self.cfg.grid_size, self.num_prefix_tokens)
        rope = self.rope(grid, self.num_prefix_tokens, x.device) if self.rope is not None else None
        if self.training and self.cfg.patch_drop_rate > 0:
            x, rope = self._drop_patches(x, rope)
        return self.norm_pre(x), rope, grid

    def _drop_patches(self, x, rope):
        """FLIP patch dropout that keeps each sample's RoPE rows aligned with the patches it keeps."""
        P = self.num_prefix_tokens
        keep = patch_keep_indices(x.shape[0], x.shape[1] - P, self.cfg.patch_drop_rate, x.device) + P  # (B, K)
        keep = torch.cat([torch.arange(P, device=x.device).expand(x.shape[0], P), keep], dim=1)  # (B, P + K)
        x = x.gather(1, keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]))  # (B, P + K, D)
        if rope is not None:
            rope = tuple(t[keep].unsqueeze(1) for t in rope)  # (B, 1, P + K, hd/2): broadcast over heads
        return x, rope

    def _run_block(self, blk: Block, x, rope):
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(blk, x, rope, use_reentrant=False)
        return blk(x, rope)

    def forward_features(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Images (B, C, H, W) [+ bool mask (B, N), True = masked] -> tokens (B, P + N, D) after the final norm."""
        x, rope, _ = self._embed(x, mask)
        for blk in self.blocks:
            x = self._run_block(blk, x, rope)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Tokens (B, P + N, D) -> pooled (B, D) with ``pre_logits``, else head output (B, num_classes)."""
        if self.cfg.global_pool == "token":
            x = x[:, 0]  # (B, D)
        elif self.attn_pool is not None:
            x = self.attn_pool(x)  # (B, D): the learned query attends over every token
        else:
            x = x[:, self.num_prefix_tokens:].mean(dim=1)  # (B, D)
        x = self.head_drop(self.fc_norm(x))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward_head(self.forward_features(x, mask))

    def forward_intermediates(
        self, x: torch.Tensor, indices: int | list[int] = 1, norm: bool = False, mask: torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        """Patch-token maps (B, D, H, W) after the blocks in ``indices`` (an int n means the last n blocks).

        For dense heads (detection, segmentation) and feature probing; ``norm`` applies the final norm.
        Stops after the last requested block. Not combined with patch dropout (maps need every patch).
        """
        depth = self.cfg.depth
        if isinstance(indices, int):
            wanted = list(range(depth - indices, depth))
        else:  # negative indices count from the end; anything outside [-depth, depth) is refused, not wrapped
            wanted = [i + depth if i < 0 else i for i in indices]
        if not wanted or any(i < 0 or i >= depth for i in wanted):
            raise ValueError(f"indices {indices} out of range for a {depth}-block model")
        was_training, self.training = self.training, False  # disables patch dropout only for the embedding
        try:
            tokens, rope, grid = self._embed(x, mask)
        finally:
            self.training = was_training
        final_norm = self.norm if isinstance(self.norm, nn.LayerNorm) else self.fc_norm
        out = []
        for i, blk in enumerate(self.blocks[: max(wanted) + 1]):
            tokens = self._run_block(blk, tokens, rope)
            if i in wanted:
                t = final_norm(tokens) if norm else tokens
                patches = t[:, self.num_prefix_tokens:]  # (B, N, D)
                out.append(patches.transpose(1, 2).reshape(x.shape[0], -1, *grid))  # (B, D, H, W)
        return out
