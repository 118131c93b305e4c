"""What the MIM teacher's precision does to its targets, on real images: cosine similarity between the per-patch
targets of an fp32 teacher and of the same teacher run as openeva runs it (bf16 weights, ``ClipTeacher`` with
``precision="bf16"``) and as EVA-02 runs it (fp32 weights under fp16 autocast), plus fp32 weights under bf16
autocast.

Images: Fashion-MNIST test images (/usr/share/datasets/fashion-mnist, Debian's ``dataset-fashion-mnist``), grey
replicated to RGB, resized to the teacher's input (bicubic) and normalised with its mean / std.

Teacher: the vision tower of a registered CLIP (``EVA02-test`` by default, ``--teacher EVA02-B-16`` for the
recipes' size) with random weights from openeva's initialisation (EVA's per-matrix Xavier init, head x0.001), or a
trained one with ``--weights RUN/final``. The targets are what the MIM loss regresses: ``head(final_norm(patch
tokens))``, compared by cosine per patch (the EVA-02 loss is 1 - cosine), reported as mean / min / 1st percentile
over every patch of every image, and as ``1 - mean`` (the loss floor the rounding alone would leave).

    .venv/bin/python benchmarks/bench_teacher_precision.py --images 256
    .venv/bin/python benchmarks/bench_teacher_precision.py --teacher EVA02-B-16 --images 32

Writes ``benchmarks/results/teacher_precision[_<teacher>].json``.
"""

from __future__ import annotations

import argparse
import copy
import gzip
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from _common import RESULTS_DIR, environment, write_json

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def fashion_mnist(n: int) -> torch.Tensor:
    """The first ``n`` test images as (n, 1, 28, 28) floats in [0, 1]."""
    path = FASHION_MNIST / "t10k-images-idx3-ubyte.gz"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: apt-get install dataset-fashion-mnist")
    with gzip.open(path, "rb") as f:
        raw = np.frombuffer(f.read(), dtype=np.uint8, offset=16).reshape(-1, 1, 28, 28)
    return torch.from_numpy(raw[:n].astype(np.float32) / 255.0)


def teacher_inputs(images: torch.Tensor, size: tuple[int, int], mean, std) -> torch.Tensor:
    x = F.interpolate(images.expand(-1, 3, -1, -1), size=size, mode="bicubic", align_corners=False, antialias=True)
    x = x.clamp(0, 1)  # (n, 3, H, W)
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


@torch.no_grad()
def targets(visual, x: torch.Tensor, autocast_dtype: torch.dtype | None, batch: int) -> torch.Tensor:
    """``head(final_norm(patch tokens))`` of ``visual`` (in its own weight dtype), optionally under CPU autocast;
    (n, N, C) fp32, as :meth:`openeva.models.mim.ClipTeacher.patch_features` computes them."""
    out = []
    dtype = next(visual.parameters()).dtype
    for start in range(0, len(x), batch):
        chunk = x[start:start + batch].to(dtype)
        ctx = torch.autocast("cpu", dtype=autocast_dtype) if autocast_dtype else torch.autocast("cpu", enabled=False)
        with ctx:
            tokens = visual.forward_features(chunk)  # (b, 1 + N, D)
            patches = tokens[:, visual.num_prefix_tokens:]  # (b, N, D)
            if visual.cfg.global_pool == "avg":
                patches = visual.fc_norm(patches)
            out.append(visual.head(patches).float())  # (b, N, C)
    return torch.cat(out)


def cosine_stats(a: torch.Tensor, ref: torch.Tensor) -> dict:
    cos = F.cosine_similarity(a.flatten(0, 1), ref.flatten(0, 1), dim=-1)  # (n * N,)
    return {"mean": float(cos.mean()), "min": float(cos.min()), "p01": float(torch.quantile(cos, 0.01)),
            "one_minus_mean": float(1 - cos.mean()), "patches": int(cos.numel())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--teacher", default="EVA02-test")
    parser.add_argument("--weights", default=None, help="trained CLIP weights (default: random, openeva's init)")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from openeva.factory import build_teacher

    torch.manual_seed(args.seed)
    teacher = build_teacher(args.teacher, pretrained=args.weights, precision="fp32")
    visual32 = teacher.visual
    spec = teacher.spec
    x = teacher_inputs(fashion_mnist(args.images), tuple(visual32.cfg.img_size), spec.mean, spec.std)
    ref = targets(visual32, x, None, args.batch)
    bf16_weights = copy.deepcopy(visual32).to(torch.bfloat16)  # what ClipTeacher(precision="bf16") holds
    runs = {
        "bf16_weights (openeva)": targets(bf16_weights, x, torch.bfloat16, args.batch),
        "fp32_weights_fp16_autocast (EVA-02)": targets(visual32, x, torch.float16, args.batch),
        "fp32_weights_bf16_autocast": targets(visual32, x, torch.bfloat16, args.batch),
    }
    report = {
        "benchmark": "teacher_precision",
        "teacher": args.teacher,
        "weights": args.weights or f"random (openeva's initialisation, seed {args.seed})",
        "images": f"Fashion-MNIST test[:{args.images}], grey -> RGB, resized to {tuple(visual32.cfg.img_size)}",
        "target": "head(final_norm(patch tokens)), per patch",
        "reference": "fp32 weights, no autocast",
        "cosine_to_fp32": {name: cosine_stats(t, ref) for name, t in runs.items()},
        "note": ("cosines are deterministic for given weights and images (no timing here); a random teacher's "
                 "targets are not a trained teacher's, whose activations may have larger outliers"),
        "environment": environment(),
    }
    name = "teacher_precision.json" if args.teacher == "EVA02-test" and not args.weights else \
        f"teacher_precision_{args.teacher}.json"
    out = write_json(args.out or RESULTS_DIR / name, report)
    for run, stats in report["cosine_to_fp32"].items():
        print(f"{run:38s} mean {stats['mean']:.6f}  min {stats['min']:.6f}  p01 {stats['p01']:.6f}")
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
