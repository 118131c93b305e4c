"""``openeva search``: rank an index's images by a text or an image query."""

from __future__ import annotations

import json

from openeva.cli.options import add_inference_options, add_model_options, encoder_options


def register(subparsers) -> None:
    p = subparsers.add_parser("search", help="search an index by text or by image")
    p.add_argument("index", help="an `openeva index build` folder")
    q = p.add_mutually_exclusive_group(required=True)
    q.add_argument("--text", help="a text query, e.g. 'a red car'")
    q.add_argument("--image", help="an image file as the query")
    p.add_argument("-k", type=int, default=10, help="number of results")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--grid", help="also draw the result thumbnails with scores into this PNG")
    add_model_options(p, required=False, model_help="model (default: the one the index was built with)",
                      pretrained_help="checkpoint (default: the index's)")
    add_inference_options(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from openeva.serve.encoder import load_encoder
    from openeva.serve.index import Index
    from openeva.serve.search import draw_grid, format_table, search

    index = Index.load(args.index)
    model = args.model or index.manifest.get("model")
    if not model:
        raise ValueError("the index does not name its model; pass --model")
    encoder = load_encoder(model, args.pretrained or index.manifest.get("pretrained"), **encoder_options(args))
    hits = search(index, encoder, text=args.text, image=args.image, k=args.k)
    print(json.dumps(hits, indent=2) if args.json else format_table(hits))
    if args.grid:
        draw_grid(index, hits, args.grid)
    return 0
