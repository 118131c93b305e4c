"""``encode_image`` speed of openeva against open_clip on the same weights, across the zoo: ViT-B-32 (OpenAI-style
plain ViT), ViT-B-16-SigLIP (no class token, attention pooling) and convnext_base (a timm ConvNeXt tower).

For each model, open_clip's own model is built with random weights (every parameter redrawn at an O(1) scale,
``_common.randomize_``), saved as an open_clip checkpoint file and loaded by ``openeva.create_model(name,
pretrained=file)`` (openeva's converter and load policy); the two are checked to
give equal outputs in fp32 in the same run (max |diff| / max |out| <= 1e-4, the parity tests' tolerance) and
their agreement in bf16 is recorded. Then each library runs in each of its precision modes on this CPU (images/s
from the fastest of the interleaved calls, the least disturbed by other jobs; medians are in the JSON):

- ``fp32``: fp32 weights;
- ``bf16-autocast``: fp32 weights under ``torch.autocast(cpu, bfloat16)`` (open_clip's ``--precision amp_bf16``);
- ``bf16``: bf16 weights (openeva's ``precision="auto"`` on a CPU with native bf16; open_clip's ``pure_bf16``).

The fastest mode of each library is compared ("speed-up" = openeva images/s in its fastest mode / open_clip's in
its fastest mode). On the ViTs, openeva also runs with token merging (ToMe) at the model's default r
(``apply_tome(model, "auto")``: at least a quarter of the tokens reach the last block) and at any ``--tome-rs``,
in openeva's fastest mode. Implementations take turns within every repeat (``_common.interleaved_times``).

The accuracy cost of ToMe needs a trained model: ``bench_towers.py`` trains small ViT towers here on
Fashion-MNIST and records their test accuracy with and without ToMe; this script's table quotes it when
``benchmarks/results/towers.json`` exists.

    nice -n 10 .venv/bin/python benchmarks/bench_zoo_encode.py --batch 8 --repeats 5 --threads 2

Writes ``benchmarks/results/zoo_encode.json`` and ``benchmarks/results/zoo_encode.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from _common import RESULTS_DIR, environment, interleaved_times, median, quiet_open_clip, randomize_, write_json

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

MODELS = ("ViT-B-32", "ViT-B-16-SigLIP", "convnext_base")
MODES = ("fp32", "bf16-autocast", "bf16")
FP32_MAX_REL_DIFF = 1e-4


def build_pair(name: str, seed: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(openeva, open_clip) on the same random weights, fp32, eval mode."""
    import open_clip

    import openeva

    quiet_open_clip()
    torch.manual_seed(seed)
    theirs = randomize_(open_clip.create_model(name, pretrained=None), seed).eval()
    with tempfile.TemporaryDirectory() as tmp:  # the user's path: an open_clip checkpoint file, loaded by name
        path = Path(tmp) / "open_clip_pytorch_model.bin"
        torch.save(theirs.state_dict(), path)
        ours = openeva.create_model(name, pretrained=str(path))
    return ours.eval(), theirs


def in_mode(model: torch.nn.Module, mode: str) -> tuple[torch.nn.Module, contextlib.AbstractContextManager]:
    if mode == "fp32":
        return model, contextlib.nullcontext()
    if mode == "bf16-autocast":
        return model, torch.autocast("cpu", dtype=torch.bfloat16)
    if mode == "bf16":
        return copy.deepcopy(model).to(torch.bfloat16), contextlib.nullcontext()
    raise ValueError(mode)


@torch.inference_mode()
def agreement(a: torch.nn.Module, b: torch.nn.Module, images: torch.Tensor) -> dict:
    x, y = a.encode_image(images.to(_dtype(a))).float(), b.encode_image(images.to(_dtype(b))).float()
    diff = (x - y).abs().max().item()
    return {"max_abs_diff": diff, "max_rel_diff": diff / max(y.abs().max().item(), 1e-12),
            "min_cosine": F.cosine_similarity(x, y).min().item()}


def _dtype(model: torch.nn.Module) -> torch.dtype:
    return next(p.dtype for p in model.parameters() if p.is_floating_point())


