"""Token merging on timm's ``VisionTransformer`` trunks used as towers (ViTamin, timm's ViTs, SigLIP trunks).

The same algorithm as :mod:`openeva.models.tome` (ToMe as published: bipartite soft matching on head-averaged
keys between attention and MLP, size-weighted merges, proportional attention, the class token protected) run
through timm's own modules: its ``Block`` (``norm1``, ``attn``, ``ls1``, ``drop_path1``, ``norm2``, ``mlp``,
``ls2``, ``drop_path2``) and ``Attention`` (``qkv``, ``q_norm`` / ``k_norm``, ``norm``, ``proj``). The trunk's
``forward_features`` returns one row per original token (each patch gets the token it was merged into), so timm's
own ``forward_head`` pools as ToMe does (a mean over rows is the size-weighted mean; an attention pool sees a
token of size s s times). Trunks with other block types or more than one prefix token (register tokens) are
refused with the reason.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_CLASSES: dict[type, type] = {}


def timm_vit_trunk(tower: nn.Module) -> nn.Module | None:
    """The timm ``VisionTransformer`` a tower is or wraps (``trunk``), or None."""
    try:
        from timm.models.vision_transformer import VisionTransformer
    except ImportError:
        return None
    for m in (tower, getattr(tower, "trunk", None)):
        if isinstance(m, VisionTransformer):
            return m
    return None


def timm_refusal(trunk: nn.Module) -> str | None:
    """Why this timm ViT cannot merge tokens here, or None."""
    from timm.models.vision_transformer import Attention, Block

    name = type(trunk).__name__
    if trunk.num_prefix_tokens > 1:
        return (f"token merging protects one class token; this timm {name} has {trunk.num_prefix_tokens} prefix "
                f"tokens (register tokens)")
    for blk in trunk.blocks:
        if type(blk) is not Block or type(blk.attn) is not Attention:
            return (f"token merging runs timm's standard Block / Attention; this timm {name} uses "
                    f"{type(blk).__name__} / {type(getattr(blk, 'attn', None)).__name__}")
        if getattr(blk.attn, "gate", None) is not None:
            return f"token merging does not cover gated attention (this timm {name})"
    return None


def grid_and_depth(trunk: nn.Module) -> tuple[int, int]:
    """(patch tokens at the trunk's input size, blocks)."""
    gh, gw = trunk.patch_embed.grid_size
    return int(gh) * int(gw), len(trunk.blocks)


def _merged_block(blk, x: torch.Tensor, size: torch.Tensor, r: int, prefix: int, merged: bool):
    """timm's Block with a merge between attention and MLP -> x, size, matching (None when nothing merged)."""
    from openeva.models.tome import bipartite_soft_matching, merge_tokens

    attn = blk.attn
    y = blk.norm1(x)
    B, N, C = y.shape
    qkv = attn.qkv(y).reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)  # (3, B, H, N, hd)
    q, k, v = qkv.unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    bias = size.log().transpose(1, 2).unsqueeze(1).to(q.dtype) if merged else None  # (B, 1, 1, N)
    a = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # (B, H, N, hd)
    a = attn.norm(a.transpose(1, 2).reshape(B, N, getattr(attn, "attn_dim", C)))
    x = x + blk.drop_path1(blk.ls1(attn.proj_drop(attn.proj(a))))
    r = min(r, (N - prefix) // 2)
    matching = None
    if r > 0:
        matching = bipartite_soft_matching(k.mean(dim=1), r, prefix)  # keys averaged over heads (B, N, hd)
        pos = x.new_zeros(B, N, 2, dtype=torch.float32)  # timm's positions ride inside the tokens
        x, _, size = merge_tokens(matching, x, pos, size, weighted=merged)
    return x + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(x)))), size, matching


class ToMeTimmViT(nn.Module):
    """Mixed in front of a timm ViT's class by :func:`apply`: its ``forward_features`` merges tokens."""

    tome_r: list[int]

    def forward_tome(self, x: torch.Tensor):
        """Images -> (merged tokens after the final norm, sizes (B, N', 1), source map (B, N))."""
        x = self.norm_pre(self.patch_drop(self._pos_embed(self.patch_embed(x))))  # (B, P + N, D)
        B, N, _ = x.shape
        size = torch.ones(B, N, 1, device=x.device)
        source = torch.arange(N, device=x.device).expand(B, -1)
        merged = False
        for blk, r in zip(self.blocks, self.tome_r):
            x, size, matching = _merged_block(blk, x, size, r, self.num_prefix_tokens, merged)
            if matching is not None:
                merged = True
                source = matching.new_index().gather(1, source)
        return self.norm(x), size, source

    def forward_features(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
                         is_causal: bool = False) -> torch.Tensor:
        if attn_mask is not None or is_causal:
            raise ValueError("token merging takes no attention mask (and is not causal)")
        tokens, _, source = self.forward_tome(x)
        return tokens.gather(1, source.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))  # (B, P + N, D)


def apply(trunk: nn.Module, rs: list[int] | None) -> None:
    """Switch the trunk to merging ``rs`` tokens per block, or back (``rs`` None); weights untouched."""
    base = next((b for b in type(trunk).__mro__[1:] if b is not ToMeTimmViT and not issubclass(b, ToMeTimmViT)),
                type(trunk)) if isinstance(trunk, ToMeTimmViT) else type(trunk)
    if rs is None:
        if isinstance(trunk, ToMeTimmViT):
            trunk.__class__ = base
            del trunk.tome_r
        return
    if base not in _CLASSES:
        _CLASSES[base] = type(f"ToMe{base.__name__}", (ToMeTimmViT, base), {})
    trunk.__class__ = _CLASSES[base]
    trunk.tome_r = list(rs)
