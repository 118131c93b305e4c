"""State-dict converters: EVA native, timm and open_clip layouts -> openeva's.

openeva's layout is timm's ``Eva`` with two fusions for speed: separate ``q_proj/k_proj/v_proj`` (EVA-02 B/L)
become one ``qkv`` + ``q_bias``/``v_bias``, and split SwiGLU ``fc1_g/fc1_x`` (EVA ``w1/w2``) become one packed
``fc1`` ([gate; value]). Rope buffers are never loaded (they are recomputed). The key mapping facts are in
``shared/reference/eva.md`` section 4. open_clip's plain-ViT zoo (OpenAI-layout CLIPs, SigLIP's timm towers)
is mapped in :mod:`openeva.checkpoints.openclip_zoo`.
"""

from __future__ import annotations

import re

import torch

from openeva.checkpoints.openclip_zoo import is_openai_layout, openai_to_openeva, split_timm_qkv_biases

# EVA native (and EVA-CLIP ``visual.``) names -> timm names, applied after the tower prefix is stripped.
_EVA_TO_TIMM = [
    (r"\.attn\.inner_attn_ln\.", ".attn.norm."),
    (r"\.mlp\.ffn_ln\.", ".mlp.norm."),
    (r"\.mlp\.w12\.", ".mlp.fc1."),
    (r"\.mlp\.w1\.", ".mlp.fc1_g."),
    (r"\.mlp\.w2\.", ".mlp.fc1_x."),
    (r"\.mlp\.w3\.", ".mlp.fc2."),
]
_DROP = re.compile(r"(^|\.)rope\.|(^|\.)freqs_(cos|sin)$|\.k_bias$|(^|\.)attn_mask$")


def unwrap_state_dict(obj) -> dict[str, torch.Tensor]:
    """Finds the state dict inside training checkpoints (``model_ema`` > ``model`` > ``module`` > ``state_dict``)."""
    if not isinstance(obj, dict):
        raise ValueError(f"checkpoint holds a {type(obj).__name__}, not a state dict")
    for key in ("model_ema", "model", "module", "state_dict"):
        inner = obj.get(key)
        if isinstance(inner, dict) and _holds_tensors(inner):  # may itself wrap one, e.g. model_ema.state_dict
            return unwrap_state_dict(inner) if not _is_flat(inner) else inner
    if not _is_flat(obj):
        raise ValueError("no state dict found in checkpoint (looked under model_ema, model, module, state_dict)")
    return obj


def _holds_tensors(d: dict) -> bool:
    return any(isinstance(v, torch.Tensor) or (isinstance(v, dict) and _holds_tensors(v)) for v in d.values())


def _is_flat(d: dict) -> bool:
    return bool(d) and all(isinstance(v, torch.Tensor) for v in d.values())


def detect_format(sd: dict[str, torch.Tensor]) -> str:
    """Names the layout from its keys: 'openai_clip', 'open_clip', 'eva_clip', 'openeva_clip', 'eva' or 'timm'.

    'openai_clip': OpenAI's CLIP layout (``visual.conv1``, ``visual.transformer.resblocks``), which open_clip keeps
    for its own ViTs (OpenAI, LAION, DFN, MetaCLIP); 'open_clip': a timm trunk under ``visual.trunk.`` (EVA,
    SigLIP).

    The last four pairs differ only in naming details that ``vision_to_openeva`` handles either way (it is
    idempotent on openeva names), so the name is for messages; the prefix structure decides the conversion.
    """
    keys = list(sd)
    if is_openai_layout(sd):
        return "openai_clip"
    if any(k.startswith("visual.trunk.") for k in keys):
        return "open_clip"
    eva_markers = (".mlp.w1.", ".mlp.w12.", ".mlp.w3.", ".ffn_ln.", ".inner_attn_ln.", "lm_head.", "rope.freqs")
    is_eva = any(m in k for k in keys for m in eva_markers)
    if any(k.startswith("visual.") for k in keys) and any(k.startswith("text.") for k in keys):
        return "eva_clip" if is_eva else "openeva_clip"
    return "eva" if is_eva else "timm"


