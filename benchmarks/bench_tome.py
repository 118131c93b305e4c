"""Token merging (ToMe) and int8: images/s and accuracy vs r, on a model trained here on real images.

1. Fashion-MNIST (Debian's ``fashion-mnist`` package, IDX files, 60k train / 10k test, 28x28 grayscale):
   an EVA-02 backbone (the quickstart tower: width 128, patch 8, depth ``--depth``) with a 10-class head is
   trained in fp32 for ``--steps`` steps on images upsampled to 64 px (an 8x8 token grid), then evaluated
   training-free with ToMe at each r (constant schedule) and with int8: test top-1, images/s (interleaved
   timing), embedding cosine to the unmerged fp32 model.
2. The quickstart's EVA-CLIP (``--quickstart-dir``, a finished ``openeva quickstart`` output): zero-shot and
   linear-probe metrics vs r on its held-out shape/color pairs.
3. EVA02-B-16 image encoding vs open_clip on the same random weights, fp32 (the fastest mode on a CPU without
   native bf16): openeva unmerged (checked identical), with ToMe at each r, with int8; cosine to unmerged.

    python benchmarks/bench_tome.py --steps 600 --threads 2 --quickstart-dir /tmp/qs/

Writes ``benchmarks/results/tome.json``, ``benchmarks/results/tome.md`` and ``benchmarks/results/tome.png``.
"""

from __future__ import annotations

import argparse
import copy
import gzip
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from _common import RESULTS_DIR, environment, interleaved_times, median, write_json

FMNIST = Path("/usr/share/datasets/fashion-mnist")


