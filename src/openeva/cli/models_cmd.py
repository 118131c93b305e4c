"""``openeva models``: the registered models with parameter counts, resolution and published weights."""

from __future__ import annotations

import json


def register(subparsers) -> None:
    p = subparsers.add_parser("models", help="list models: names, parameter counts, default resolution")
    p.add_argument("--kind", choices=["clip", "backbone"], help="only CLIP models or only backbones")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def model_rows(kind: str | None = None) -> list[dict]:
    """One row per model; counted on the meta device, so even the 5B models cost no memory."""
    import torch

    from openeva.factory import create_model
    from openeva.models.registry import get_model_spec, list_models

    rows = []
    for name in list_models(kind):
        spec = get_model_spec(name)
        with torch.device("meta"):
            model = create_model(name, device="meta")
        row = {"name": name, "kind": "clip" if spec.is_clip else "backbone",
               "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
               "image_size": list(spec.image_size), "pretrained": sorted(spec.pretrained)}
        if spec.is_clip:
            row["vision_params_m"] = round(sum(p.numel() for p in model.visual.parameters()) / 1e6, 2)
        rows.append(row)
    return rows


def run(args) -> int:
    rows = model_rows(args.kind)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'model':<30} {'kind':<9} {'params (M)':>11} {'vision (M)':>11} {'size':>9}  pretrained")
    for r in rows:
        vision = f"{r['vision_params_m']:.2f}" if "vision_params_m" in r else "-"
        size = "x".join(map(str, r["image_size"]))
        print(f"{r['name']:<30} {r['kind']:<9} {r['params_m']:>11.2f} {vision:>11} {size:>9}  "
              f"{', '.join(r['pretrained']) or '-'}")
    return 0
