"""Training-free open-vocabulary segmentation from an EVA-CLIP: dense patch embeddings in the text space.

MaskCLIP (Zhou et al., 2022, "Extract Free Dense Labels from CLIP") observes that the CLIP image embedding is
the CLS token's attention-weighted sum of the last block's *value* vectors, carried through the output
projection, the final norm and the image projection. Skipping the query-key mixing in the last block and
sending every patch's own value through the same path gives one text-space embedding per patch; cosine
similarity with prompt-ensembled class embeddings then labels each patch. For an EVA-02 block the value path
is: ``norm1`` -> the v rows of the fused qkv (+ v bias; RoPE only rotates q and k) -> the sub-LN on merged
heads (``inner_attn_ln``) -> ``proj``; MaskCLIP's reference code keeps the block's residual and MLP on top
(``method="maskclip"``), ClearCLIP (Lan et al., 2024) drops both (``method="value"``).

Refinements (training-free, chosen by measurement: ``benchmarks/bench_segment.py`` and the README):
- ``fusion``: CLIPer's early-layer fusion (Sun et al., 2025): the head-averaged patch-to-patch attention maps
  of the earlier blocks, averaged, mix the value-path embeddings spatially, so a patch borrows from the
  patches the network itself groups with it.
- ``smooth``: CLIP-DINOiser-style guided pooling (Wysoczanska et al., 2024) without its trained head: each
  patch averages its neighbours within a window, weighted by the positive cosine correlation of an
  intermediate layer's patch tokens.

Shapes: images (B, 3, H, W); dense embeddings (B, E, h, w) with h, w the patch grid; label maps (B, H, W) with
0 = background and ``k + 1`` = ``labels[k]``.

Full-size outputs are made in row chunks (``segment_labels``, ``segment_probs``): (C, H, W) float32 logits of a
24 MP photo with 20 classes are 1.9 GB per copy (and the softmax makes more); a chunk of rows is upsampled,
turned into labels / probabilities and dropped, so memory is bounded by ``max_elements`` instead of H * W * C.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from openeva.layers.rope import apply_rope

METHODS = ("maskclip", "value")
REFINEMENTS = ("none", "fusion", "smooth", "fusion+smooth")
DEFAULT_TEMPLATES = ("a photo of a {c}.", "a {c}.", "there is a {c} in the scene.")
CHUNK_ELEMENTS = 1 << 22  # logits values per row chunk (16 MB float32) when making full-size outputs


@dataclass(frozen=True)
class DenseOptions:
    """How dense embeddings are made. Defaults are the measured best on the synthetic scenes (see README)."""

    method: str = "maskclip"
    refine: str = "smooth"
    fusion_layers: int | None = None  # how many early blocks to fuse (None: all but the last)
    smooth_window: int = 3  # odd; neighbourhood of the guided pooling, in patches
    smooth_layer: int = -2  # block whose patch tokens guide the pooling (negative counts from the end)

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.refine not in REFINEMENTS:
            raise ValueError(f"refine must be one of {REFINEMENTS}, got {self.refine!r}")
        if self.smooth_window < 1 or self.smooth_window % 2 == 0:
            raise ValueError(f"smooth_window must be an odd number >= 1, got {self.smooth_window}")
        if self.fusion_layers is not None and self.fusion_layers < 1:
            raise ValueError(f"fusion_layers must be >= 1, got {self.fusion_layers}")


def image_tower(model: nn.Module) -> nn.Module:
    """The EVA ViT of a CLIP (``model.visual``) or the ViT itself; a clear error for anything else."""
    visual = getattr(model, "visual", model)
    if hasattr(visual, "forward_dense"):  # a timm tower (models.timm_tower): its head applied per feature cell
        return visual
    if not all(hasattr(visual, a) for a in ("blocks", "_embed", "head")):
        raise TypeError(f"{type(model).__name__} is not an openeva EVA-CLIP / EVA ViT; dense features need "
                        "its blocks (build it with openeva.create_model)")
    return visual


def _attention_map(blk: nn.Module, x: torch.Tensor, rope, num_prefix: int) -> torch.Tensor:
    """Head-averaged softmax(q k^T / sqrt(d)) among patch tokens of one block: (B, N, N)."""
    attn = blk.attn
    h = blk.norm1(x) if not blk.post_norm else x
    B, L, D = h.shape
    qk = F.linear(h, attn.qkv.weight[: 2 * D], None if attn.q_bias is None else
                  torch.cat((attn.q_bias, torch.zeros_like(attn.q_bias))))  # (B, L, 2D)
    qk = qk.view(B, L, 2, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)  # (2, B, H, L, hd)
    if rope is not None:
        qk = apply_rope(qk, *rope)
    q, k = qk[0][:, :, num_prefix:], qk[1][:, :, num_prefix:]  # (B, H, N, hd)
    scores = (q * attn.head_dim ** -0.5) @ k.transpose(-2, -1)  # (B, H, N, N)
    return scores.float().softmax(dim=-1).mean(dim=1)  # (B, N, N)


def _value_path(blk: nn.Module, x: torch.Tensor, method: str) -> torch.Tensor:
    """The last block applied without query-key mixing: every token keeps its own value. (B, L, D)."""
    attn = blk.attn
    D = x.shape[-1]
    h = x if blk.post_norm else blk.norm1(x)
    v = F.linear(h, attn.qkv.weight[2 * D:], attn.v_bias)  # (B, L, D): merged heads, no RoPE on v
    v = attn.proj(attn.norm(v))  # sub-LN (inner_attn_ln) then output projection
    if method == "value":
        return blk.norm1(v) if blk.post_norm else v
    if blk.post_norm:  # EVA02-E / EVA01-g: x + norm(f(x))
        y = x + blk.norm1(v)
        return y + blk.norm2(blk.mlp(y))
    y = x + v
    return y + blk.mlp(blk.norm2(y))


def _guided_smooth(feats: torch.Tensor, guide: torch.Tensor, window: int) -> torch.Tensor:
    """Average each patch's (B, E, h, w) embedding over a window, weighted by relu(cos) of the guide tokens."""
    B, E, h, w = feats.shape
    pad = window // 2
    g = F.normalize(guide, dim=1)  # (B, D, h, w)
    g_n = F.unfold(g, window, padding=pad).view(B, g.shape[1], window * window, h * w)  # (B, D, k*k, h*w)
    sim = (g.flatten(2).unsqueeze(2) * g_n).sum(dim=1).clamp_min(0)  # (B, k*k, h*w); padding -> 0
    f_n = F.unfold(feats, window, padding=pad).view(B, E, window * window, h * w)  # (B, E, k*k, h*w)
    out = (f_n * sim.unsqueeze(1)).sum(dim=2) / sim.sum(dim=1, keepdim=True).clamp_min(1e-6)  # (B, E, h*w)
    return out.view(B, E, h, w)