def bench_model(name: str, args) -> dict:
    from openeva.models.tome import apply_tome, auto_r, tome_refusal
    from openeva.runtime import resolve_precision

    ours, theirs = build_pair(name, args.seed)
    H, W = ours.spec.preprocess_cfg(None)["size"]
    g = torch.Generator().manual_seed(args.seed)
    images = torch.randn(args.batch, 3, H, W, generator=g)
    fp32 = agreement(ours, theirs, images[:2])
    fp32["equal"] = fp32["max_rel_diff"] <= FP32_MAX_REL_DIFF
    if not fp32["equal"]:
        raise SystemExit(f"{name}: openeva and open_clip disagree in fp32 (rel {fp32['max_rel_diff']:.2e}); "
                         "the conversion is wrong, not measuring")
    fns, models, agree = {}, {}, {"fp32": fp32}
    for mode in args.modes:
        for lib, base in (("openeva", ours), ("open_clip", theirs)):
            model, ctx = in_mode(base, mode)
            models[(lib, mode)] = (model, ctx)

            def run(model=model, ctx=ctx):
                with torch.inference_mode(), ctx:
                    model.encode_image(images.to(_dtype(model)))

            fns[f"{lib} {mode}"] = run
        if mode != "fp32":
            with models[("openeva", mode)][1]:
                agree[mode] = agreement(models[("openeva", mode)][0], models[("open_clip", mode)][0], images[:2])
    tome_rows = []
    if tome_refusal(ours) is None:
        rs = [auto_r(ours) if r == "auto" else int(r) for r in args.tome_rs]
        for r in dict.fromkeys(rs):
            for mode in [m for m in args.tome_modes if m in args.modes]:
                model, ctx = models[("openeva", mode)]

                def run(model=model, ctx=ctx, r=r):  # merging switched on for this call only (no weight copy)
                    apply_tome(model, r)
                    try:
                        with torch.inference_mode(), ctx:
                            model.encode_image(images.to(_dtype(model)))
                    finally:
                        apply_tome(model, 0)

                fns[f"openeva {mode} tome r={r}"] = run
                with torch.inference_mode(), ctx:
                    x = images[:2].to(_dtype(model))
                    plain = model.encode_image(x).float()
                    merged = apply_tome(model, r).encode_image(x).float()
                    apply_tome(model, 0)
                    cos = F.cosine_similarity(merged, plain).min().item()
                tome_rows.append({"r": r, "mode": mode, "auto": r == auto_r(ours), "min_cosine_to_unmerged": cos})
    times = interleaved_times(fns, args.repeats, warmup=1)
    # the best of the repeats: on this shared machine other jobs stretch single calls up to 5x (see "seconds"),
    # and the fastest call is the one least disturbed (timeit's rule); medians are kept in the JSON too
    ips = {k: args.batch / min(v) for k, v in times.items()}
    ips_median = {k: args.batch / median(v) for k, v in times.items()}
    best = {lib: max((m for m in args.modes), key=lambda m: ips[f"{lib} {m}"]) for lib in ("openeva", "open_clip")}
    base_ips = ips[f"open_clip {best['open_clip']}"]
    for row in tome_rows:
        row["images_per_s"] = ips[f"openeva {row['mode']} tome r={row['r']}"]
        row["speedup_vs_open_clip_fastest"] = row["images_per_s"] / base_ips
        row["speedup_vs_openeva_same_mode"] = row["images_per_s"] / ips[f"openeva {row['mode']}"]
    return {
        "model": name, "image_size": [H, W], "batch": args.batch,
        "tokens": None if tome_refusal(ours) else ours.visual.cfg.grid_size[0] * ours.visual.cfg.grid_size[1],
        "auto_r": None if tome_refusal(ours) else auto_r(ours),
        "agreement": agree, "images_per_s": ips, "images_per_s_median": ips_median, "seconds": times,
        "fastest_mode": best, "openeva_precision_auto": resolve_precision("auto", "cpu")[0],
        "speedup_fastest_vs_fastest": ips[f"openeva {best['openeva']}"] / base_ips,
        "tome": tome_rows,
    }


