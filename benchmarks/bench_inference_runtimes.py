"""Image-encoder inference on the CPU: PyTorch eager vs ONNX Runtime vs torch.compile, same weights, fp32.

The model (random weights) is exported with ``openeva.export.export_onnx`` (parity checked) and compiled with
``torch.compile`` (default mode; the compile time is reported separately); then the three take turns within every
repeat (``_common.interleaved_times``) so that contention from other processes hits all alike.

    python benchmarks/bench_inference_runtimes.py --model EVA02-B-16 --batch 4 --repeats 5 --threads 2

Writes ``benchmarks/results/inference_runtimes.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

import torch

from _common import RESULTS_DIR, environment, interleaved_times, median, randomize_, write_json


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="EVA02-B-16")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--skip-compile", action="store_true")
    p.add_argument("--out", default=str(RESULTS_DIR / "inference_runtimes.json"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    import openeva
    from openeva.export import OnnxClip, export_onnx
    from openeva.runtime import cpu_capability

    torch.manual_seed(0)
    model = randomize_(openeva.create_model(args.model)).eval()
    H, W = (model.visual if hasattr(model, "visual") else model).cfg.img_size
    images = torch.randn(args.batch, 3, H, W)
    fns, notes = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        manifest = export_onnx(model, tmp)
        notes["onnx_export_s"] = time.perf_counter() - start
        notes["onnx_parity"] = manifest["parity"]
        runtime = OnnxClip(tmp, threads=args.threads)
        fns["pytorch eager"] = lambda: model.encode_image(images)
        fns["onnxruntime"] = lambda: runtime.encode_image(images)
        if not args.skip_compile:
            compiled = torch.compile(model.encode_image)
            start = time.perf_counter()
            with torch.inference_mode():
                ref, out = model.encode_image(images), compiled(images)
            notes["compile_first_call_s"] = time.perf_counter() - start
            notes["compile_max_abs_diff"] = (ref - out).abs().max().item()
            fns["torch.compile"] = lambda: compiled(images)
        with torch.inference_mode():
            times = interleaved_times(fns, args.repeats)
    ips = {k: args.batch / median(v) for k, v in times.items()}
    rows = {k: {"images_per_s": v, "vs_eager": v / ips["pytorch eager"]} for k, v in ips.items()}
    report = {"environment": {**environment(), **cpu_capability()}, "model": args.model, "batch": args.batch,
              "rows": rows, "notes": notes}
    write_json(args.out, report)
    print(f"| {args.model}, batch {args.batch}, fp32 | images/s | vs eager |\n|---|---|---|")
    for k, r in rows.items():
        print(f"| {k} | {r['images_per_s']:.2f} | {r['vs_eager']:.2f}x |")
    print(f"\n{notes}\nCPU {report['environment']['torch_cpu_capability']}, load {report['environment']['load_average_1m']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