@torch.no_grad()
def dense_embeddings(model: nn.Module, images: torch.Tensor, options: DenseOptions = DenseOptions()) -> torch.Tensor:
    """Images (B, 3, H, W) -> L2-normalised patch embeddings in the CLIP space (B, E, h, w)."""
    visual = image_tower(model)
    if hasattr(visual, "forward_dense"):  # a timm ConvNet tower: no attention to re-route, ``options`` do not apply
        was_training = visual.training
        visual.eval()
        try:
            return F.normalize(visual.forward_dense(images).float(), dim=1)  # (B, E, h, w)
        finally:
            visual.train(was_training)
    if isinstance(visual.head, nn.Identity):
        raise ValueError("this image tower has no projection head; dense text-space embeddings need a CLIP "
                         "vision tower")
    was_training = visual.training
    visual.eval()
    try:
        x, rope, grid = visual._embed(images, None)  # (B, P + N, D)
        P = visual.num_prefix_tokens
        depth = len(visual.blocks)
        n_fuse = depth - 1 if options.fusion_layers is None else min(options.fusion_layers, depth - 1)
        guide_at = options.smooth_layer + depth if options.smooth_layer < 0 else options.smooth_layer
        if not 0 <= guide_at < depth:
            raise ValueError(f"smooth_layer {options.smooth_layer} out of range for a {depth}-block model")
        fused, guide = None, None
        for i, blk in enumerate(visual.blocks[:-1]):
            if "fusion" in options.refine and i < n_fuse:
                a = _attention_map(blk, x, rope, P)  # (B, N, N)
                fused = a if fused is None else fused + a
            x = blk(x, rope)
            if i == guide_at:
                guide = x[:, P:]
        y = _value_path(visual.blocks[-1], x, options.method)[:, P:]  # (B, N, D)
        if guide is None:
            guide = y
        if fused is not None:
            fused = fused / n_fuse
            y = fused.to(y.dtype) @ y  # (B, N, D): mix values by the early layers' attention
        final_norm = visual.norm if isinstance(visual.norm, nn.LayerNorm) else visual.fc_norm
        z = visual.head(final_norm(y))  # (B, N, E)
        z = z.transpose(1, 2).reshape(z.shape[0], -1, *grid)  # (B, E, h, w)
        if "smooth" in options.refine and options.smooth_window > 1:
            g = guide.transpose(1, 2).reshape(guide.shape[0], -1, *grid)  # (B, D, h, w)
            z = _guided_smooth(z, g, options.smooth_window)
        return F.normalize(z.float(), dim=1)
    finally:
        visual.train(was_training)


