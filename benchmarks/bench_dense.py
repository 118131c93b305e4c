"""Dense features and video on CPU, against the image forward they build on (same model, same run, interleaved).

For one EVA-CLIP (random weights at an O(1) scale; speed does not depend on the values) and a batch of images:
- ``image``: ``encode_image`` (the one-vector forward every other row is compared with);
- ``dense:<method>/<refine>``: open-vocabulary dense embeddings (``openeva.dense.segment.dense_embeddings``);
- ``pyramid:global`` / ``pyramid:window``: the ViTDet simple feature pyramid over the image tower (global
  attention as pretrained; windows of ``grid/2`` with the last block global);
- ``video:T``: one video of T frames (``openeva.eval.video.embed_video``), against ``image`` on one frame.

    .venv/bin/python benchmarks/bench_dense.py --model EVA02-B-16 --batch 2 --repeats 3 --threads 2

Writes ``benchmarks/results/dense.json`` and prints a markdown table (ratio = time / image forward time).
"""

from __future__ import annotations

import argparse
import sys

import torch

from _common import RESULTS_DIR, environment, interleaved_times, median, randomize_, write_json


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="EVA02-B-16")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(RESULTS_DIR / "dense.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from openeva.dense.pyramid import SimpleFeaturePyramid
    from openeva.dense.segment import DenseOptions, dense_embeddings
    from openeva.eval.video import embed_video
    from openeva.factory import create_model

    model = randomize_(create_model(args.model)).eval()
    visual = model.visual
    size = visual.cfg.img_size
    grid = visual.cfg.grid_size
    images = torch.randn(args.batch, 3, *size)
    one = images[:1]
    frames = [torch.randn(3, *size) for _ in range(args.frames)]
    depth = visual.cfg.depth
    pyramid_global = SimpleFeaturePyramid(visual, 256).eval()
    pyramid_window = SimpleFeaturePyramid(visual, 256, window_size=max(grid[0] // 2, 1),
                                          global_blocks=(depth - 1,)).eval()

    fns = {"image": lambda: model.encode_image(images)}
    for method, refine in (("maskclip", "none"), ("value", "none"), ("value", "smooth"), ("value", "fusion")):
        opts = DenseOptions(method=method, refine=refine)
        fns[f"dense:{method}/{refine}"] = lambda o=opts: dense_embeddings(model, images, o)
    fns["pyramid:global"] = lambda: pyramid_global(images)
    fns["pyramid:window"] = lambda: pyramid_window(images)
    video_fns = {"image(1 frame)": lambda: model.encode_image(one),
                 f"video:{args.frames}": lambda: embed_video(model, frames, lambda f: f)}

    with torch.inference_mode():
        times = interleaved_times(fns, args.repeats)
        vtimes = interleaved_times(video_fns, args.repeats)
    base, vbase = median(times["image"]), median(vtimes["image(1 frame)"])
    rows = [{"name": k, "batch": args.batch, "median_s": median(v), "ratio_to_image": median(v) / base,
             "times_s": v} for k, v in times.items()]
    rows += [{"name": k, "batch": 1, "median_s": median(v), "ratio_to_image": median(v) / vbase, "times_s": v}
             for k, v in vtimes.items()]
    env = environment()
    env["mkldnn_bf16_supported"] = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    result = {"benchmark": "dense", "model": args.model, "image_size": list(size), "grid": list(grid),
              "precision": "fp32", "repeats": args.repeats, "rows": rows, "environment": env,
              "note": "shared 2-core machine: other engineers' jobs ran at the same time; compare the ratios"}
    write_json(args.out, result)
    print(f"| {args.model} fp32, batch {args.batch} | median s | x image forward |")
    print("|---|---:|---:|")
    for r in rows:
        print(f"| {r['name']} (batch {r['batch']}) | {r['median_s']:.3f} | {r['ratio_to_image']:.2f} |")
    print(f"cpu capability {env['torch_cpu_capability']}, mkldnn bf16 {env['mkldnn_bf16_supported']}, "
          f"load average {env['load_average_1m']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
