"""`openeva embed` throughput on a folder of JPEGs vs the bare model forward and vs a plain open_clip loop.

Same weights in all three (open_clip's EVA02-B-16 with random weights, converted into openeva), same files,
fp32. Data loading must not be the bottleneck: embed's images/s should be >= 90% of the bare forward's.

    .venv/bin/python benchmarks/bench_embed.py --images 96 --batch-size 32 --workers 2 --threads 2
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import _common
import numpy as np
import torch
from PIL import Image


def make_jpegs(folder: Path, n: int, size: int = 384) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        pixels = rng.integers(0, 255, (size // 8, size // 8, 3), dtype=np.uint8)
        image = Image.fromarray(pixels).resize((size, size), Image.BILINEAR)  # smooth, photo-like JPEG sizes
        paths.append(folder / f"{i:05d}.jpg")
        image.save(paths[-1], quality=90)
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="EVA02-B-16")
    ap.add_argument("--images", type=int, default=96)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default=str(_common.RESULTS_DIR / "embed_throughput.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    _common.quiet_open_clip()
    import open_clip

    from openeva.serve.embed import embed
    from openeva.serve.encoder import TorchClipEncoder

    ref, _, ref_preprocess = open_clip.create_model_and_transforms(args.model, pretrained=None)
    _common.randomize_(ref)
    ref.eval()
    ours = _common.open_clip_to_openeva(ref, args.model).eval()
    encoder = TorchClipEncoder(args.model, model=ours)
    tmp = Path(tempfile.mkdtemp(prefix="bench_embed_"))
    try:
        (tmp / "photos").mkdir()
        paths = make_jpegs(tmp / "photos", args.images)
        size = ours.visual.cfg.img_size
        pixels = torch.randn(args.batch_size, 3, *size)  # (B, 3, H, W)

        def bare():
            for start in range(0, args.images, args.batch_size):
                encoder.encode_images(pixels[: min(args.batch_size, args.images - start)])

        run = [0]

        def openeva_embed():
            run[0] += 1
            embed(tmp / "photos", out=tmp / f"emb{run[0]}", encoder=encoder, batch_size=args.batch_size,
                  workers=args.workers, progress=False)

        def open_clip_loop():
            with torch.inference_mode():
                for start in range(0, len(paths), args.batch_size):
                    batch = torch.stack([ref_preprocess(Image.open(p).convert("RGB"))
                                         for p in paths[start:start + args.batch_size]])
                    ref.encode_image(batch, normalize=True)

        times = _common.interleaved_times({"bare_forward": bare, "openeva_embed": openeva_embed,
                                           "open_clip_loop": open_clip_loop}, repeats=args.repeats, warmup=0)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rates = {k: args.images / _common.median(v) for k, v in times.items()}
    result = {
        "benchmark": "embed_throughput", "model": args.model, "images": args.images, "image_size": 384,
        "batch_size": args.batch_size, "workers": args.workers, "precision": "fp32",
        "images_per_s": {k: round(v, 2) for k, v in rates.items()},
        "seconds": {k: [round(x, 3) for x in v] for k, v in times.items()},
        "embed_vs_bare_forward": round(rates["openeva_embed"] / rates["bare_forward"], 3),
        "embed_vs_open_clip_loop": round(rates["openeva_embed"] / rates["open_clip_loop"], 3),
        "mkldnn_bf16_supported": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
        "note": "shared machine: other engineers' jobs ran at the same time; ratios are same-run, interleaved",
        "environment": _common.environment(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps({k: result[k] for k in ("images_per_s", "embed_vs_bare_forward", "embed_vs_open_clip_loop")}))


if __name__ == "__main__":
    main()