def segment_logits(dense: torch.Tensor, classifier: torch.Tensor, out_size: tuple[int, int] | None = None,
                   scale: float = 100.0) -> torch.Tensor:
    """Dense (B, E, h, w) x text classifier (E, C) -> logits (B, C, H, W), bilinearly upsampled to ``out_size``."""
    if dense.shape[1] != classifier.shape[0]:
        raise ValueError(f"embedding dim {dense.shape[1]} != classifier dim {classifier.shape[0]}")
    logits = scale * torch.einsum("behw,ec->bchw", dense, classifier.to(dense))  # (B, C, h, w)
    if out_size is not None and tuple(out_size) != tuple(logits.shape[-2:]):
        logits = F.interpolate(logits, size=tuple(out_size), mode="bilinear", align_corners=False)
    return logits


def logits_to_labels(logits: torch.Tensor, bg_threshold: float | None = None,
                     background_last: bool = False) -> torch.Tensor:
    """(B, C, H, W) logits -> (B, H, W) int64 labels: ``k + 1`` for class k, 0 for background.

    Background is where the top softmax probability is below ``bg_threshold`` (MaskCLIP's rule; None: off),
    and, with ``background_last``, where the last channel (a background prompt's class) wins.
    """
    probs = logits.float().softmax(dim=1)  # (B, C, H, W)
    top, arg = probs.max(dim=1)  # (B, H, W)
    labels = arg + 1
    if background_last:
        labels = torch.where(arg == logits.shape[1] - 1, torch.zeros_like(labels), labels)
    if bg_threshold is not None:
        if not 0.0 <= bg_threshold <= 1.0:
            raise ValueError(f"bg_threshold must be in [0, 1], got {bg_threshold}")
        labels = torch.where(top < bg_threshold, torch.zeros_like(labels), labels)
    return labels


