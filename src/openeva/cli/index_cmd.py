"""``openeva index build|add|delete|compact|info|upgrade``: the on-disk index over embedding folders."""

from __future__ import annotations

import json

from openeva.cli.options import add_output_options


def register(subparsers) -> None:
    p = subparsers.add_parser("index", help="build, grow, prune or inspect a search index of `openeva embed` output")
    sub = p.add_subparsers(dest="index_command", metavar="ACTION", required=True)
    b = sub.add_parser("build", help="build an index from one or more embedding folders (streamed shard by shard)")
    b.add_argument("embeddings", nargs="+", help="`openeva embed` output folders")
    add_output_options(b, required=True, help="index folder (a new version made live atomically)")
    b.add_argument("--kind", choices=["auto", "flat", "ivf", "ivfpq", "hnsw"], default="auto",
                   help="auto: exact up to 50k vectors, IVF-flat while it fits --max-memory, IVF-PQ (+ exact "
                        "re-rank) beyond")
    b.add_argument("--max-memory", default=None, metavar="SIZE",
                   help="memory budget of the index, e.g. 4G or 512M (default 4G): picks a compressed kind "
                        "when IVF-flat would not fit")
    b.add_argument("--target-recall", type=float, default=0.95,
                   help="approximate kinds: widen the search until recall@10 vs exact search on held-out "
                        "queries reaches this")
    b.add_argument("--seed", type=int, default=0, help="seed of the training sample and held-out queries")
    b.set_defaults(func=run_build)
    a = sub.add_parser("add", help="add the rows of more embedding folders (same model) as a new segment")
    a.add_argument("index", help="an existing index folder")
    a.add_argument("embeddings", nargs="+", help="`openeva embed` output folders")
    a.set_defaults(func=run_add)
    d = sub.add_parser("delete", help="delete rows by id (hidden at once; space reclaimed by compact)")
    d.add_argument("index", help="an existing index folder")
    d.add_argument("ids", nargs="+", help="row ids as `openeva search --json` shows them")
    d.set_defaults(func=run_delete)
    c = sub.add_parser("compact", help="merge segments into one and drop deleted rows")
    c.add_argument("index", help="an existing index folder")
    c.set_defaults(func=run_compact)
    i = sub.add_parser("info", help="kind, size, recall, segments and disk use of an index")
    i.add_argument("index", help="an existing index folder")
    i.set_defaults(func=run_info)
    u = sub.add_parser("upgrade", help="convert an index of the old layout (index.faiss + vectors.npy) in place")
    u.add_argument("index", help="an index folder of the old layout")
    u.set_defaults(func=run_upgrade)


def _summary(index) -> dict:
    m = index.manifest
    return {"count": len(index), "kind": index.kind, "dim": index.dim, "recall@10": m.get("recall@10"),
            "params": m.get("params"), "segments": index.num_segments, "version": index.version}


def run_build(args) -> int:
    from openeva.index import Index, check_output_folder, parse_size

    check_output_folder(args.out)  # before the build: a wrong --out is refused at once, nothing touched
    parse_size(args.max_memory)
    if not 0.0 < args.target_recall <= 1.0:
        raise ValueError(f"--target-recall must be in (0, 1], got {args.target_recall}")
    index = Index.build(args.embeddings, args.out, kind=args.kind, max_memory=args.max_memory,
                        target_recall=args.target_recall, seed=args.seed)
    print(json.dumps({**_summary(index), "kind_reason": index.manifest.get("kind_reason")}))
    return 0


def run_add(args) -> int:
    from openeva.index import Index

    index = Index.open(args.index)
    added = index.add_embeddings(args.embeddings)
    print(json.dumps({"added": added, **_summary(index)}))
    return 0


def run_delete(args) -> int:
    from openeva.index import Index

    index = Index.open(args.index)
    deleted = index.delete(args.ids)
    print(json.dumps({"deleted": deleted, **_summary(index)}))
    return 0


def run_compact(args) -> int:
    from openeva.index import Index

    index = Index.open(args.index)
    index.compact()
    print(json.dumps(_summary(index)))
    return 0


def run_info(args) -> int:
    from openeva.index import Index

    print(json.dumps(Index.open(args.index).info(), indent=2))
    return 0


def run_upgrade(args) -> int:
    from openeva.index import Index

    print(json.dumps(_summary(Index.upgrade(args.index))))
    return 0
