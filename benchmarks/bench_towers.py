"""Vision towers compared as small CLIPs trained the same way on Fashion-MNIST's class-name captions.

For each timm family the issue names (ConvNeXt, Swin, SwinV2, VOLO, FocalNet, GC ViT, Next-ViT, ViTamin) and for
openeva's own ViTs (the EVA-02 tower; an OpenAI-style plain ViT and a SigLIP-style 'map'-pooled ViT, which also
give the accuracy cost of token merging), one small CLIP is built by openeva (``openeva.models.clip.CLIP``: a
``TimmTowerConfig`` or ``ViTConfig`` vision tower, the same 2-layer CLIP text tower) and trained for the same
number of steps, batch, learning-rate schedule and precision on Fashion-MNIST (Debian's ``dataset-fashion-mnist``,
IDX files read by ``openeva.data.idx``), then scored on held-out test images by text prompts.

**This is a supervised comparison of towers, not zero-shot transfer:** the captions are the training labels
("a photo of a {class name}."); each step scores every image against the captions of the 10 classes (the batch's
distinct captions, UniCL's form of the CLIP loss for label captions). Test accuracy = argmax over the Fashion-MNIST
prompt ensemble (``openeva.data.classnames``' templates) of the text embeddings.

Each timm family is its smallest timm variant, shrunk through timm's own constructor arguments so that every
vision tower is within 2x of the others' parameter count (registered here as timm models named ``fmnist_*``, so
openeva's timm tower builds them by name like any other). Next-ViT cannot be shrunk that far: timm's ``NextViT``
fixes its stage widths (96-1024 channels) in code, so its smallest form (depths 1-1-5-1) is 14.4M parameters; it
is trained and reported, flagged as outside the band. Images are 28 px upsampled to ``--size`` (32 by default:
hierarchical towers reduce it 32x to one cell; ViTamin's 16x stem leaves 2x2 tokens).

Throughput: training images/s over the run (after the first step), encoding images/s over the test pass (eval
mode, same precision). On the ViT towers, ToMe at the default r (``apply_tome(model, "auto")``) is scored too,
with its encoding speed-up over the unmerged tower (interleaved timing on one batch).

The machine is 2 shared CPU cores: keep runs small and niced, e.g.

    nice -n 10 .venv/bin/python benchmarks/bench_towers.py --steps 150 --batch 64 --threads 2

Writes ``benchmarks/results/towers.json`` and ``benchmarks/results/towers.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

from _common import RESULTS_DIR, environment, interleaved_times, median, write_json

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

FMNIST = Path("/usr/share/datasets/fashion-mnist")
TRAIN_TEMPLATE = "a photo of a {c}."
EMBED = 128
NEXTVIT_NOTE = ("timm's NextViT fixes its stage widths (96, 192-256, 384-512, 768-1024 channels) in code; its "
                "smallest form (depths 1-1-5-1) has 14.4M parameters, outside the 2x band of the others")


# --------------------------------------------------------------------------------------- towers as data
def register_timm_variants(size: int) -> dict[str, str]:
    """Shrunk timm variants under ``fmnist_*`` names -> {name: how it was shrunk}; built by timm's classes."""
    import timm
    from timm.models import register_model
    from timm.models.focalnet import FocalNet
    from timm.models.gcvit import GlobalContextVit
    from timm.models.volo import VOLO

    variants = {
        "fmnist_convnext": ("convnext_atto (as published: dims 40-320, depths 2-2-6-2)",
                            lambda **kw: timm.create_model("convnext_atto", **kw)),
        "fmnist_swin": ("swin_tiny_patch4_window7_224 at embed_dim 32, heads 1-2-4-8, window 4",
                        lambda **kw: timm.create_model("swin_tiny_patch4_window7_224", embed_dim=32,
                                                       num_heads=(1, 2, 4, 8), window_size=4, img_size=size, **kw)),
        "fmnist_swinv2": ("swinv2_tiny_window8_256 at embed_dim 32, heads 1-2-4-8, window 4",
                          lambda **kw: timm.create_model("swinv2_tiny_window8_256", embed_dim=32,
                                                         num_heads=(1, 2, 4, 8), window_size=4, img_size=size, **kw)),
        "fmnist_volo": ("VOLO-D1 layout at layers 2-2-4-2, dims 96-192, heads 3-6, patch 4",
                        lambda **kw: VOLO(layers=(2, 2, 4, 2), img_size=size, patch_size=4, embed_dims=(96, 192, 192, 192),
                                          num_heads=(3, 6, 6, 6), use_aux_head=False, **kw)),
        "fmnist_focalnet": ("focalnet_tiny_srf at embed_dim 32",
                            lambda **kw: FocalNet(embed_dim=32, depths=(2, 2, 6, 2), **kw)),
        "fmnist_gcvit": ("gcvit_xxtiny at embed_dim 32, heads 1-2-4-8",
                         lambda **kw: GlobalContextVit(depths=(2, 2, 6, 2), num_heads=(1, 2, 4, 8), embed_dim=32,
                                                       img_size=size, **kw)),
        "fmnist_nextvit": ("nextvit_small at depths 1-1-5-1 (the smallest its code allows)",
                           lambda **kw: timm.create_model("nextvit_small", depths=(1, 1, 5, 1), **kw)),
        "fmnist_vitamin": ("vitamin_small_224 at depth 2 (its conv stem fixes width 384)",
                           lambda **kw: timm.create_model("vitamin_small_224", depth=2, img_size=size, **kw)),
    }
    out = {}
    for name, (how, build) in variants.items():
        if not timm.is_model(name):
            def fn(pretrained=False, _build=build, **kw):
                kw.pop("pretrained_cfg", None)
                kw.pop("pretrained_cfg_overlay", None)
                kw.pop("cache_dir", None)
                return _build(**kw)

            fn.__name__ = name
            fn.__module__ = __name__
            register_model(fn)
        out[name] = how
    return out