def _tome_accuracy_lines() -> list[str]:
    path = RESULTS_DIR / "towers.json"
    if not path.exists():
        return ["ToMe accuracy: not measured (run `benchmarks/bench_towers.py` first: it trains the ViT towers "
                "on Fashion-MNIST and evaluates them with and without ToMe)."]
    data = json.loads(path.read_text())
    lines = []
    for row in data.get("rows", []):
        for t in row.get("tome", []):
            lines.append(f"- {row['tower']} ({row.get('tokens', '?')} tokens, depth {row.get('depth', '?')}): "
                         f"ToMe r={t['r']} test top-1 {100 * t['accuracy']:.1f}% vs {100 * row['accuracy']:.1f}% "
                         f"unmerged ({100 * (t['accuracy'] - row['accuracy']):+.1f} points), encoding "
                         f"{t['speedup']:.2f}x")
    return ["ToMe accuracy cost on Fashion-MNIST (towers trained here by `bench_towers.py`, "
            f"{data.get('steps', '?')} steps; a supervised comparison):", *lines] if lines else []


def table(report: dict) -> str:
    env = report["environment"]
    out = [f"`encode_image` images/s (best of {report['repeats']} interleaved calls), batch {report['batch']}, on "
           f"{env['device']} "
           f"({', '.join(env['cpu_matmul_features']) or 'no AVX-512'}; torch {env['torch']}, {env['threads']} "
           f"threads, load average {env['load_average_1m']} at start; a shared, noisy machine). Random weights, "
           "the same in both libraries (fp32 outputs equal within 1e-4 relative, checked in this run). "
           f"openeva's precision auto on this CPU: {report['rows'][0]['openeva_precision_auto'] if report['rows'] else '?'}.",
           "", "| model | " + " | ".join(f"open_clip {m}" for m in report["modes"]) + " | "
           + " | ".join(f"openeva {m}" for m in report["modes"]) + " | fastest vs fastest | openeva with ToMe |", "|---" * (2 * len(report["modes"]) + 3) + "|"]
    for row in report["rows"]:
        ips = row["images_per_s"]
        cells = [f"{ips[f'open_clip {m}']:.1f}" for m in report["modes"]] + \
                [f"{ips[f'openeva {m}']:.1f}" for m in report["modes"]]
        best = row["fastest_mode"]
        tome = [t for t in row["tome"] if t["mode"] == best["openeva"]] or row["tome"]
        tome_cell = "; ".join(f"r={t['r']}{' (auto)' if t['auto'] else ''} ({t['mode']}): {t['images_per_s']:.1f}/s, "
                              f"{t['speedup_vs_open_clip_fastest']:.2f}x open_clip" for t in tome) or "n/a (not a ViT)"
        out.append(f"| {row['model']} | " + " | ".join(cells) + f" | {row['speedup_fastest_vs_fastest']:.2f}x "
                   f"(openeva {best['openeva']} vs open_clip {best['open_clip']}) | {tome_cell} |")
    out += ["", *_tome_accuracy_lines()]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {MODES}")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tome-rs", default="auto", help="ToMe r values for the ViTs ('auto' = the model default)")
    parser.add_argument("--tome-modes", default="bf16",
                        help="modes ToMe is timed in (default: bf16, openeva's precision auto on a CPU with native bf16)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(RESULTS_DIR / "zoo_encode.json"))
    args = parser.parse_args(argv)
    args.modes = [m for m in args.modes.split(",") if m]
    args.tome_rs = [r for r in args.tome_rs.split(",") if r]
    args.tome_modes = [m for m in args.tome_modes.split(",") if m]
    torch.set_num_threads(args.threads)
    report = {"benchmark": "zoo_encode", "environment": environment("cpu"), "batch": args.batch,
              "repeats": args.repeats, "modes": args.modes,
              "note": ("2 shared CPU cores with other jobs running: absolute images/s drift between runs; the "
                       "implementations are interleaved, so ratios within one run are the robust result"),
              "command": " ".join(["python", "benchmarks/bench_zoo_encode.py", *(argv or sys.argv[1:])]),
              "rows": []}
    for name in args.models.split(","):
        report["rows"].append(bench_model(name, args))
        print(json.dumps({k: report["rows"][-1][k] for k in ("model", "images_per_s", "fastest_mode", "tome")},
                         indent=1), flush=True)
    write_json(args.out, report)
    md = table(report)
    Path(args.out).with_suffix(".md").write_text(md)
    print(md)
    return report


if __name__ == "__main__":
    main()
