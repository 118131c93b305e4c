"""``openeva classify``: zero-shot labels with top-k probabilities for every image of a collection."""

from __future__ import annotations

import json
import os

from openeva.cli.encoder_options import add_encoder_arguments, encoder_options


def register(subparsers) -> None:
    p = subparsers.add_parser("classify", help="zero-shot label every image of a collection")
    p.add_argument("src", help="a folder of images, a .csv/.tsv/.jsonl index, or .tar shards")
    p.add_argument("--model", required=True)
    p.add_argument("--pretrained")
    q = p.add_mutually_exclusive_group(required=True)
    q.add_argument("--labels", help="comma-separated labels, e.g. 'cat,dog,car'")
    q.add_argument("--classnames", help="builtin list (imagenet1k, cifar10, ...) or a file")
    p.add_argument("--templates", help="builtin name, file, or '|'-separated templates with {c}")
    p.add_argument("--out", required=True, help="predictions CSV")
    p.add_argument("-k", type=int, default=5, help="top-k probabilities per image")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    p.add_argument("--image-key", help="image column of a CSV/JSONL index")
    p.add_argument("--no-progress", action="store_true")
    add_encoder_arguments(p)
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
