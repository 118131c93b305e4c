"""The README's segmentation picture and refinement table: a small EVA-CLIP trained here (fp32, CPU, the recipe of
tests/dense/test_dense_quality.py) segments held-out synthetic scenes by colour with no segmentation training.

    .venv/bin/python benchmarks/make_dense_pictures.py --steps 200 --threads 2

Writes ``docs/segment_overlay.png`` (image | truth | prediction, 3 scenes) and ``benchmarks/results/
dense_quality.json`` (mIoU / pixel accuracy of every method x refinement on 48 scenes; foreground pixels only, and
with background through an "an empty background" prompt).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from _common import RESULTS_DIR, environment, write_json

ROOT = Path(__file__).resolve().parent.parent
MEAN, STD = (0.48, 0.46, 0.41), (0.27, 0.26, 0.28)


def tensor(img):
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return (x - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)


def train_scene_clip(steps: int, batch: int, size: int = 32, patch: int = 4):
    from openeva.data.synthetic import ShapeScenes
    from openeva.losses.contrastive import ClipLoss
    from openeva.models.clip import CLIP, CLIPConfig
    from openeva.models.text import TextConfig
    from openeva.models.tokenizer import ClipTokenizer
    from openeva.models.vit import ViTConfig

    torch.manual_seed(0)
    vision = ViTConfig(embed_dim=64, depth=3, num_heads=2, mlp_hidden=128, patch_size=patch, img_size=size,
                       mlp_norm=True, attn_norm=True, global_pool="token", num_classes=32,
                       rope_ref_grid=(size // patch,) * 2)
    model = CLIP(CLIPConfig(embed_dim=32, vision=vision,
                            text=TextConfig(width=64, heads=2, layers=2, embed_dim=32, context_length=20)))
    tok = ClipTokenizer(context_length=20)
    data = ShapeScenes(steps * batch, image_size=size, seed=0, min_shapes=0, max_shapes=3, sizes=("small", "large"))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    loss_fn = ClipLoss()
    for step in range(steps):
        idx = range(step * batch, (step + 1) * batch)
        for g in opt.param_groups:
            g["lr"] = 2e-3 * min(1.0, (step + 1) / 20) * 0.5 * (1 + np.cos(np.pi * step / steps))
        loss = loss_fn(*model(torch.stack([tensor(data[i][0]) for i in idx]), tok([data.caption(i) for i in idx])))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), tok


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from openeva.data.synthetic import COLORS, SHAPES, ShapeScenes
    from openeva.dense.segment import METHODS, REFINEMENTS, DenseOptions
    from openeva.dense.segmenter import OpenVocabSegmenter, SegmentationResult, overlay
    from openeva.eval.segmentation import evaluate_segmentation

    t0 = time.time()
    model, tok = train_scene_clip(args.steps, args.batch)
    train_s = time.time() - t0
    names, templates = list(COLORS), [f"a {{c}} {s}" for s in SHAPES]
    scenes = ShapeScenes(48, image_size=32, seed=1, min_shapes=2, max_shapes=3, sizes=("small", "large"))
    samples = [scenes[i] for i in range(len(scenes))]
    fg_only = [(img, np.where(m == 0, 255, m).astype(np.uint8)) for img, m in samples]
    rows = []
    for method in METHODS:
        for refine in REFINEMENTS:
            opts = DenseOptions(method=method, refine=refine)
            fg = evaluate_segmentation(model, tok, fg_only, names, templates, options=opts, mean=MEAN, std=STD)
            bg = evaluate_segmentation(model, tok, samples, names, templates, options=opts, mean=MEAN, std=STD,
                                       background=("an empty background",))
            rows.append({"method": method, "refine": refine, "foreground_only": fg["metrics"],
                         "with_background_prompt": bg["metrics"]})
            print(method, refine, {k: round(v, 3) for k, v in fg["metrics"].items()},
                  {k: round(v, 3) for k, v in bg["metrics"].items()}, flush=True)
    conf_bg = np.mean([(m == 0).mean() for _, m in samples])
    write_json(RESULTS_DIR / "dense_quality.json", {
        "benchmark": "dense_quality", "train_steps": args.steps, "train_batch": args.batch, "train_s": train_s,
        "scenes": len(samples), "background_fraction": float(conf_bg), "rows": rows, "environment": environment(),
        "note": "shared 2-core machine; quality numbers do not depend on load"})

    seg = OpenVocabSegmenter(model, tok, templates=templates, mean=MEAN, std=STD)
    tiles = []
    for i in range(3):
        img, truth = samples[i]
        big = img.resize((128, 128), Image.NEAREST)
        res = seg.segment(img, names)
        pred = np.where(truth > 0, res.labels, 0).astype(np.uint8)  # foreground pixels, as scored
        up = lambda a: np.asarray(Image.fromarray(a).resize((128, 128), Image.NEAREST))  # noqa: E731
        t_img = overlay(SegmentationResult(big, up(truth), names, res.scores), alpha=0.8, legend=i == 2)
        p_img = overlay(SegmentationResult(big, up(pred), names, res.scores), alpha=0.8, legend=False)
        tiles.append((big, t_img, p_img))
    w = 128 * 3 + (tiles[2][1].width - 128) + 8
    canvas = Image.new("RGB", (w, 3 * 132), (255, 255, 255))
    for r, (a, b, c) in enumerate(tiles):
        canvas.paste(a, (0, r * 132))
        canvas.paste(c, (132, r * 132))
        canvas.paste(b.crop((0, 0, 128, 128)), (264, r * 132))
    legend = tiles[2][1].crop((128, 0, tiles[2][1].width, tiles[2][1].height))
    canvas.paste(legend, (396, 0))
    out = ROOT / "docs" / "segment_overlay.png"
    out.parent.mkdir(exist_ok=True)
    canvas.save(out, optimize=True)
    print(f"wrote {out} (image | prediction | truth); trained in {train_s:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
