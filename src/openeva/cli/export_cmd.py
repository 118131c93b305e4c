"""``openeva export onnx --model M [--pretrained P] --out DIR``: image and text towers as ONNX graphs.

Writes ``DIR/image.onnx``, ``DIR/text.onnx`` (CLIP models) and ``DIR/manifest.json``, then runs both graphs in
ONNX Runtime and checks them against PyTorch (fp32, max difference <= 1e-4 relative). Run the result with
``openeva.export.OnnxClip(DIR)``.
"""

from __future__ import annotations

from openeva.cli.options import add_model_options, add_output_options


def register(subparsers) -> None:
    p = subparsers.add_parser("export", help="export a model for another runtime (ONNX)",
                              description=__doc__.splitlines()[0])
    fmt = p.add_subparsers(dest="format", metavar="FORMAT", required=True)
    o = fmt.add_parser("onnx", help="image and text towers as ONNX graphs, checked against PyTorch")
    add_model_options(o)
    add_output_options(o, required=True, help="output folder")
    o.add_argument("--opset", type=int, default=17, help="ONNX opset (>= 17; default 17)")
    o.add_argument("--no-check", action="store_true", help="skip the onnxruntime vs PyTorch parity check")
    o.set_defaults(func=run_onnx)


def run_onnx(args) -> int:
    try:
        import onnx  # noqa: F401  (the exporter needs it)
        if not args.no_check:
            import onnxruntime  # noqa: F401
    except ImportError as e:  # an optional extra: a usage error with its fix, like any bad input
        raise ValueError(f"{e.name} is not installed; `pip install openeva[onnx]`") from None
    from openeva.export import export_onnx
    from openeva.factory import create_model

    model = create_model(args.model, pretrained=args.pretrained)
    manifest = export_onnx(model, args.out, opset=args.opset, check=not args.no_check, model_name=args.model,
                           pretrained=args.pretrained)
    for name, graph in manifest["graphs"].items():
        checks = manifest.get("parity", {}).get(name, [])
        worst = max((c["max_rel_diff"] for c in checks), default=None)
        note = f", onnxruntime vs PyTorch max rel diff {worst:.1e}" if worst is not None else ""
        print(f"{args.out}/{graph['file']}: {graph['input']} ({graph['input_dtype']}) -> {graph['output']}{note}")
    return 0
