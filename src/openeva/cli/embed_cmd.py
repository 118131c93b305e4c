"""``openeva embed``: a folder / CSV / JSONL / WebDataset collection -> resumable shards of vectors."""

from __future__ import annotations

import json
import os
import sys

from openeva.cli.options import (add_data_options, add_inference_options, add_model_options, add_output_options,
                                 encoder_options)


def register(subparsers) -> None:
    p = subparsers.add_parser("embed", help="embed a collection of images into vector shards (resumable)")
    p.add_argument("src", help="a folder of images, a .csv/.tsv/.jsonl index, or .tar shards ('{000..099}.tar'); "
                               "a path or a URL (s3://, https://, pipe:CMD): remote shards are streamed, each "
                               "downloaded once")
    p.add_argument("--dtype", choices=["float16", "float32"], default="float16", help="stored vector dtype")
    p.add_argument("--text", action="store_true", help="also embed the captions")
    p.add_argument("--shard-size", type=int, default=4096, help="vectors per output shard")
    add_model_options(p, model_help="a registered CLIP name or an openeva checkpoint directory")
    add_data_options(p, image_key=True, caption_key=True)
    add_output_options(p, required=True, help="output folder (rerun with the same arguments to resume)",
                       progress=True)
    add_inference_options(p)
    p.set_defaults(func=run)


def launch_rank() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) under torchrun, or plain ``srun`` (SLURM_PROCID / SLURM_NTASKS /
    SLURM_LOCALID), else (0, 1, 0): each task embeds its own output shards on its own GPU."""
    from openeva.train.distributed import detect_env

    info = detect_env(dict(os.environ))
    return info["rank"], info["world_size"], info["local_rank"]


def run(args) -> int:
    from openeva.runtime import resolve_device
    from openeva.serve.embed import embed, resumed_precision
    from openeva.serve.encoder import load_encoder

    rank, world, local_rank = launch_rank()
    options = encoder_options(args)
    if options.get("device") == "auto" and world > 1 and not args.int8:
        options["device"] = str(resolve_device("auto", local_rank))  # this task's GPU (srun sets no LOCAL_RANK)
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
