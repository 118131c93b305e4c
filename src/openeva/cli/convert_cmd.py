"""``openeva convert IN OUT``: any supported checkpoint (EVA native, timm, open_clip, ours) -> openeva's format."""

from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser("convert", help="convert an EVA / timm / open_clip checkpoint to openeva's format")
    p.add_argument("input", help="checkpoint file (.pt/.pth/.bin/.safetensors) or openeva directory")
    p.add_argument("output", help="output directory (model.safetensors + config.json)")
    p.add_argument("--model", help="registered model name (default: inferred from the checkpoint's shapes)")
    p.add_argument("--img-size", type=int, nargs="+", help="target image size: one value or H W")
    p.set_defaults(func=run)


def infer_model_name(path: str) -> str:
    """The registered model whose state dict the checkpoint fits exactly (keys and shapes)."""
    import torch

    from openeva.checkpoints import detect_format, read_state_dict, to_openeva
    from openeva.factory import create_model
    from openeva.models.registry import get_model_spec, list_models

    raw = read_state_dict(path)
    fmt = detect_format(raw)
    matches = []
    for name in list_models():
        spec = get_model_spec(name)
        if spec.is_clip != fmt.endswith("_clip"):
            continue
        sd = to_openeva(raw, fmt, is_clip=spec.is_clip)
        with torch.device("meta"):
            target = create_model(name, device="meta").state_dict()
        ignorable = ("lm_head.", "mask_token", "norm.", "fc_norm.", "head.")  # MIM vs classifier layouts differ here
        core = lambda keys: {k for k in keys if not k.startswith(ignorable)}  # noqa: E731
        if core(sd) == core(target) and all(sd[k].shape == target[k].shape for k in core(sd)):
            matches.append(name)
    if not matches:
        raise ValueError(f"{path}: a {fmt} checkpoint that fits no registered model; pass --model NAME")
    if len(matches) > 1:  # same weights at several resolutions: prefer the 224 row
        matches.sort(key=lambda n: (get_model_spec(n).image_size != (224, 224), n))
    return matches[0]


def run(args) -> int:
    from openeva.factory import create_model, save_model

    if args.img_size is not None and len(args.img_size) not in (1, 2):
        raise ValueError(f"--img-size takes one value or two (H W), got {args.img_size}")
    size = None if args.img_size is None else (args.img_size * 2)[:2]
    name = args.model or infer_model_name(args.input)
    model = create_model(name, pretrained=args.input, img_size=size)
    out = save_model(model, args.output, extra={"converted_from": str(args.input)})
    print(f"converted {args.input} -> {out} as {name}")
    return 0