# ------------------------------------------------------------------------------- full-size outputs, in chunks
def _linear_taps(in_size: int, out_size: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source indices and weights of bilinear resampling along one axis, as ``F.interpolate(mode="bilinear",
    align_corners=False)`` computes them: src = (dst + 0.5) * in / out - 0.5, clamped at 0. Each (out_size,)."""
    scale = torch.tensor(in_size / out_size, dtype=torch.float32, device=device)
    src = (scale * (torch.arange(out_size, dtype=torch.float32, device=device) + 0.5) - 0.5).clamp_min(0)
    i0 = src.floor().long().clamp_max(in_size - 1)
    i1 = (i0 + 1).clamp_max(in_size - 1)
    w1 = (src - i0).clamp(0, 1)
    return i0, i1, 1 - w1, w1


def upsampled_rows(logits: torch.Tensor, out_size: tuple[int, int],
                   max_elements: int = CHUNK_ELEMENTS) -> Iterator[tuple[int, torch.Tensor]]:
    """Low-resolution (B, C, h, w) -> ``(row0, chunk (B, C, rows, W))`` chunks of the bilinear upsampling to
    ``out_size`` (H, W), at most ``max_elements`` values each, together covering rows 0..H-1.

    Equal to ``F.interpolate(logits, out_size, mode="bilinear", align_corners=False)`` up to float rounding
    (the same taps and weights, summed in one fixed order), and the same whatever the chunking."""
    B, C, h, w = logits.shape
    H, W = (int(out_size[0]), int(out_size[1]))
    if H < 1 or W < 1:
        raise ValueError(f"out_size must be positive, got {tuple(out_size)}")
    y0, y1, a0, a1 = _linear_taps(h, H, logits.device)
    x0, x1, b0, b1 = _linear_taps(w, W, logits.device)
    x = logits.float()
    cols = x[..., x0] * b0 + x[..., x1] * b1  # (B, C, h, W): only h rows, cheap
    rows = max(1, max_elements // max(1, B * C * W))
    for r in range(0, H, rows):
        sl = slice(r, min(r + rows, H))
        chunk = cols[:, :, y0[sl]] * a0[sl, None] + cols[:, :, y1[sl]] * a1[sl, None]  # (B, C, rows, W)
        yield r, chunk


def upsampled_labels(logits: torch.Tensor, out_size: tuple[int, int], bg_threshold: float | None = None,
                     background_last: bool = False, max_elements: int = CHUNK_ELEMENTS,
                     dtype: torch.dtype = torch.int64) -> torch.Tensor:
    """Low-resolution logits (B, C, h, w) -> labels (B, H, W) in ``dtype`` at ``out_size``: what
    ``logits_to_labels`` gives for the bilinearly upsampled logits, made ``max_elements`` logits at a time."""
    if bg_threshold is not None and not 0.0 <= bg_threshold <= 1.0:
        raise ValueError(f"bg_threshold must be in [0, 1], got {bg_threshold}")
    out = torch.empty(logits.shape[0], *out_size, dtype=dtype, device=logits.device)  # (B, H, W)
    for r, chunk in upsampled_rows(logits, out_size, max_elements):
        out[:, r:r + chunk.shape[2]] = logits_to_labels(chunk, bg_threshold, background_last).to(dtype)
    return out


def segment_labels(dense: torch.Tensor, classifier: torch.Tensor, out_size: tuple[int, int],
                   bg_threshold: float | None = None, background_last: bool = False, scale: float = 100.0,
                   max_elements: int = CHUNK_ELEMENTS, dtype: torch.dtype = torch.int64) -> torch.Tensor:
    """``logits_to_labels(segment_logits(dense, classifier, out_size), ...)`` without the full (B, C, H, W)
    logits: labels (B, H, W) in ``dtype``."""
    low = segment_logits(dense, classifier, None, scale)  # (B, C, h, w)
    return upsampled_labels(low, out_size, bg_threshold, background_last, max_elements, dtype)


def segment_probs(logits: torch.Tensor, out_size: tuple[int, int], num_classes: int | None = None,
                  max_elements: int = CHUNK_ELEMENTS) -> torch.Tensor:
    """Low-resolution logits (B, C, h, w) -> softmax probabilities (B, K, H, W) float32 at ``out_size``, the
    first ``K = num_classes`` channels (the softmax is over all C), filled in row chunks: one (B, K, H, W) copy."""
    K = logits.shape[1] if num_classes is None else int(num_classes)
    out = torch.empty(logits.shape[0], K, *out_size, dtype=torch.float32, device=logits.device)
    for r, chunk in upsampled_rows(logits, out_size, max_elements):
        out[:, :, r:r + chunk.shape[2]] = chunk.softmax(dim=1)[:, :K]
    return out
