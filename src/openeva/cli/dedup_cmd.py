"""``openeva dedup INDEX --threshold 0.95 --out groups.csv``: groups of near-duplicate images in an index."""

from __future__ import annotations

import json

from openeva.cli.options import add_output_options


def register(subparsers) -> None:
    p = subparsers.add_parser("dedup", help="group near-duplicates of an index (cosine >= threshold)",
                              description=__doc__.splitlines()[0])
    p.add_argument("index", help="an `openeva index build` folder")
    p.add_argument("--threshold", type=float, default=0.95,
                   help="cosine similarity at or above which two rows are duplicates (default 0.95; 0.99 for "
                        "re-encoded copies of one photo, lower for bursts and crops)")
    p.add_argument("--batch-size", type=int, default=1024, help="rows range-searched at once (bounds memory)")
    add_output_options(p, required=True, help="groups.csv (one line a row) or groups.json (the suffix decides)",
                       progress=True)
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from openeva.index import Index
    from openeva.index.dedup import check_threshold, find_duplicate_groups, row_metadata, write_groups

    check_threshold(args.threshold)
    out = Path(args.out)
    if out.suffix.lower() not in (".csv", ".json"):
        raise ValueError(f"--out {out}: name a .csv or a .json file (the suffix picks the format)")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"--out {out}: the folder {out.parent} does not exist")
    index = Index.open(args.index)
    bar = None
    if not args.no_progress:
        from tqdm import tqdm

        bar = tqdm(total=len(index), unit="row", desc="dedup", dynamic_ncols=True)
    last = [0]

    def progress(scanned: int) -> None:
        bar.update(scanned - last[0])
        last[0] = scanned

    result = find_duplicate_groups(index, args.threshold, batch=args.batch_size,
                                   progress=progress if bar is not None else None)
    if bar is not None:
        bar.close()
    write_groups(out, result, row_metadata(index, [r for g in result.groups for r in g]))
    print(json.dumps({"groups": len(result.groups), "rows_in_groups": result.rows_in_groups,
                      "rows_scanned": result.rows_scanned, "threshold": result.threshold, "out": str(out)}))
    return 0