def read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def fmnist_tensors(split: str, size: int, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    prefix = "train" if split == "train" else "t10k"
    x = torch.from_numpy(read_idx(FMNIST / f"{prefix}-images-idx3-ubyte.gz")[:limit].copy()).float().div_(255)
    y = torch.from_numpy(read_idx(FMNIST / f"{prefix}-labels-idx1-ubyte.gz")[:limit].copy()).long()
    x = F.interpolate(x[:, None], size=(size, size), mode="bilinear", align_corners=False)  # (N, 1, S, S)
    return ((x - 0.2860) / 0.3530).expand(-1, 3, -1, -1).contiguous(), y  # (N, 3, S, S)


def train_fmnist(depth: int, steps: int, batch: int, size: int, seed: int, limit: int):
    import openeva

    torch.manual_seed(seed)
    model = openeva.create_model("eva02_quickstart_patch8_64", num_classes=10, depth=depth, img_size=size)
    x, y = fmnist_tensors("train", size, limit)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.1)
    g = torch.Generator().manual_seed(seed)
    model.train()
    start, losses = time.perf_counter(), []
    for step in range(steps):
        idx = torch.randint(0, len(x), (batch,), generator=g)
        xb = x[idx]
        shift = torch.randint(-4, 5, (2,), generator=g).tolist()  # small translation augmentation
        xb = torch.roll(xb, shifts=shift, dims=(2, 3))
        loss = F.cross_entropy(model(xb), y[idx], label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % 10 == 0:
            print(f"  fmnist step {step}/{steps} loss {loss.item():.3f}", file=sys.stderr, flush=True)
    return model.eval(), {"steps": steps, "batch": batch, "train_s": time.perf_counter() - start,
                          "final_loss": float(np.mean(losses[-20:]))}


@torch.inference_mode()
def accuracy_and_embed(model, x, y, batch: int = 500):
    correct, feats = 0, []
    for i in range(0, len(x), batch):
        xb = x[i:i + batch]
        correct += (model(xb).argmax(-1) == y[i:i + batch]).sum().item()
        tokens = model.forward_features(xb)
        feats.append(tokens[:, 0])  # CLS token: an embedding to compare with the unmerged model's
    return correct / len(x), torch.cat(feats)


def variants(model, rs, int8: bool = True) -> dict:
    import openeva

    out = {}
    for r in rs:
        out[f"tome r={r}" if r else "fp32"] = openeva.apply_tome(copy.deepcopy(model), r)
    if int8:
        out["int8"] = openeva.quantize_int8(copy.deepcopy(model))
        best = max(rs)
        out[f"int8 + tome r={best}"] = openeva.apply_tome(openeva.quantize_int8(copy.deepcopy(model)), best)
    return out


def speed(models: dict, images: torch.Tensor, repeats: int, fn=lambda m, x: m(x)) -> dict[str, float]:
    with torch.inference_mode():
        times = interleaved_times({k: (lambda m=m: fn(m, images)) for k, m in models.items()}, repeats)
    return {k: images.shape[0] / median(v) for k, v in times.items()}


def bench_fmnist(args) -> dict:
    model, train_info = train_fmnist(args.depth, args.steps, args.batch, args.size, args.seed, args.train_samples)
    x, y = fmnist_tensors("test", args.size, args.test_samples)
    models = variants(model, args.rs)
    rows, ref = {}, None
    for name, m in models.items():
        acc, emb = accuracy_and_embed(m, x, y)
        if ref is None:
            ref = emb
        rows[name] = {"top1": acc, "cls_cosine_to_fp32": F.cosine_similarity(emb, ref).mean().item()}
        print(f"  fmnist {name}: top1 {acc:.4f}", file=sys.stderr, flush=True)
    ips = speed(models, x[: args.speed_batch], args.repeats)
    for name in rows:
        rows[name]["images_per_s"] = ips[name]
        rows[name]["speedup"] = ips[name] / ips["fp32"]
    grid = args.size // 8
    return {"train": train_info, "model": f"eva02_quickstart_patch8_64 depth={args.depth} img={args.size} "
            f"({grid * grid} patches)", "test_samples": len(x), "speed_batch": args.speed_batch, "rows": rows}


def bench_quickstart(args) -> dict | None:
    qs = Path(args.quickstart_dir) if args.quickstart_dir else None
    if qs is None or not (qs / "evaclip" / "final").exists():
        return None
    import openeva
    from openeva.quickstart import evaluation

    model = openeva.create_model(str(qs / "evaclip" / "final")).eval()
    spec = model.spec
    tok = openeva.get_tokenizer(str(qs / "evaclip" / "final"))
    sets = evaluation.prepare_eval_sets(1000, 1000, 500, model.visual.cfg.img_size[0], spec.mean, spec.std)
    models = variants(model, args.rs)
    rows = {}
    for name, m in models.items():
        rows[name] = evaluation.evaluate_clip(m, tok, sets)
        print(f"  quickstart {name}: {rows[name]}", file=sys.stderr, flush=True)
    images = torch.stack([sets.heldout[i][0] for i in range(args.speed_batch)])
    ips = speed(models, images, args.repeats, fn=lambda m, im: m.encode_image(im))
    for name in rows:
        rows[name] = {"metrics": rows[name], "images_per_s": ips[name], "speedup": ips[name] / ips["fp32"]}
    return {"model": "EVA02-quickstart (EVA-CLIP stage)", "dir": str(qs), "rows": rows}


def bench_b16(args) -> dict:
    import open_clip

    import openeva
    from _common import open_clip_to_openeva, quiet_open_clip, randomize_

    quiet_open_clip()
    torch.manual_seed(0)
    theirs = randomize_(open_clip.create_model("EVA02-B-16", pretrained=None), 0).eval()
    ours = open_clip_to_openeva(theirs, "EVA02-B-16").eval()
    models = {"open_clip": theirs, **variants(ours, args.b16_rs)}
    images = torch.randn(args.b16_batch, 3, 224, 224)
    with torch.inference_mode():
        ref = theirs.encode_image(images)
        embs = {k: m.encode_image(images) for k, m in models.items()}
    ips = speed(models, images, args.repeats, fn=lambda m, im: m.encode_image(im))
    rows = {k: {"images_per_s": ips[k], "vs_open_clip": ips[k] / ips["open_clip"],
                "cosine_to_open_clip": F.cosine_similarity(embs[k], ref).mean().item(),
                "max_abs_diff": (embs[k] - ref).abs().max().item()} for k in models}
    return {"model": "EVA02-B-16 (random weights, 196 patches, 12 blocks)", "batch": args.b16_batch, "rows": rows}


def table(report: dict) -> str:
    lines = []
    f = report.get("fmnist")
    if f:
        lines += [f"### Fashion-MNIST, {f['model']}, trained here {f['train']['steps']} steps "
                  f"({f['train']['train_s']:.0f} s), {f['test_samples']} test images", "",
                  "| variant | top-1 | CLS cosine to fp32 | images/s | speedup |", "|---|---|---|---|---|"]
        for k, r in f["rows"].items():
            lines.append(f"| {k} | {100 * r['top1']:.2f} | {r['cls_cosine_to_fp32']:.4f} | "
                         f"{r['images_per_s']:.0f} | {r['speedup']:.2f}x |")
        lines.append("")
    q = report.get("quickstart")
    if q:
        keys = ["zeroshot_pair_top1", "zeroshot_shape_top1", "linear_probe_shape_top1"]
        present = [k for k in keys if k in next(iter(q["rows"].values()))["metrics"]]
        lines += [f"### {q['model']}", "", "| variant | " + " | ".join(present) + " | images/s | speedup |",
                  "|---|" + "---|" * (len(present) + 2)]
        for k, r in q["rows"].items():
            vals = " | ".join(f"{100 * r['metrics'][m]:.1f}" for m in present)
            lines.append(f"| {k} | {vals} | {r['images_per_s']:.0f} | {r['speedup']:.2f}x |")
        lines.append("")
    b = report.get("b16")
    if b:
        lines += [f"### {b['model']}, batch {b['batch']}, fp32", "",
                  "| variant | images/s | vs open_clip | cosine to open_clip |", "|---|---|---|---|"]
        for k, r in b["rows"].items():
            lines.append(f"| {k} | {r['images_per_s']:.2f} | {r['vs_open_clip']:.2f}x | "
                         f"{r['cosine_to_open_clip']:.4f} |")
    env = report["environment"]
    lines += ["", f"CPU capability {env['torch_cpu_capability']}, mkldnn bf16 {env['mkldnn_bf16']}, "
              f"{env['threads']} threads, load average {env['load_average_1m']} (shared machine)."]
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    f = report.get("fmnist")
    if not f:
        return
    fig, ax = plt.subplots(figsize=(5, 3.5))
    pts = [(r["speedup"], 100 * r["top1"], k) for k, r in f["rows"].items() if k.startswith(("fp32", "tome"))]
    ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label="ToMe (r per block)")
    for s, a, k in pts:
        ax.annotate(k.replace("tome ", ""), (s, a), fontsize=7, xytext=(3, 3), textcoords="offset points")
    other = [(r["speedup"], 100 * r["top1"], k) for k, r in f["rows"].items() if k.startswith("int8")]
    ax.plot([p[0] for p in other], [p[1] for p in other], "s", label="int8 (+ToMe)")
    ax.set_xlabel("speedup vs fp32 unmerged")
    ax.set_ylabel("Fashion-MNIST top-1 (%)")
    ax.set_title("EVA-02 + token merging (RoPE-aware), CPU fp32")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--depth", type=int, default=6)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rs", default="0,2,4,6,8,10")
    p.add_argument("--b16-rs", default="0,8,12,16")
    p.add_argument("--b16-batch", type=int, default=8)
    p.add_argument("--test-samples", type=int, default=10000)
    p.add_argument("--train-samples", type=int, default=60000)
    p.add_argument("--speed-batch", type=int, default=256)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quickstart-dir", default=None)
    p.add_argument("--skip", default="", help="comma list of parts to skip: fmnist,quickstart,b16")
    p.add_argument("--out", default=str(RESULTS_DIR / "tome.json"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    args.rs = [int(v) for v in args.rs.split(",")]
    args.b16_rs = [int(v) for v in args.b16_rs.split(",")]
    skip = set(filter(None, args.skip.split(",")))
    from openeva.hardware import cpu_capability

    report = {"environment": {**environment(), "mkldnn_bf16": cpu_capability()["mkldnn_bf16"]},
              "args": {k: v for k, v in vars(args).items()}}
    if "fmnist" not in skip:
        report["fmnist"] = bench_fmnist(args)
    if "quickstart" not in skip:
        report["quickstart"] = bench_quickstart(args)
    if "b16" not in skip:
        report["b16"] = bench_b16(args)
    report["environment"]["load_average_1m_end"] = round(__import__("os").getloadavg()[0], 2)
    out = write_json(args.out, report)
    text = table(report)
    Path(out).with_suffix(".md").write_text(text + "\n")
    plot(report, Path(out).with_suffix(".png"))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
