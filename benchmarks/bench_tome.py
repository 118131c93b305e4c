"""Token merging (ToMe) and int8: images/s and accuracy vs r, on a model trained here on real images.

1. Fashion-MNIST (Debian's ``fashion-mnist`` package, IDX files, 60k train / 10k test, 28x28 grayscale):
   an EVA-02 backbone (the quickstart tower's width 128, with ``--depth`` blocks and ``--patch`` patches on
   ``--size`` px images; ``--size 224 --patch 16 --depth 12`` is EVA02-B-16's token geometry: 197 tokens
   through 12 blocks) with a 10-class head is trained for ``--steps`` steps, then evaluated training-free with
   ToMe at each r (constant schedule) and with int8: test top-1, images/s (interleaved timing), embedding
   cosine to the unmerged model.
2. The quickstart's EVA-CLIP (``--quickstart-dir``, a finished ``openeva quickstart`` output): zero-shot and
   linear-probe metrics vs r on its held-out shape/color pairs.
3. EVA02-B-16 image encoding vs open_clip on the same random weights, both in fp32 and in bf16 autocast:
   openeva unmerged (checked identical in fp32), with ToMe at each r (in ``--precision``), with int8 (fp32
   around the int8 layers); each row's ratio against open_clip in ITS fastest precision on this CPU.

``--precision auto`` (the default) is resolved by ``openeva.runtime.resolve_precision``: bf16 autocast where
the CPU has native bf16 (AVX-512 BF16, AMX), fp32 elsewhere; training, accuracy and speed of parts 1-2 use it.

    python benchmarks/bench_tome.py --steps 600 --threads 2 --quickstart-dir /tmp/qs/

Writes ``benchmarks/results/tome.json``, ``benchmarks/results/tome.md`` and ``benchmarks/results/tome.png``.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from _common import RESULTS_DIR, environment, interleaved_times, median, write_json

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
from openeva.data.idx import read_idx  # noqa: E402
from openeva.runtime import autocast  # noqa: E402

FMNIST = Path("/usr/share/datasets/fashion-mnist")
PRECISION = "fp32"  # set in main() from --precision (resolved by the hardware)


def fmnist_tensors(split: str, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised images at their own 28 px, (N, 1, 28, 28), and labels: resized per batch (:func:`at_size`),
    since 60k images at 224 px would be 36 GB of float32."""
    prefix = "train" if split == "train" else "t10k"
    x = torch.from_numpy(read_idx(FMNIST / f"{prefix}-images-idx3-ubyte.gz")[:limit].copy()).float().div_(255)
    y = torch.from_numpy(read_idx(FMNIST / f"{prefix}-labels-idx1-ubyte.gz")[:limit].copy()).long()
    return ((x - 0.2860) / 0.3530)[:, None], y


def at_size(x: torch.Tensor, size: int) -> torch.Tensor:
    """(B, 1, 28, 28) -> (B, 3, size, size), bilinear."""
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x.expand(-1, 3, -1, -1).contiguous()


