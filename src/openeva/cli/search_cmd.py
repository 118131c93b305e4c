"""``openeva search``: rank an index's images by a text or an image query, with filters and a threshold."""

from __future__ import annotations

import json

from openeva.cli.options import (
    add_inference_options,
    add_model_options,
    encoder_options,
)


def register(subparsers) -> None:
    p = subparsers.add_parser("search", help="search an index by text or by image")
    p.add_argument("index", help="an `openeva index build` folder")
    q = p.add_mutually_exclusive_group(required=True)
    q.add_argument("--text", help="a text query, e.g. 'a red car'")
    q.add_argument("--image", help="an image file as the query")
    p.add_argument("-k", type=int, default=10, help="number of results (at most 1000)")
    p.add_argument("--filter", action="append", default=[], metavar="EXPR",
                   help="keep rows matching EXPR (repeatable): path=photos/2024/* (glob) or path=photos/ (prefix), "
                        "width>=640, height<=1080, COLUMN=VALUE")
    p.add_argument("--where", action="append", default=[], metavar="COL=VALUE",
                   help="keep rows whose column COL (from a CSV/JSONL source) equals VALUE (repeatable)")
    p.add_argument("--min-width", type=int, help="keep images at least this wide")
    p.add_argument("--max-width", type=int, help="keep images at most this wide")
    p.add_argument("--min-height", type=int, help="keep images at least this tall")
    p.add_argument("--max-height", type=int, help="keep images at most this tall")
    p.add_argument("--threshold", type=float, help="drop hits whose cosine score is below this, e.g. 0.25")
    p.add_argument("--fold-duplicates", type=float, nargs="?", const=0.95, metavar="COSINE",
                   help="fold near-duplicates (cosine >= COSINE to a better hit, 0.95 if not given) into one hit")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--grid", help="also draw the result thumbnails with scores into this PNG")
    add_model_options(p, required=False, model_help="model (default: the one the index was built with)",
                      pretrained_help="checkpoint (default: the index's)")
    add_inference_options(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from openeva.index import Index, SearchFilter
    from openeva.index.dedup import check_threshold, search_folded
    from openeva.serve.encoder import load_encoder
    from openeva.serve.search import draw_grid, encode_query, format_table

    flt = SearchFilter.parse(args.filter, args.where, min_width=args.min_width, max_width=args.max_width,
                             min_height=args.min_height, max_height=args.max_height)  # bad syntax: before the model
    if args.fold_duplicates is not None:
        check_threshold(args.fold_duplicates)
    index = Index.open(args.index)
    model = args.model or index.manifest.get("model")
    if not model:
        raise ValueError("the index does not name its model; pass --model")
    encoder = load_encoder(model, args.pretrained or index.manifest.get("pretrained"), **encoder_options(args))
    index.check_compatible(encoder.info)
    query = encode_query(encoder, text=args.text, image=args.image)  # (1, D)
    kw = {"filter": None if flt.empty else flt, "threshold": args.threshold}
    if args.fold_duplicates is None:
        hits = index.search(query, args.k, **kw)[0]
    else:
        hits = search_folded(index, query, args.k, args.fold_duplicates, **kw)
    print(json.dumps(hits, indent=2) if args.json else format_table(hits))
    if args.grid:
        if not hits:
            raise ValueError("no results to draw (the filter or threshold left none)")
        draw_grid(index, hits, args.grid)
    return 0
