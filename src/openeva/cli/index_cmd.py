"""``openeva index build|add``: a FAISS index over embedding folders, written atomically."""

from __future__ import annotations

import json

from openeva.cli.options import add_output_options


def register(subparsers) -> None:
    p = subparsers.add_parser("index", help="build or grow a FAISS index from `openeva embed` output")
    sub = p.add_subparsers(dest="index_command", metavar="ACTION", required=True)
    b = sub.add_parser("build", help="build an index from an embedding folder")
    b.add_argument("embeddings", help="an `openeva embed` output folder")
    add_output_options(b, required=True, help="index folder (replaced atomically)")
    b.add_argument("--kind", choices=["auto", "flat", "ivf", "hnsw"], default="auto",
                   help="auto: exact up to 50k vectors, IVF above")
    b.add_argument("--target-recall", type=float, default=0.9,
                   help="approximate kinds: widen the search until recall@10 vs exact search reaches this")
    b.set_defaults(func=run_build)
    a = sub.add_parser("add", help="add the vectors of another embedding folder (same model)")
    a.add_argument("index", help="an existing index folder")
    a.add_argument("embeddings", help="an `openeva embed` output folder")
    a.set_defaults(func=run_add)


def run_build(args) -> int:
    from openeva.serve.index import Index, check_output_folder

    check_output_folder(args.out)  # before the build: a wrong --out is refused at once, nothing touched
    index = Index.from_embeddings(args.embeddings, kind=args.kind, target_recall=args.target_recall)
    index.save(args.out)
    print(json.dumps({k: index.manifest.get(k) for k in ("kind", "count", "dim", "recall@10", "params", "version")}))
    return 0


def run_add(args) -> int:
    from openeva.serve.index import Index

    index = Index.load(args.index)
    added = index.add_embeddings(args.embeddings)
    if added:
        index.save(args.index)
    print(json.dumps({"added": added, **{k: index.manifest.get(k) for k in ("kind", "count", "recall@10")}}))
    return 0
