"""open_clip's plain-ViT zoo -> openeva's layout: OpenAI-layout CLIPs (OpenAI, LAION, DFN, MetaCLIP) and the
fused ``qkv`` biases of timm ViTs (SigLIP's towers).

OpenAI's CLIP (and open_clip's ``VisionTransformer``, which keeps its names) stores the image tower as
``visual.conv1`` / ``class_embedding`` / ``positional_embedding`` / ``ln_pre`` / ``transformer.resblocks.i``
(``nn.MultiheadAttention``) / ``ln_post`` / ``proj`` and the text tower at the top level (``token_embedding``,
``transformer.resblocks.i``, ``ln_final``, ``text_projection``). openeva's ViT is one class, timm-named, so:

- ``in_proj_weight`` -> ``qkv.weight``; ``in_proj_bias`` -> ``q_bias`` and ``v_bias``. The key bias is dropped:
  it adds ``q . b_k`` to every score of a query's row, a constant that the softmax removes, so it changes
  nothing (EVA drops it for the same reason). The same holds for timm's ``attn.qkv.bias`` (SigLIP).
- ``proj`` [width, embed] (used as ``x @ proj``) -> ``head.weight`` [embed, width] of a bias-free Linear.
- ``class_embedding`` [D] -> ``cls_token`` [1, 1, D]; ``positional_embedding`` [N, D] -> ``pos_embed`` [1, N, D].

Detection is by key structure (``is_openai_layout``), never by a model name.
"""

from __future__ import annotations

import re

import torch

_VISION_RENAMES = [  # OpenAI / open_clip VisionTransformer names -> openeva (applied after "visual." is stripped)
    (r"^conv1\.", "patch_embed.proj."),
    (r"^ln_pre\.", "norm_pre."),
    (r"^ln_post\.", "norm."),
    (r"^transformer\.resblocks\.(\d+)\.ln_1\.", r"blocks.\1.norm1."),
    (r"^transformer\.resblocks\.(\d+)\.ln_2\.", r"blocks.\1.norm2."),
    (r"^transformer\.resblocks\.(\d+)\.attn\.out_proj\.", r"blocks.\1.attn.proj."),
    (r"^transformer\.resblocks\.(\d+)\.attn\.in_proj_weight$", r"blocks.\1.attn.qkv.weight"),
    (r"^transformer\.resblocks\.(\d+)\.mlp\.c_fc\.", r"blocks.\1.mlp.fc1."),
    (r"^transformer\.resblocks\.(\d+)\.mlp\.c_proj\.", r"blocks.\1.mlp.fc2."),
]
_TEXT_TOP_LEVEL = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.", "text_projection")
_UNSUPPORTED = re.compile(r"\.ls_[12]\.|(^|\.)attn_pool\.|\.ln_attn\.|\.ln_inner\.|\.head_scale$")
_OPENAI_METADATA = ("input_resolution", "context_length", "vocab_size")  # ints in OpenAI's own files


def is_openai_layout(sd: dict[str, torch.Tensor]) -> bool:
    """True for an OpenAI-layout CLIP state dict (OpenAI's files, open_clip's ``CLIP`` / ``VisionTransformer``):
    a ``visual.class_embedding`` or ``visual.conv1`` with ``visual.transformer.resblocks`` blocks."""
    return ("visual.class_embedding" in sd or "visual.conv1.weight" in sd) and any(
        k.startswith("visual.transformer.resblocks.") for k in sd)


def split_qkv_bias(sd: dict[str, torch.Tensor], bias_key: str, prefix: str) -> None:
    """A fused (3D,) ``[q; k; v]`` bias at ``bias_key`` -> ``{prefix}q_bias`` and ``{prefix}v_bias`` (in place);
    the key bias is dropped (softmax-invariant, see the module docstring)."""
    b = sd.pop(bias_key)
    q, _, v = b.chunk(3, dim=0)  # (D,) each
    sd[prefix + "q_bias"] = q
    sd[prefix + "v_bias"] = v


def split_timm_qkv_biases(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm ViT blocks' ``attn.qkv.bias`` -> ``attn.q_bias`` / ``attn.v_bias`` (timm's Eva already splits them)."""
    for k in [k for k in sd if re.fullmatch(r"blocks\.\d+\.attn\.qkv\.bias", k)]:
        split_qkv_bias(sd, k, k[: -len("qkv.bias")])
    return sd


def openai_vision_to_openeva(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An OpenAI-layout image tower (keys without ``visual.``) -> openeva's ``EVAViT`` keys."""
    bad = sorted(k for k in sd if _UNSUPPORTED.search(k))
    if bad:
        raise ValueError(f"this OpenAI-layout image tower uses options openeva's ViT does not build (layer scale, "
                         f"attentional pooler or scaled attention): {bad[:4]}")
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if k == "class_embedding":
            out["cls_token"] = v.reshape(1, 1, -1)  # (1, 1, D)
        elif k == "positional_embedding":
            out["pos_embed"] = v.unsqueeze(0)  # (1, 1 + N, D)
        elif k == "proj":
            out["head.weight"] = v.t().contiguous()  # [D, E] used as x @ proj -> Linear weight (E, D)
        elif k.endswith(".attn.in_proj_bias"):
            out[k] = v  # split below, after every rename
        else:
            for pat, rep in _VISION_RENAMES:
                k, n = re.subn(pat, rep, k)
                if n:
                    break
            out[k] = v
    for k in [k for k in out if k.endswith(".attn.in_proj_bias")]:
        i = k.split(".")[2]
        split_qkv_bias(out, k, f"blocks.{i}.attn.")
    return out


def openai_text_to_openeva(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The text tower of an OpenAI-layout CLIP: under ``text.`` (open_clip's ``CustomTextCLIP``) or at the top
    level (``CLIP``, OpenAI's files) -> the tower's own keys (already open_clip's names); buffers dropped."""
    if any(k.startswith("text.") for k in sd):
        text = {k[len("text."):]: v for k, v in sd.items() if k.startswith("text.")}
    else:
        text = {k: v for k, v in sd.items() if k.startswith(_TEXT_TOP_LEVEL)}
    return {k: v for k, v in text.items() if k != "attn_mask" and k not in _OPENAI_METADATA}


def openai_to_openeva(sd: dict[str, torch.Tensor], is_clip: bool) -> dict[str, torch.Tensor]:
    """An OpenAI-layout CLIP state dict -> openeva's, for a CLIP model (``is_clip``) or its image tower alone."""
    vision = openai_vision_to_openeva({k[len("visual."):]: v for k, v in sd.items() if k.startswith("visual.")})
    if not is_clip:
        return vision
    out = {f"visual.{k}": v for k, v in vision.items()}
    out.update({f"text.{k}": v for k, v in openai_text_to_openeva(sd).items()})
    for k in ("logit_scale", "logit_bias"):
        if k in sd:
            out[k] = sd[k]
    return out
