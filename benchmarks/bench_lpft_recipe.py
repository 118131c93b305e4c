"""How ``finetune_pretrained_tiny``'s values were chosen (issue 13): LP-FT from a MIM student with each of a grid
of lr / layer-decay / smoothing / EMA overrides, at one fine-tune length, against the student's own frozen probe.

    # first a chain (teacher -> MIM student -> probes), e.g. the one bench_user_chain.py runs:
    .venv/bin/python benchmarks/bench_user_chain.py --out-dir /tmp/fmnist_chain3 ...
    .venv/bin/python benchmarks/bench_lpft_recipe.py --chain-dir /tmp/fmnist_chain3 --steps 150

The head starts from a linear probe of the student's frozen features (fitted once, copied into every arm), so the
arms differ only in the override. Each arm's accuracy is compared with the student's probe from the chain's
``report.json``, paired over the same validation images (``val_correct``). The shipped recipe is the row with no
override (``recipe``); the others say what moving one value does. Writes ``benchmarks/results/lpft_recipe.json``
and ``.md``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from _common import RESULTS_DIR, environment, write_json  # noqa: E402

from openeva.data.labelled import load_classification_dataset  # noqa: E402
from openeva.eval.finetune import run_finetune  # noqa: E402
from openeva.eval.finetune_recipe import PRETRAINED_RECIPE  # noqa: E402
from openeva.quickstart.noise import correctness, difference  # noqa: E402
from openeva.quickstart.user_chain import PreparedData, UserChainConfig, finetune_recipe, head_from_probe  # noqa: E402

DEFAULT_ARMS = {
    "recipe": [],
    "lr 1e-3": ["optim.lr=1e-3"],
    "lr 1.5e-3": ["optim.lr=1.5e-3"],
    "lr 4e-3, layer decay 0.5": ["optim.lr=4e-3", "optim.layer_decay=0.5"],
    "layer decay 0.9": ["optim.layer_decay=0.9"],
    "label smoothing 0.1": ["task_options.label_smoothing=0.1"],
    "EMA 0.99 (warmup)": ["task_options.ema_decay=0.99", "task_options.ema_warmup=true"],
    "patch embedding at full lr": ["task_options.patch_embed_grad_scale=1.0"],
}


def render(result: dict) -> str:
    c = result["chain"]
    env = result["environment"]
    lines = [f"LP-FT from the MIM student of `{c['dir']}` ({c['train']} training / {c['val']} validation images, batch "
             f"{c['batch_size']}, {result['steps']} steps, precision {c['precision']}); recipe "
             f"`{result['recipe']}` ({json.dumps(result['recipe_values'])}). Student's frozen probe "
             f"{100 * result['probe_acc1']:.1f}%. Command: `{result['command']}`", "",
             "| arm (override of the recipe) | top-1 | vs frozen probe (paired, 2 s.e.) | beyond noise | wall (s) |",
             "|---|---|---|---|---|"]
    for arm in result["arms"]:
        d = arm["vs_probe"]
        lines.append(f"| {arm['name']} (`{' '.join(arm['overrides']) or '-'}`) | {100 * arm['acc1']:.1f}% | "
                     f"{100 * d['diff']:+.1f} (+-{200 * d['se']:.1f}) | {'yes' if d['beyond_noise'] else 'no'} | "
                     f"{arm['wall_s']:.0f} |")
    lines += ["", f"_Machine: {env['device']}, {env['threads']} thread(s), torch {env['torch']}, capability "
              f"{env['torch_cpu_capability']}, mkldnn bf16 {env['mkldnn_bf16']}._"]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--chain-dir", required=True, help="an out-dir of bench_user_chain.py / openeva quickstart --data")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--arms", default=None, help='JSON {"name": ["key=value", ...]} (default: the grid above)')
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(RESULTS_DIR / "lpft_recipe.json"))
    p.add_argument("--render-only", action="store_true", help="rewrite the .md table from --out and exit")
    args = p.parse_args()
    if args.render_only:
        Path(args.out).with_suffix(".md").write_text(render(json.loads(Path(args.out).read_text())))
        return
    chain = Path(args.chain_dir)
    if not (chain / "report.json").is_file() or not (chain / "mim" / "final").is_dir():
        raise SystemExit(f"{chain} holds no finished chain (report.json and mim/final): run bench_user_chain.py first")
    report = json.loads((chain / "report.json").read_text())
    probe = report["stages"]["probes"]["student"]
    if "linear_probe_val_correct" not in probe:
        raise SystemExit(f"{chain}/report.json has no per-image probe results: rerun the chain with this openeva")
    torch.set_num_threads(args.threads)
    env = environment()
    cfg = UserChainConfig(**report["config"])
    train = load_classification_dataset(chain / "data" / "train")
    val = load_classification_dataset(chain / "data" / "val")
    prepared = PreparedData(chain / "data" / "train", chain / "data" / "val", chain / "data" / "train_captions.csv",
                            list(train.classnames), report["data_counts"]["train"], report["data_counts"]["val"], 0)
    n = report["data_counts"]["val"]
    arms = json.loads(args.arms) if args.arms else DEFAULT_ARMS
    start = time.perf_counter()
    base = head_from_probe(str(chain / "mim" / "final"), prepared, cfg)  # one probe fit, copied into each arm
    probe_s = time.perf_counter() - start
    rows = []
    for name, overrides in arms.items():
        rc = finetune_recipe(PRETRAINED_RECIPE, args.steps, cfg, overrides)
        torch.manual_seed(cfg.seed)
        t = time.perf_counter()
        metrics, scores, labels, extra = run_finetune(copy.deepcopy(base), train, val, cfg=rc, seed=cfg.seed,
                                                      output_dir=chain / "lpft_recipe", progress=False,
                                                      warmup_fraction=0.1, precision=cfg.precision)
        ok = correctness(scores, labels)
        rows.append({"name": name, "overrides": list(overrides), "acc1": metrics["acc1"],
                     "wall_s": time.perf_counter() - t, "recipe_values": extra["recipe"],
                     "vs_probe": difference(metrics["acc1"], probe["linear_probe_acc1"], n, ok,
                                            probe["linear_probe_val_correct"])})
        print(f"{name}: {metrics['acc1']:.4f} ({rows[-1]['vs_probe']['diff']:+.4f} vs probe)", flush=True)
    result = {"benchmark": "lpft_recipe", "steps": args.steps, "recipe": PRETRAINED_RECIPE,
              "recipe_values": next((r["recipe_values"] for r in rows if not r["overrides"]), None),
              "chain": {"dir": str(chain), "train": report["data_counts"]["train"], "val": n,
                        "batch_size": cfg.batch_size, "precision": cfg.precision},
              "probe_acc1": probe["linear_probe_acc1"], "probe_head_s": probe_s, "arms": rows,
              "command": "python benchmarks/bench_lpft_recipe.py " + " ".join(sys.argv[1:]),
              "load_average_1m_end": round(os.getloadavg()[0], 2), "environment": env}
    print("wrote", write_json(args.out, result))
    Path(args.out).with_suffix(".md").write_text(render(result))


if __name__ == "__main__":
    main()
