"""``openeva segment``: training-free open-vocabulary segmentation of one image with an EVA-CLIP.

    openeva segment street.jpg --labels "sky,road,car" --model EVA02-B-16 --pretrained merged2b_s8b_b131k \\
        --out mask.png [--overlay overlay.png] [--bg-threshold 0.5] [--background "an empty background"]

Writes the label map (a palette PNG: pixel value 0 = background, k = the k-th label) and a colour overlay with
a legend (default: ``<out>_overlay.png``), and prints each label's share of the image.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from openeva.cli.options import (add_inference_options, add_model_options, add_output_options, add_prompt_options,
                                 inference_device, precision_line)


def register(subparsers) -> None:
    p = subparsers.add_parser("segment", help="open-vocabulary segmentation of an image with an EVA-CLIP",
                              description="Label every pixel with one of the given class names (MaskCLIP-style, "
                                          "no training); writes a label PNG and a colour overlay with a legend.")
    p.add_argument("image", help="image file")
    p.add_argument("--labels", required=True,
                   help="comma-separated class names ('sky,road,car') or a text file with one name per line")
    add_model_options(p, model_help="CLIP model name (e.g. EVA02-B-16) or a checkpoint folder")
    g = add_output_options(p, required=True, help="label map PNG to write")
    g.add_argument("--overlay", default=None, help="overlay PNG (default: <out>_overlay.png)")
    p.add_argument("--bg-threshold", type=float, default=None,
                   help="pixels whose top class probability is below this are background (0..1)")
    p.add_argument("--background", action="append", default=[], metavar="PROMPT",
                   help="a background prompt (repeatable, e.g. 'an empty background'): pixels it wins are 0")
    add_prompt_options(p, classnames=False,
                       templates_help="prompt templates: a JSON/text file or builtin name ('{c}' marks the class)")
    p.add_argument("--method", default=None, choices=("maskclip", "value"), help="dense feature path")
    p.add_argument("--refine", default=None, choices=("none", "fusion", "smooth", "fusion+smooth"),
                   help="training-free refinement (default: the measured best)")
    add_inference_options(p, tome=False, int8=False)
    p.set_defaults(func=run)


def _labels(spec: str) -> list[str]:
    from openeva.dense.segmenter import parse_labels

    path = Path(spec)
    if path.suffix.lower() in (".txt", ".json") or path.is_file():
        if not path.is_file():
            raise FileNotFoundError(f"labels file not found: {path}")
        text = path.read_text(encoding="utf-8")
        items = json.loads(text) if path.suffix.lower() == ".json" else text.splitlines()
        return parse_labels(items)
    return parse_labels(spec)


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from openeva.data.images import load_image
    from openeva.dense.segment import DEFAULT_TEMPLATES, DenseOptions
    from openeva.dense.segmenter import OpenVocabSegmenter, label_image, overlay
    from openeva.runtime import autocast, resolve_precision

    # every input checked before the model is built
    names = _labels(args.labels)
    image = load_image(args.image)
    if args.bg_threshold is not None and not 0.0 <= args.bg_threshold <= 1.0:
        raise ValueError(f"--bg-threshold must be in [0, 1], got {args.bg_threshold}")
    templates = DEFAULT_TEMPLATES
    if args.templates is not None:
        from openeva.data.classnames import load_templates

        templates = load_templates(args.templates)
    options = DenseOptions()
    if args.method:
        options = replace(options, method=args.method)
    if args.refine:
        options = replace(options, refine=args.refine)
    out = Path(args.out)
    overlay_path = Path(args.overlay) if args.overlay else out.with_name(out.stem + "_overlay.png")
    for p in (out, overlay_path):
        p.parent.mkdir(parents=True, exist_ok=True)
    device = inference_device(args)
    precision, _ = resolve_precision(args.precision, device)
    print(precision_line(args, device), file=sys.stderr)

    try:
        seg = OpenVocabSegmenter.from_pretrained(args.model, args.pretrained, templates=templates, options=options,
                                                 device=device)
    except TypeError as e:  # not a CLIP (no text tower / not an EVA tower)
        raise ValueError(str(e)) from None
    with autocast(precision, device):  # weights stay fp32; labels and areas are computed in fp32
        result = seg.segment(image, names, bg_threshold=args.bg_threshold, background=args.background)
    label_image(result.labels, len(names)).save(out)
    overlay(result).save(overlay_path)
    for name, area in result.areas().items():
        print(f"{name:>20s} {area:6.1%}")
    print(f"label map: {out}  overlay: {overlay_path}", file=sys.stderr)
    return 0