TIMM_FAMILIES = {  # tower label -> (family, registered timm name)
    "ConvNeXt": ("ConvNeXt", "fmnist_convnext"), "Swin": ("Swin", "fmnist_swin"),
    "SwinV2": ("SwinV2", "fmnist_swinv2"), "VOLO": ("VOLO", "fmnist_volo"),
    "FocalNet": ("FocalNet", "fmnist_focalnet"), "GC ViT": ("GC ViT", "fmnist_gcvit"),
    "Next-ViT": ("Next-ViT", "fmnist_nextvit"), "ViTamin": ("ViTamin", "fmnist_vitamin"),
}
VIT_TOWERS = ("EVA-02", "ViT", "SigLIP-ViT")
ALL_TOWERS = ("EVA-02", *TIMM_FAMILIES, "ViT", "SigLIP-ViT")  # the towers first, the ToMe ViTs last


def vision_config(tower: str, size: int, shrunk: dict[str, str]):
    """(config, description) of a tower at ``size`` px."""
    from openeva.models.timm_tower import TimmTowerConfig
    from openeva.models.vit import ViTConfig
    from openeva.models.zoo_openclip import openai_vision, siglip_vision

    patch = 4
    if tower == "EVA-02":  # the EVA-02 CLIP tower: RoPE, SwiGLU, sub-LN (attention and MLP), class token
        cfg = ViTConfig(embed_dim=192, depth=6, num_heads=3, mlp_hidden=512, patch_size=patch, img_size=size,
                        mlp_norm=True, attn_norm=True, rope_ref_grid=(size // patch,) * 2, global_pool="token",
                        num_classes=EMBED)
        return cfg, f"openeva EVAViT: EVA-02 CLIP tower, width 192, depth 6, patch {patch}"
    if tower == "ViT":  # open_clip's OpenAI-style ViT: class token, learned positions, ln_pre, QuickGELU
        cfg = openai_vision(192, 6, 3, 768, patch, size, EMBED, quick_gelu=True)
        return cfg, f"openeva EVAViT as open_clip's ViT (OpenAI-style), width 192, depth 6, patch {patch}"
    if tower == "SigLIP-ViT":  # SigLIP: no class token, attention ('map') pooling; a projection head added
        cfg = siglip_vision(patch, 192, 6, 3, 768, size, "gelu").replace(num_classes=EMBED)
        return cfg, f"openeva EVAViT as SigLIP's ViT (map pool, no class token), width 192, depth 6, patch {patch}"
    _, timm_name = TIMM_FAMILIES[tower]
    cfg = TimmTowerConfig(timm_name=timm_name, embed_dim=EMBED, img_size=size, pool="", proj="linear")
    return cfg, f"timm {shrunk[timm_name]}"


def build_clip(tower: str, size: int, shrunk: dict[str, str]):
    from openeva.models.clip import CLIP, CLIPConfig
    from openeva.models.text import TextConfig

    vision, how = vision_config(tower, size, shrunk)
    text = TextConfig(width=128, heads=2, layers=2, embed_dim=EMBED, context_length=16)
    return CLIP(CLIPConfig(embed_dim=EMBED, vision=vision, text=text)), how


# ---------------------------------------------------------------------------------------------- data
def fmnist(split: str, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    from openeva.data.idx import read_idx

    prefix = "train" if split == "train" else "t10k"
    x = torch.from_numpy(read_idx(FMNIST / f"{prefix}-images-idx3-ubyte.gz")[:limit].copy()).float().div_(255)
    y = torch.from_numpy(read_idx(FMNIST / f"{prefix}-labels-idx1-ubyte.gz")[:limit].copy()).long()
    return ((x - 0.2860) / 0.3530)[:, None], y


def at_size(x: torch.Tensor, size: int) -> torch.Tensor:
    """(B, 1, 28, 28) -> (B, 3, size, size)."""
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).expand(-1, 3, -1, -1).contiguous()


# ------------------------------------------------------------------------------------ train and score
def train(model, tokens, x, y, args, ctx) -> dict:
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    warm = max(1, args.steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, args.steps - warm))))
    g = torch.Generator().manual_seed(args.seed)
    model.train()
    losses, start = [], None
    for step in range(args.steps):
        if step == 1:
            start = time.perf_counter()  # the first step builds caches and kernels
        idx = torch.randint(0, len(x), (args.batch,), generator=g)
        images = at_size(x[idx], args.size)
        shift = torch.randint(-2, 3, (2,), generator=g).tolist()
        images = torch.roll(images, shifts=shift, dims=(2, 3))
        with ctx():
            img = F.normalize(model.encode_image(images).float(), dim=-1)  # (B, E)
            txt = F.normalize(model.encode_text(tokens).float(), dim=-1)  # (10, E): the distinct captions
            loss = F.cross_entropy(model.logit_scale.exp() * img @ txt.T, y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        losses.append(loss.item())
    seconds = time.perf_counter() - start if start else float("nan")
    return {"train_images_per_s": (args.steps - 1) * args.batch / seconds, "train_seconds": seconds,
            "loss_first": losses[0], "loss_last10": sum(losses[-10:]) / len(losses[-10:])}


@torch.inference_mode()
def classifier(model, tokenizer, classnames, templates, ctx) -> torch.Tensor:
    rows = []
    for c in classnames:
        with ctx():
            t = F.normalize(model.encode_text(tokenizer([tpl.format(c=c) for tpl in templates])).float(), dim=-1)
        rows.append(F.normalize(t.mean(dim=0), dim=-1))
    return torch.stack(rows)  # (10, E)


@torch.inference_mode()
def score(model, weights, x, y, args, ctx) -> dict:
    model.eval()
    correct, start = 0, time.perf_counter()
    for i in range(0, len(x), args.eval_batch):
        with ctx():
            img = F.normalize(model.encode_image(at_size(x[i:i + args.eval_batch], args.size)).float(), dim=-1)
        correct += (img @ weights.T).argmax(dim=-1).eq(y[i:i + args.eval_batch]).sum().item()
    seconds = time.perf_counter() - start
    return {"accuracy": correct / len(x), "encode_images_per_s": len(x) / seconds}


def run_tower(tower: str, data: dict, args, shrunk, ctx) -> dict:
    from openeva.models.tome import apply_tome, auto_r, token_geometry, tome_refusal

    torch.manual_seed(args.seed)
    model, how = build_clip(tower, args.size, shrunk)
    vision_m = sum(p.numel() for p in model.visual.parameters()) / 1e6
    row = {"tower": tower, "built_as": how, "vision_params_m": round(vision_m, 3),
           "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 3)}
    print(f"[{tower}] {how}: vision {vision_m:.2f}M", flush=True)
    row.update(train(model, data["train_tokens"], data["x"], data["y"], args, ctx))
    weights = classifier(model, data["tokenizer"], data["classnames"], data["templates"], ctx)
    row.update(score(model, weights, data["xt"], data["yt"], args, ctx))
    if tome_refusal(model) is None and auto_r(model) == 0:
        n, depth = token_geometry(model)
        row["tome_refusal"] = f"default r is 0: {n} patch tokens over {depth} blocks leave nothing to merge"
    elif tome_refusal(model) is None:
        row["tokens"], row["depth"] = token_geometry(model)
        row["tome"] = []
        batch = at_size(data["xt"][: args.eval_batch], args.size)
        for r in dict.fromkeys([auto_r(model), *args.extra_tome_r]):
            apply_tome(model, r)
            acc = score(model, weights, data["xt"], data["yt"], args, ctx)["accuracy"]
            apply_tome(model, 0)

            def plain(model=model):
                with torch.inference_mode(), ctx():
                    model.encode_image(batch)

            def merged(model=model, r=r):
                apply_tome(model, r)
                try:
                    plain()
                finally:
                    apply_tome(model, 0)

            times = interleaved_times({"plain": plain, "tome": merged}, args.repeats, warmup=1)
            row["tome"].append({"r": r, "auto": r == auto_r(model), "accuracy": acc,
                                "speedup": median(times["plain"]) / median(times["tome"])})
    else:
        row["tome_refusal"] = tome_refusal(model)
    print(f"[{tower}] " + json.dumps({k: v for k, v in row.items() if k != "built_as"}), flush=True)
    return row


def table(report: dict) -> str:
    env = report["environment"]
    rows = report["rows"]
    ok = [r for r in rows if "accuracy" in r]
    band = [r["vision_params_m"] for r in ok if r.get("in_band")]
    out = [f"Small CLIPs on Fashion-MNIST, one per vision tower: {report['steps']} steps of batch {report['batch']} at "
           f"{report['size']} px, {report['precision']} ({report['precision_reason']}), the same 2-layer text tower, "
           f"lr {report['lr']}; test top-1 by text prompts on {report['test_samples']} held-out test images. "
           "**A supervised comparison of towers** (the captions are the training labels), not zero-shot transfer. "
           f"Measured on {env['device']} ({', '.join(env['cpu_matmul_features']) or 'no AVX-512'}), "
           f"{env['threads']} threads, a shared 2-core machine (load average {env['load_average_1m']} at start): "
           "images/s are noisy.", "",
           "| tower | built as | vision params (M) | test top-1 (%) | train images/s | encode images/s | "
           "ToMe r (auto): top-1, encode speed-up |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "accuracy" not in r:
            out.append(f"| {r['tower']} | {r.get('built_as', '')} | - | failed: {r.get('error', '')} | | | |")
            continue
        tome = "; ".join(f"r={t['r']}{' (auto)' if t['auto'] else ''}: {100 * t['accuracy']:.1f} "
                         f"({100 * (t['accuracy'] - r['accuracy']):+.1f}), {t['speedup']:.2f}x"
                         for t in r.get("tome", [])) or ("n/a (not a ViT)" if "not a ViT" in r.get("tome_refusal", "")
                                                         else r.get("tome_refusal", "n/a"))
        flag = "" if r.get("in_band", True) else " (outside the 2x band)"
        out.append(f"| {r['tower']} | {r['built_as']} | {r['vision_params_m']:.2f}{flag} | "
                   f"{100 * r['accuracy']:.1f} | {r['train_images_per_s']:.0f} | {r['encode_images_per_s']:.0f} | "
                   f"{tome} |")
    if band:
        out += ["", f"Vision towers in the band: {min(band):.2f}-{max(band):.2f}M parameters "
                    f"({max(band) / min(band):.2f}x). " + " ".join(report.get("notes", []))]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--towers", default=",".join(ALL_TOWERS), help=f"comma-separated subset of {ALL_TOWERS}")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--train-samples", type=int, default=None, help="use the first N training images")
    parser.add_argument("--test-samples", type=int, default=2000)
    parser.add_argument("--eval-batch", type=int, default=250)
    parser.add_argument("--extra-tome-r", default="", help="ToMe r values scored besides the default (auto) r")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(RESULTS_DIR / "towers.json"))
    args = parser.parse_args(argv)
    args.extra_tome_r = [int(r) for r in args.extra_tome_r.split(",") if r]
    torch.set_num_threads(args.threads)

    from openeva.data.classnames import load_builtin
    from openeva.factory import get_tokenizer
    from openeva.runtime import resolve_precision

    precision, reason = resolve_precision(args.precision, "cpu")

    def ctx():
        return torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else torch.autocast("cpu", enabled=False)

    shrunk = register_timm_variants(args.size)
    names = load_builtin("fashion_mnist")
    tokenizer = get_tokenizer(context_length=16)
    x, y = fmnist("train", args.train_samples)
    xt, yt = fmnist("test", args.test_samples)
    data = {"x": x, "y": y, "xt": xt, "yt": yt, "tokenizer": tokenizer, "classnames": names["classnames"],
            "templates": names["templates"],
            "train_tokens": tokenizer([TRAIN_TEMPLATE.format(c=c) for c in names["classnames"]])}
    report = {"benchmark": "towers", "environment": environment("cpu"), "steps": args.steps, "batch": args.batch,
              "size": args.size, "lr": args.lr, "test_samples": len(xt), "precision": precision,
              "precision_reason": reason, "train_template": TRAIN_TEMPLATE, "test_templates": names["templates"],
              "loss": "cross-entropy of each image over the 10 class-name captions (the batch's distinct captions), "
                      "learned logit scale; AdamW wd 0.05, linear warm-up 10% then cosine",
              "comparison": "supervised: the captions are the training labels",
              "note": ("2 shared CPU cores with other jobs: images/s are noisy; towers ran one after another, "
                       "niced"),
              "command": " ".join(["python", "benchmarks/bench_towers.py", *(argv or sys.argv[1:])]),
              "notes": [f"Next-ViT: {NEXTVIT_NOTE}."], "rows": []}
    for tower in args.towers.split(","):
        try:
            row = run_tower(tower, data, args, shrunk, ctx)
        except Exception as e:  # noqa: BLE001 - one family failing does not stop the others; the reason is recorded
            traceback.print_exc()
            row = {"tower": tower, "error": f"{type(e).__name__}: {e}"}
        row["in_band"] = tower != "Next-ViT"
        report["rows"].append(row)
        write_json(args.out, report)  # after every tower: a partial run still leaves its numbers
        Path(args.out).with_suffix(".md").write_text(table(report))
    Path(args.out).with_suffix(".md").write_text(table(report))
    print(table(report))
    return report


if __name__ == "__main__":
    main()
