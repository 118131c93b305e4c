"""``openeva classify``: zero-shot labels with top-k probabilities for every image of a collection."""

from __future__ import annotations

import json

from openeva.cli.options import (add_data_options, add_inference_options, add_model_options, add_output_options,
                                 add_prompt_options, encoder_options)


def register(subparsers) -> None:
    p = subparsers.add_parser("classify", help="zero-shot label every image of a collection")
    p.add_argument("src", help="a folder of images, a .csv/.tsv/.jsonl index, or .tar shards")
    p.add_argument("-k", type=int, default=5, help="top-k probabilities per image")
    add_model_options(p)
    q = p.add_mutually_exclusive_group(required=True)
    q.add_argument("--labels", help="comma-separated labels, e.g. 'cat,dog,car'")
    add_prompt_options(p, classnames_in=q, templates_help="builtin name, file, or '|'-separated templates with {c}")
    add_data_options(p, image_key=True)
    add_output_options(p, required=True, help="predictions CSV", progress=True)
    add_inference_options(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from openeva.serve.classify import classify
    from openeva.serve.encoder import load_encoder

    templates = args.templates
    if templates and "{" in templates:
        templates = [t for t in templates.split("|") if t.strip()]
    encoder = load_encoder(args.model, args.pretrained, **encoder_options(args))
    result = classify(args.src, args.model, encoder=encoder, labels=args.labels, classnames=args.classnames, templates=templates,
                      out=args.out, pretrained=args.pretrained, k=args.k, batch_size=args.batch_size,
                      workers=args.workers, image_key=args.image_key, progress=not args.no_progress)
    print(json.dumps({"out": args.out, "classified": len(result["predictions"]), "skipped": len(result["skipped"])}))
    for item in result["skipped"][:20]:
        print(f"skipped {item['path']}: {item['error']}")
    return 0
