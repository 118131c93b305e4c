"""``openeva embed``: a folder / CSV / JSONL / WebDataset collection -> resumable shards of vectors."""

from __future__ import annotations

import json
import os
import sys

from openeva.cli.encoder_options import add_encoder_arguments, encoder_options


def register(subparsers) -> None:
    p = subparsers.add_parser("embed", help="embed a collection of images into vector shards (resumable)")
    p.add_argument("src", help="a folder of images, a .csv/.tsv/.jsonl index, or .tar shards ('{000..099}.tar')")
    p.add_argument("--model", required=True, help="a registered CLIP name or an openeva checkpoint directory")
    p.add_argument("--pretrained", help="checkpoint file or published tag")
    p.add_argument("--out", required=True, help="output folder (rerun with the same arguments to resume)")
    p.add_argument("--dtype", choices=["float16", "float32"], default="float16", help="stored vector dtype")
    p.add_argument("--text", action="store_true", help="also embed the captions")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--shard-size", type=int, default=4096, help="vectors per output shard")
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="DataLoader decode workers")
    p.add_argument("--image-key", help="image column of a CSV/JSONL index")
    p.add_argument("--caption-key", help="caption column of a CSV/JSONL index")
    p.add_argument("--no-progress", action="store_true")
    add_encoder_arguments(p)
    p.set_defaults(func=run)


def launch_rank() -> tuple[int, int]:
    """(rank, world_size) under torchrun (its RANK / WORLD_SIZE variables), else (0, 1)."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def run(args) -> int:
    from openeva.serve.embed import embed, resumed_precision
    from openeva.serve.encoder import load_encoder

    rank, world = launch_rank()
    options = encoder_options(args)
    resumed = resumed_precision(args.out) if args.precision == "auto" else None
    if resumed is not None:
        # "auto" may resolve otherwise on this machine than on the one that began the run; the run keeps its
        # precision, so the resumed vectors equal an uninterrupted run's (an explicit --precision is checked)
        print(f"resuming {args.out}: precision {resumed}, as the run began", file=sys.stderr)
        options["precision"] = resumed
    encoder = load_encoder(args.model, args.pretrained, **options)
    manifest = embed(args.src, args.model, args.out, pretrained=args.pretrained, encoder=encoder, dtype=args.dtype,
                     text=args.text,
                     batch_size=args.batch_size, shard_size=args.shard_size, workers=args.workers,
                     image_key=args.image_key, caption_key=args.caption_key, rank=rank, world_size=world,
                     progress=not args.no_progress)
    summary = {k: manifest.get(k) for k in ("status", "count", "total", "skipped_count", "dim", "dtype")}
    print(json.dumps({"out": args.out, **summary}))
    for item in manifest.get("skipped", [])[:20]:
        print(f"skipped {item['path']}: {item['error']}")
    return 0
