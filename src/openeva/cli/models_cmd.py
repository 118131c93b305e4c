"""``openeva models``: every registered model with its tower families, parameter counts and what it supports.

What a model supports is not a hand-kept table: :func:`capabilities` builds the model on the meta device (shapes
only, no memory, no weights) and asks the code that would refuse it. ToMe asks
:func:`openeva.models.tome.tome_refusal` (a ViT image tower), int8 :func:`openeva.models.int8.int8_refusal`
(Linear layers to quantize), ONNX :func:`openeva.export.onnx.onnx_refusal`; embed / serve need a CLIP model
(image and text towers, as the serving encoder checks), and training runs the CLIP task for CLIP models and the
fine-tuning task for backbones. A refusal's reason is in the JSON output.
"""

from __future__ import annotations

import json

CAPABILITIES = ("embed", "serve", "tome", "int8", "onnx", "train")


def register(subparsers) -> None:
    p = subparsers.add_parser("models", help="list models: families, parameter counts, what each supports")
    p.add_argument("names", nargs="*", metavar="NAME",
                   help="only these models; any timm backbone as timm:<name> (e.g. timm:swin_tiny_patch4_window7_224)")
    p.add_argument("--kind", choices=["clip", "backbone"], help="only CLIP models or only backbones")
    p.add_argument("--json", action="store_true", help="print JSON (with the reason for each unsupported feature)")
    p.set_defaults(func=run)


def _params_m(module) -> float:
    return round(sum(p.numel() for p in module.parameters()) / 1e6, 2)


def tower_family(tower) -> str:
    """A tower's family in a few words: 'ViT (RoPE)' (EVA-02), 'ViT' (class token), 'ViT (map pool)' (SigLIP),
    "timm ConvNeXt", "CLIP text", "HF xlm-roberta"; derived from the built module, not from its name."""
    from openeva.models.vit import EVAViT

    if isinstance(tower, EVAViT):
        cfg = tower.cfg
        if cfg.rope:
            return "ViT (RoPE)"
        return "ViT (map pool)" if cfg.global_pool == "map" else "ViT"
    trunk = getattr(tower, "trunk", None)
    if trunk is not None and hasattr(trunk, "pretrained_cfg"):
        return f"timm {type(trunk).__name__}"
    hf = getattr(getattr(tower, "transformer", None), "config", None)
    if hf is not None and hasattr(hf, "model_type"):
        return f"HF {hf.model_type}"
    if hasattr(tower, "transformer") and hasattr(tower, "token_embedding"):
        return "CLIP text"
    return type(tower).__name__


def capabilities(model) -> dict[str, str | None]:
    """{capability: None if supported, else the reason} for a built model (meta device is enough)."""
    from openeva.export.onnx import onnx_refusal
    from openeva.models.int8 import int8_refusal
    from openeva.models.tome import tome_refusal

    is_clip = hasattr(model, "encode_image") and hasattr(model, "encode_text")
    needs_clip = None if is_clip else "a backbone: embedding and serving need a CLIP model (image and text towers)"
    return {"embed": needs_clip, "serve": needs_clip, "tome": tome_refusal(model), "int8": int8_refusal(model),
            "onnx": onnx_refusal(model), "train": None}


def model_row(name: str) -> dict:
    """One model's row; built on the meta device, so even the 5B models cost no memory."""
    import torch

    from openeva.factory import create_model
    from openeva.models.registry import get_model_spec
    from openeva.models.tome import auto_r

    spec = get_model_spec(name)
    with torch.device("meta"):
        model = create_model(name, device="meta")
    caps = capabilities(model)
    row = {"name": name, "kind": "clip" if spec.is_clip else "backbone",
           "params_m": _params_m(model), "image_size": list(spec.image_size), "pretrained": sorted(spec.pretrained),
           "supports": {k: v is None for k, v in caps.items()},
           "train_task": "clip" if spec.is_clip else "finetune",
           "refusals": {k: v for k, v in caps.items() if v is not None}}
    if spec.is_clip:
        row["family"] = {"vision": tower_family(model.visual), "text": tower_family(model.text)}
        row["vision_params_m"] = _params_m(model.visual)
        row["text_params_m"] = _params_m(model.text)
    else:
        row["family"] = {"vision": tower_family(model)}
    if caps["tome"] is None:
        row["tome_r_auto"] = auto_r(model)
    return row


def model_rows(kind: str | None = None, names: list[str] | None = None) -> list[dict]:
    from openeva.models.registry import list_models

    rows = []
    for name in names or list_models(kind):
        if names:
            rows.append(model_row(name))  # asked for by name: an unknown name is the user's error, raised
            continue
        try:
            rows.append(model_row(name))
        except ImportError as e:  # a registered row whose optional extra is missing (transformers): say so, go on
            rows.append({"name": name, "error": str(e)})
    return [r for r in rows if kind is None or r.get("kind", kind) == kind]


def run(args) -> int:
    rows = model_rows(args.kind, args.names)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    flags = " ".join(f"{c:>5}" for c in CAPABILITIES)
    print(f"{'model':<34} {'kind':<9} {'vision family':<22} {'params (M)':>10} {'vision (M)':>10} {'size':>9} "
          f"{flags}  pretrained")
    for r in rows:
        if "error" in r:
            print(f"{r['name']:<34} cannot be built here: {r['error']}")
            continue
        vision = f"{r['vision_params_m']:.2f}" if "vision_params_m" in r else "-"
        size = "x".join(map(str, r["image_size"]))
        marks = " ".join(f"{'yes' if r['supports'][c] else '-':>5}" for c in CAPABILITIES)
        print(f"{r['name']:<34} {r['kind']:<9} {r['family']['vision']:<22} {r['params_m']:>10.2f} {vision:>10} "
              f"{size:>9} {marks}  {', '.join(r['pretrained']) or '-'}")
    print("tome: token merging (`apply_tome(model, 'auto')`); train: the CLIP task for CLIP models, fine-tuning for "
          "backbones; `--json` gives each refusal's reason and the default ToMe r")
    return 0