def train_fmnist(depth: int, steps: int, batch: int, size: int, seed: int, limit: int, patch: int = 8):
    import openeva

    torch.manual_seed(seed)
    model = openeva.create_model("eva02_quickstart_patch8_64", num_classes=10, depth=depth, img_size=size,
                                 patch_size=patch, rope_ref_grid=(size // patch, size // patch))
    x, y = fmnist_tensors("train", limit)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.1)
    g = torch.Generator().manual_seed(seed)
    model.train()
    start, losses = time.perf_counter(), []
    for step in range(steps):
        idx = torch.randint(0, len(x), (batch,), generator=g)
        xb = at_size(x[idx], size)
        shift = torch.randint(-4, 5, (2,), generator=g).tolist()  # small translation augmentation
        xb = torch.roll(xb, shifts=shift, dims=(2, 3))
        with autocast(PRECISION, "cpu"):
            loss = F.cross_entropy(model(xb).float(), y[idx], label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % 10 == 0:
            print(f"  fmnist step {step}/{steps} loss {loss.item():.3f}", file=sys.stderr, flush=True)
    return model.eval(), {"steps": steps, "batch": batch, "train_s": time.perf_counter() - start,
                          "final_loss": float(np.mean(losses[-20:]))}


def _precision_of(name: str) -> str:
    return "fp32" if name.startswith("int8") else PRECISION  # int8 layers take fp32 activations


@torch.inference_mode()
def accuracy_and_embed(model, x, y, precision: str, size: int, batch: int = 250):
    correct, feats = 0, []
    for i in range(0, len(x), batch):
        xb = at_size(x[i:i + batch], size)
        with autocast(precision, "cpu"):
            correct += (model(xb).argmax(-1) == y[i:i + batch]).sum().item()
            pooled = model.forward_head(model.forward_features(xb), pre_logits=True)  # what eval / embed use
        feats.append(pooled.float())
    return correct / len(x), torch.cat(feats)


def variants(model, rs, int8_rs=None, int8: bool = True) -> dict:
    """Copies of ``model``: ToMe at each r, int8 alone, and int8 with ToMe at each of ``int8_rs`` (default the
    largest r)."""
    import openeva

    out = {}
    for r in rs:
        out[f"tome r={r}" if r else "unmerged"] = openeva.apply_tome(copy.deepcopy(model), r)
    if int8:
        out["int8"] = openeva.quantize_int8(copy.deepcopy(model))
        for r in int8_rs or [max(rs)]:
            out[f"int8 + tome r={r}"] = openeva.apply_tome(openeva.quantize_int8(copy.deepcopy(model)), r)
    return out


def speed(models: dict, images: torch.Tensor, repeats: int, fn=lambda m, x: m(x), precisions=None) -> dict[str, float]:
    """Images/s of each model, interleaved; ``precisions`` maps a name to its precision (default by name)."""
    precisions = precisions or {k: _precision_of(k) for k in models}

    def call(m, p):
        with autocast(p, "cpu"):
            return fn(m, images)

    with torch.inference_mode():
        times = interleaved_times({k: (lambda m=m, p=precisions[k]: call(m, p)) for k, m in models.items()},
                                  repeats)
    return {k: images.shape[0] / median(v) for k, v in times.items()}


def bench_fmnist(args) -> dict:
    model, train_info = train_fmnist(args.depth, args.steps, args.batch, args.size, args.seed, args.train_samples,
                                     args.patch)
    x, y = fmnist_tensors("test", args.test_samples)
    models = variants(model, args.rs, args.int8_rs)
    rows, ref = {}, None
    for name, m in models.items():
        acc, emb = accuracy_and_embed(m, x, y, _precision_of(name), args.size)
        if ref is None:
            ref = emb
        rows[name] = {"top1": acc, "cls_cosine_to_fp32": F.cosine_similarity(emb, ref).mean().item()}
        print(f"  fmnist {name}: top1 {acc:.4f}", file=sys.stderr, flush=True)
    ips = speed(models, at_size(x[: args.speed_batch], args.size), args.repeats)
    for name in rows:
        rows[name]["images_per_s"] = ips[name]
        rows[name]["speedup"] = ips[name] / ips["unmerged"]
    grid = args.size // args.patch
    return {"train": train_info, "model": f"EVA-02 width 128, depth {args.depth}, patch {args.patch}, {args.size} px "
            f"({grid * grid} patches)", "precision": PRECISION, "test_samples": len(x),
            "speed_batch": args.speed_batch, "rows": rows}


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
    models = variants(model, args.rs, args.int8_rs)
    rows = {}
    for name, m in models.items():
        rows[name] = evaluation.evaluate_clip(m, tok, sets, precision=_precision_of(name))
        print(f"  quickstart {name}: {rows[name]}", file=sys.stderr, flush=True)
    images = sets.heldout.images(slice(0, args.speed_batch))  # (B, 3, H, W)
    ips = speed(models, images, args.repeats, fn=lambda m, im: m.encode_image(im))
    for name in rows:
        rows[name] = {"metrics": rows[name], "images_per_s": ips[name], "speedup": ips[name] / ips["unmerged"]}
    return {"model": "EVA02-quickstart (EVA-CLIP stage)", "dir": str(qs), "precision": PRECISION, "rows": rows}


def bench_b16(args) -> dict:
    """EVA02-B-16 ``encode_image``: open_clip and openeva in fp32 and bf16 autocast, ToMe in ``PRECISION``, int8."""
    import open_clip

    from _common import open_clip_to_openeva, quiet_open_clip, randomize_

    quiet_open_clip()
    torch.manual_seed(0)
    theirs = randomize_(open_clip.create_model("EVA02-B-16", pretrained=None), 0).eval()
    ours = open_clip_to_openeva(theirs, "EVA02-B-16").eval()
    merged = variants(ours, [r for r in args.b16_rs if r], args.int8_rs, int8=True)
    models = {"open_clip fp32": theirs, "open_clip bf16": theirs, "openeva fp32": ours, "openeva bf16": ours,
              **{f"openeva {k}": m for k, m in merged.items()}}
    precisions = {k: ("bf16" if k.endswith("bf16") else "fp32" if "int8" in k or k.endswith("fp32") else PRECISION)
                  for k in models}
    images = torch.randn(args.b16_batch, 3, 224, 224)
    with torch.inference_mode():
        embs = {}
        for k, m in models.items():
            with autocast(precisions[k], "cpu"):
                embs[k] = m.encode_image(images).float()
    ips = speed(models, images, args.repeats, fn=lambda m, im: m.encode_image(im), precisions=precisions)
    fastest = max(("open_clip fp32", "open_clip bf16"), key=ips.get)
    rows = {k: {"precision": precisions[k], "images_per_s": ips[k], "vs_open_clip_fastest": ips[k] / ips[fastest],
                "cosine_to_open_clip": F.cosine_similarity(embs[k], embs[f"open_clip {precisions[k]}"]).mean().item(),
                "max_abs_diff": (embs[k] - embs[f"open_clip {precisions[k]}"]).abs().max().item()} for k in models}
    return {"model": "EVA02-B-16 (random weights, 196 patches, 12 blocks)", "batch": args.b16_batch,
            "open_clip_fastest": fastest, "rows": rows}


def table(report: dict) -> str:
    lines = []
    f = report.get("fmnist")
    if f:
        lines += [f"### Fashion-MNIST, {f['model']}, trained here {f['train']['steps']} steps "
                  f"({f['train']['train_s']:.0f} s), {f['test_samples']} test images, {f.get('precision', 'fp32')} "
                  "(int8 rows: fp32 around int8)", "",
                  "| variant | top-1 | embedding cosine to unmerged | images/s | speedup |", "|---|---|---|---|---|"]
        for k, r in f["rows"].items():
            lines.append(f"| {k} | {100 * r['top1']:.2f} | {r['cls_cosine_to_fp32']:.4f} | "
                         f"{r['images_per_s']:.0f} | {r['speedup']:.2f}x |")
        lines.append("")
    q = report.get("quickstart")
    if q:
        keys = ["zeroshot_pair_acc1", "zeroshot_shape_acc1", "zeroshot_color_acc1", "retrieval_i2t_r1",
                "linear_probe_shape_acc1"]  # the names evaluation.evaluate_clip returns
        present = [k for k in keys if k in next(iter(q["rows"].values()))["metrics"]]
        if not present:
            raise KeyError(f"none of {keys} in the quickstart metrics; update the table's keys")
        lines += [f"### {q['model']}, {q.get('precision', 'fp32')}", "",
                  "| variant | " + " | ".join(present) + " | images/s | speedup |",
                  "|---|" + "---|" * (len(present) + 2)]
        for k, r in q["rows"].items():
            vals = " | ".join(f"{100 * r['metrics'][m]:.1f}" for m in present)
            lines.append(f"| {k} | {vals} | {r['images_per_s']:.0f} | {r['speedup']:.2f}x |")
        lines.append("")
    b = report.get("b16")
    if b:
        lines += [f"### {b['model']}, batch {b['batch']}; ratios against open_clip's fastest mode here "
                  f"({b['open_clip_fastest']})", "",
                  "| variant | precision | images/s | vs open_clip fastest | cosine to open_clip (same precision) |",
                  "|---|---|---|---|---|"]
        for k, r in b["rows"].items():
            lines.append(f"| {k} | {r['precision']} | {r['images_per_s']:.2f} | {r['vs_open_clip_fastest']:.2f}x | "
                         f"{r['cosine_to_open_clip']:.4f} |")
    env = report["environment"]
    lines += ["", f"CPU capability {env['torch_cpu_capability']}, mkldnn bf16 {env['mkldnn_bf16']}, "
              f"{env['threads']} threads, 1-min load average {env['load_average_1m']} at start, "
              f"{env.get('load_average_1m_end')} at end."]
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    f = report.get("fmnist")
    if not f:
        return
    fig, ax = plt.subplots(figsize=(5, 3.5))
    pts = [(r["speedup"], 100 * r["top1"], k) for k, r in f["rows"].items() if k.startswith(("unmerged", "tome"))]
    ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label="ToMe (r per block)")
    for s, a, k in pts:
        ax.annotate(k.replace("tome ", ""), (s, a), fontsize=7, xytext=(3, 3), textcoords="offset points")
    other = [(r["speedup"], 100 * r["top1"], k) for k, r in f["rows"].items() if k.startswith("int8")]
    ax.plot([p[0] for p in other], [p[1] for p in other], "s", label="int8 (+ToMe)")
    ax.set_xlabel(f"speedup vs unmerged ({f.get('precision', 'fp32')})")
    ax.set_ylabel("Fashion-MNIST top-1 (%)")
    ax.set_title(f"EVA-02 + token merging (RoPE-aware), {f['model'].split(', ', 1)[1]}", fontsize=8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--depth", type=int, default=6)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--patch", type=int, default=8)
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rs", default="0,2,4,6,8,10")
    p.add_argument("--b16-rs", default="0,8,12,16")
    p.add_argument("--int8-rs", default="", help="r values combined with int8 (default: the largest r)")
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
    global PRECISION
    from openeva.runtime import resolve_precision

    PRECISION, why = resolve_precision(args.precision, "cpu")
    print(f"precision {args.precision} -> {PRECISION}: {why}", file=sys.stderr)
    args.rs = [int(v) for v in args.rs.split(",")]
    args.b16_rs = [int(v) for v in args.b16_rs.split(",")]
    args.int8_rs = [int(v) for v in args.int8_rs.split(",") if v.strip()] or None
    skip = set(filter(None, args.skip.split(",")))
    from openeva.runtime import cpu_capability

    report = {"environment": {**environment(), "mkldnn_bf16": cpu_capability()["mkldnn_bf16"], "precision": PRECISION},
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