def strip_prefix(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def vision_to_openeva(sd: dict[str, torch.Tensor], depth: int | None = None) -> dict[str, torch.Tensor]:
    """A vision tower in EVA native or timm naming (no prefix) -> openeva naming."""
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if _DROP.search(k):
            continue
        for pat, rep in _EVA_TO_TIMM:
            k = re.sub(pat, rep, k)
        out[k] = v
    split_timm_qkv_biases(out)  # timm ViT (SigLIP): fused qkv.bias -> q_bias / v_bias
    blocks = sorted({int(m.group(1)) for k in out if (m := re.match(r"blocks\.(\d+)\.", k))})
    for i in blocks:
        p = f"blocks.{i}."
        _fuse_qkv(out, p + "attn.")
        _pack_swiglu(out, p + "mlp.")
    return out


def _fuse_qkv(sd: dict, p: str) -> None:
    if p + "q_proj.weight" not in sd:
        return
    q, k, v = (sd.pop(p + f"{n}_proj.weight") for n in "qkv")
    sd[p + "qkv.weight"] = torch.cat([q, k, v], dim=0)  # (3D, D)
    # EVA native keeps q_bias / v_bias; timm stores them as q_proj.bias / v_proj.bias.
    if p + "q_proj.bias" in sd:
        sd[p + "q_bias"] = sd.pop(p + "q_proj.bias")
        sd[p + "v_bias"] = sd.pop(p + "v_proj.bias")
    sd.pop(p + "k_proj.bias", None)


def _pack_swiglu(sd: dict, p: str) -> None:
    for part in ("weight", "bias"):
        g, x = p + f"fc1_g.{part}", p + f"fc1_x.{part}"
        if g in sd:
            sd[p + f"fc1.{part}"] = torch.cat([sd.pop(g), sd.pop(x)], dim=0)  # (2H, ...) [gate; value]


def text_to_openeva(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The CLIP text tower (open_clip / EVA-CLIP naming, no prefix) -> openeva naming (the same, less buffers)."""
    return {k: v for k, v in sd.items() if not _DROP.search(k)}


def to_openeva(sd: dict[str, torch.Tensor], fmt: str, is_clip: bool) -> dict[str, torch.Tensor]:
    """Any supported layout -> openeva's, for a CLIP model (``is_clip``) or a bare backbone.

    A CLIP checkpoint loaded into a backbone gives its vision tower (EVA-CLIP towers as backbones).
    """
    if fmt not in ("openai_clip", "open_clip", "eva_clip", "openeva_clip", "eva", "timm"):
        raise ValueError(f"unknown checkpoint format {fmt!r}")
    if fmt == "openai_clip":
        return openai_to_openeva(sd, is_clip)
    vision_prefix = "visual.trunk." if fmt == "open_clip" else "visual." if fmt.endswith("_clip") else ""
    if not vision_prefix and any(k.startswith("visual.") for k in sd):  # a lone vision tower saved with prefix
        vision_prefix = "visual.trunk." if any(k.startswith("visual.trunk.") for k in sd) else "visual."
    vision = vision_to_openeva(strip_prefix(sd, vision_prefix) if vision_prefix else sd)
    if not is_clip:
        return vision
    if not fmt.endswith("_clip"):
        raise ValueError(f"a {fmt} backbone checkpoint has no text tower; load it into a CLIP model's visual "
                         "tower instead (openeva.checkpoints.load_checkpoint(model.visual, path))")
    out = {f"visual.{k}": v for k, v in vision.items()}
    out.update({f"text.{k}": v for k, v in text_to_openeva(strip_prefix(sd, "text.")).items()})
    for k in ("logit_scale", "logit_bias"):  # logit_bias: SigLIP
        if k in sd:
            out[k] = sd[k]
    return out
